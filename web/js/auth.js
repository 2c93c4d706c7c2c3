// The platform's JWT: where the page gets it (?token= or the sign-in step) and what it says.
// The token is only decoded for display (role, expiry); the server verifies it on every request.

const STORAGE_KEY = "smiling.token";

/** Decode a JWT payload without verifying it; null when the token is malformed. */
export function decodeToken(token) {
  if (typeof token !== "string") return null;
  const parts = token.trim().split(".");
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
    const json = new TextDecoder().decode(Uint8Array.from(atob(padded), (c) => c.charCodeAt(0)));
    const payload = JSON.parse(json);
    const user = payload.user ?? {};
    return {
      userId: user.id ?? payload.sub ?? null,
      role: user.role ?? payload.role ?? null,
      expiresAt: typeof payload.exp === "number" ? new Date(payload.exp * 1000) : null,
    };
  } catch {
    return null;
  }
}

export function isExpired(claims, now = Date.now()) {
  return Boolean(claims?.expiresAt && claims.expiresAt.getTime() <= now);
}

/**
 * Take the token from `?token=` (then drop it from the address bar, so it doesn't end up in
 * bookmarks, shared links or screenshots) or from this tab's session storage.
 */
export function takeToken(location = window.location, history = window.history) {
  const url = new URL(location.href);
  const fromUrl = url.searchParams.get("token");
  if (fromUrl) {
    saveToken(fromUrl);
    url.searchParams.delete("token");
    history.replaceState(history.state, "", url.pathname + url.search + url.hash);
    return fromUrl.trim();
  }
  try {
    return sessionStorage.getItem(STORAGE_KEY);
  } catch {
    return null;
  }
}

export function saveToken(token) {
  try {
    sessionStorage.setItem(STORAGE_KEY, token.trim());
  } catch {
    /* storage disabled: the token lives for this page only */
  }
}

export function forgetToken() {
  try {
    sessionStorage.removeItem(STORAGE_KEY);
  } catch {
    /* ignore */
  }
}
