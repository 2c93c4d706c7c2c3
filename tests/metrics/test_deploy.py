"""Static checks of deploy/: the dashboard only uses metrics the service exports, provisioning
and Prometheus files are valid. (The PromQL itself is evaluated by a real Prometheus in
test_live_prometheus.py.)"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from metrics.setup import Metrics
from signaling.protocol import CLIENT_EVENTS, SERVER_EVENTS
from tests.metrics import dashboard
from tests.metrics.conftest import FakeRelay

DEPLOY = dashboard.ROOT / "deploy"


def exported_names() -> set[str]:
    """Every sample name the service can export, from a fully populated fake relay."""
    relay = FakeRelay()
    relay.add(
        "room-a",
        "s1",
        "video",
        "in",
        rtt_seconds=0.1,
        remb_bps=1,
        estimate_bps=1,
        frame_width=2,
        frame_height=2,
    )
    relay.add("room-a", "s2", "video", "out", source="s1", rtt_seconds=0.1, remb_bps=1)
    relay.stats.connection_failures["ice"] += 1
    metrics = Metrics(
        relay=lambda: relay,
        store=lambda: None,
        ws_events_in=CLIENT_EVENTS,
        ws_events_out=SERVER_EVENTS,
    )
    metrics.instruments.observe_request("/x", "GET", 200, 0.01)
    metrics.instruments.call_duration.observe(60)
    metrics.instruments.call_audio_mos.observe(4.2)
    text = generate_latest(metrics.registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_dashboard_structure() -> None:
    board = dashboard.load()
    assert board["uid"] == "smiling-relay"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["call"]["type"] == "query"
    assert "label_values(smiling_relay_call_participants, call)" in variables["call"]["definition"]
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard.panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard.panels(board):
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert target["expr"].strip()
            assert target["datasource"]["uid"] == "${datasource}"
    titles = " | ".join(p["title"] for p in dashboard.panels(board)).lower()
    for wanted in (
        "bitrate sent",
        "bitrate forwarded",
        "packet loss",
        "jitter",
        "round-trip",
        "frames per second",
        "keyframe",
        "active calls",
        "setup time",
        "error rate",
        "api latency",
    ):
        assert wanted in titles, wanted


def test_dashboard_uses_only_exported_metrics() -> None:
    names = exported_names()
    queries = dashboard.queries()
    assert len(queries) >= 30
    for query in queries:
        used = set(dashboard.METRIC_NAME.findall(query.expr))
        assert used, query
        assert used <= names, f"{query.panel}: unknown {used - names}"
        # Only variables the live test (and Grafana) substitute.
        assert set(re.findall(r"\$\w+", query.expr)) <= {"$call", "$__rate_interval"}, query


def test_per_call_panels_filter_on_the_call_variable() -> None:
    per_call = [q for q in dashboard.queries() if q.per_call]
    assert len(per_call) >= 15
    for query in per_call:
        for selector in re.findall(r"smiling_relay_(?:stream|call)_\w+\{([^}]*)\}", query.expr):
            assert 'call="$call"' in selector, query


def test_alert_rules_use_only_exported_metrics() -> None:
    names = exported_names() | {"up"}
    text = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    used = set(dashboard.METRIC_NAME.findall(text))
    assert used
    assert used <= names, used - names


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) missing")
def test_prometheus_config_and_rules_are_valid(tmp_path: Path) -> None:
    # promtool checks that the token file exists: a copy of the directory with a token in it
    copy = tmp_path / "prometheus"
    shutil.copytree(DEPLOY / "prometheus", copy)
    (copy / "metrics-token").write_text("a-token\n")
    result = subprocess.run(
        ["promtool", "check", "config", str(copy / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_and_provisioning_files() -> None:
    if importlib.util.find_spec("yaml") is None:
        pytest.skip("PyYAML is not installed in this environment")
    import yaml

    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"relay", "prometheus", "grafana"}
    relay = compose["services"]["relay"]
    assert relay["build"]["context"] == ".."
    low, high = map(int, relay["environment"]["RELAY_UDP_PORTS"].split("-"))
    assert f"{low}-{high}:{low}-{high}/udp" in relay["ports"]
    for service in compose["services"].values():
        for volume in service.get("volumes", ()):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source
    datasource = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/dashboards.yml").read_text()
    )
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    prom = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == ["relay:8080"]
    assert Path(DEPLOY / "grafana/dashboards/smiling-relay.json").is_file()


def workers_config() -> str:
    """prometheus.yml with its per-worker block uncommented (and the single target dropped)."""
    text = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    begin = text.index("# WORKERS-BEGIN")
    end = text.index("# WORKERS-END")
    block = text[text.index("\n", begin) + 1 : end]
    workers = re.sub(r"(?m)^(\s*)# ", r"\1", block).rstrip(" ")
    single = re.search(r'(?ms)^      - targets: \["relay:8080"\].*?node: relay\n', text)
    assert single is not None
    return text[:begin].replace(single[0], workers) + text[end:]


def test_the_workers_block_follows_the_supervisors_ports_and_ids() -> None:
    if importlib.util.find_spec("yaml") is None:
        pytest.skip("PyYAML is not installed in this environment")
    import yaml

    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    env = compose["services"]["relay"]["environment"]
    base, node_id = int(env["PORT"]) + 100, env["RELAY_NODE_ID"]
    prom = yaml.safe_load(workers_config())
    (job,) = prom["scrape_configs"]
    targets = [(c["targets"], c["labels"]["node"]) for c in job["static_configs"]]
    # smiling_relay/supervisor.py: worker i listens on PORT + 100 + i, runs as <id>-w<i>
    assert targets == [([f"relay:{base + i}"], f"{node_id}-w{i}") for i in range(len(targets))]
    assert len(targets) >= 2
    default = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert default["scrape_configs"][0]["static_configs"][0]["labels"]["node"] == node_id


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) missing")
def test_the_workers_config_is_valid(tmp_path: Path) -> None:
    copy = tmp_path / "prometheus"
    shutil.copytree(DEPLOY / "prometheus", copy)
    (copy / "metrics-token").write_text("a-token\n")
    (copy / "prometheus.yml").write_text(workers_config())
    result = subprocess.run(
        ["promtool", "check", "config", str(copy / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) missing")
def test_fleet_alerts_fire_on_their_series() -> None:
    tests = Path(__file__).with_name("fleet_alerts_test.yml")
    result = subprocess.run(
        ["promtool", "test", "rules", str(tests)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
