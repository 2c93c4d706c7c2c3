# Shared by scripts/run and scripts/test (sourced, not executed).

# Python >= 3.11 to build the virtualenv with (override with PYTHON=...).
find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [[ -n "$candidate" ]] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  echo "error: Python 3.11 or newer is required (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

is_root() { [[ "$(id -u)" == "0" ]]; }

APT_UPDATED=0
apt_install() {
  # Install Debian packages (root only); `apt-get update` first, once per run.
  if ! is_root || ! command -v apt-get >/dev/null 2>&1; then
    return 1
  fi
  if [[ "$APT_UPDATED" == "0" ]]; then
    echo "==> apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  echo "==> apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# ensure_venv EXTRAS: create/refresh .venv and install the project (editable) with EXTRAS
# (comma-separated: "" for the server alone, "test,qa" for the test command).
ensure_venv() {
  local extras="$1" python stamp hash
  python="$(find_python)"
  if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -c 'import sys' 2>/dev/null; then
    echo "==> creating .venv with $python"
    rm -rf .venv
    if ! "$python" -m venv .venv 2>/dev/null; then
      # Debian ships ensurepip separately.
      rm -rf .venv
      apt_install python3-venv ||
        { echo "error: '$python -m venv' failed; install python3-venv" >&2; return 1; }
      "$python" -m venv .venv
    fi
  fi
  # Reinstall only when the dependency declaration changed. A stamp per extras set; any
  # install with extras also satisfies a plain one.
  hash="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  stamp=".venv/.smiling-relay-installed${extras:+-${extras//,/-}}"
  if [[ -z "$extras" ]] && grep -qxF "$hash" .venv/.smiling-relay-installed-* 2>/dev/null; then
    return 0
  fi
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$hash" ]]; then
    echo "==> installing smiling-relay${extras:+[$extras]} into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}"
    echo "$hash" >"$stamp"
  fi
}
