"""The monitoring files (deploy/monitoring), checked without Docker.

- promtool (Debian's, deploy/ci/promtool.sh) accepts the alert rules and the Prometheus
  config, and the rules' unit tests pass; altered copies of the rules fail them, so every
  alert's firing case and its silent case can fail.
- The Grafana dashboard is well-formed and covers the panels the service promises; every
  expression in it parses (promtool, as recording rules).
- Every metric name used by the rules, the dashboard and the Kubernetes adapter rule is a
  series of a live /metrics: the real app over HTTP with the tiny model.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.server import ServerProcess

REPO_ROOT = Path(__file__).resolve().parents[1]
MONITORING = REPO_ROOT / "deploy" / "monitoring"
RULES = MONITORING / "rules" / "textclf.rules.yml"
RULE_TESTS = MONITORING / "rules" / "textclf.rules.test.yml"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "textclf.json"
ADAPTER_VALUES = REPO_ROOT / "deploy" / "k8s" / "prometheus-adapter" / "values.yaml"
ALERTS = {
    "TextclfOverloaded",
    "TextclfLatencyP99OverBudget",
    "TextclfReplicaNotReady",
    "TextclfNoReplicaReady",
    "TextclfErrorRate",
    "TextclfQueueSaturated",
    "TextclfInferenceStalled",
}
# Grafana's variables, as the dashboard's queries use them, with values Prometheus accepts.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": "textclf", "$instance": ".*"}
# Series Prometheus itself makes for each target, not the app.
SYNTHETIC_SERIES = {"up"}


def run(args: list[str], cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool from $PROMTOOL, PATH or Debian's package (cached; `make test` fetches it)."""
    result = run(["bash", str(REPO_ROOT / "deploy" / "ci" / "promtool.sh")])
    if result.returncode != 0:
        pytest.fail(f"deploy/ci/promtool.sh found no promtool:\n{result.stderr}")
    return result.stdout.strip().splitlines()[-1]


def load_rules(path: Path = RULES) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    return loaded


def alert_rules(rules: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for group in rules["groups"] for r in group["rules"] if "alert" in r}


# ------------------------------------------------------------------ promtool ---


def test_rules_pass_promtool_check(promtool: str) -> None:
    result = run([promtool, "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(alert_rules(load_rules())) == ALERTS


def test_rule_unit_tests_pass(promtool: str) -> None:
    result = run([promtool, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    assert firing == ALERTS, f"no firing case: {sorted(ALERTS - firing)}"
    assert silent == ALERTS, f"no silent case: {sorted(ALERTS - silent)}"


# Each alteration must make `promtool test rules` fail on that alert: `loud` ones fire
# where a silent case expects nothing, `deaf` ones miss a firing case, `eager` ones
# (no `for`) fire where a case expects the alert still pending.
MUTANTS: list[tuple[str, str, str, str]] = [
    ("TextclfOverloaded", "loud", "> 0.05", "> 0.01"),
    ("TextclfOverloaded", "deaf", "> 0.05", "> 0.5"),
    ("TextclfLatencyP99OverBudget", "loud", "0.7 * max", "0 * max"),
    ("TextclfLatencyP99OverBudget", "deaf", "0.7 * max", "2 * max"),
    ("TextclfReplicaNotReady", "loud", "textclf_ready == 0", "textclf_ready >= 0"),
    ("TextclfReplicaNotReady", "deaf", "up{", "nothing{"),
    ("TextclfNoReplicaReady", "loud", "== 0", ">= 0"),
    ("TextclfNoReplicaReady", "deaf", "absent(textclf_ready)", "absent(up)"),
    ("TextclfErrorRate", "loud", ', status!="503"', ""),
    ("TextclfErrorRate", "deaf", "> 0.01", "> 0.5"),
    ("TextclfQueueSaturated", "loud", "avg_over_time", "max_over_time"),
    ("TextclfQueueSaturated", "deaf", "limit > 0.5", "limit > 1"),
    ("TextclfInferenceStalled", "loud", "depth[2m]) > 0", "depth[2m]) >= 0"),
    ("TextclfInferenceStalled", "deaf", "== 0", "< 0"),
    *((alert, "eager", "", "") for alert in sorted(ALERTS)),
]


@pytest.mark.parametrize(
    ("alert", "kind", "old", "new"), MUTANTS, ids=[f"{m[0]}-{m[1]}" for m in MUTANTS]
)
def test_altered_rules_fail_their_unit_tests(
    promtool: str, tmp_path: Path, alert: str, kind: str, old: str, new: str
) -> None:
    rules = load_rules()
    rule = alert_rules(rules)[alert]
    if kind == "eager":
        assert rule["for"], f"{alert} has no `for`"
        rule["for"] = "0s"
    else:
        assert rule["expr"].count(old) == 1, f"{old!r} not once in {alert}'s expr"
        rule["expr"] = rule["expr"].replace(old, new)
    (tmp_path / RULES.name).write_text(yaml.safe_dump(rules, sort_keys=False))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = run([promtool, "test", "rules", RULE_TESTS.name], cwd=tmp_path)
    assert result.returncode != 0, f"the unit tests miss a {kind} {alert}:\n{result.stdout}"
    output = result.stdout + result.stderr
    failures = failed_checks(output)
    assert {name for name, _, _ in failures} == {alert}, output
    # loud and eager: more alerts than a case expects; deaf: fewer.
    if kind == "deaf":
        assert any(got < expected for _, expected, got in failures), output
    else:
        assert any(got > expected for _, expected, got in failures), output


def failed_checks(output: str) -> list[tuple[str, int, int]]:
    """(alert, alerts expected, alerts got) of each failed check in promtool's report."""
    checks = re.findall(
        r"alertname: (\w+), time: \S+\s+exp:\[(.*?)\],\s+got:\[(.*?)\]", output, re.DOTALL
    )
    return [(name, exp.count("Labels:"), got.count("Labels:")) for name, exp, got in checks]


def test_a_broken_rule_file_fails_the_check(promtool: str, tmp_path: Path) -> None:
    rules = load_rules()
    alert_rules(rules)["TextclfErrorRate"]["expr"] += " +"
    broken = tmp_path / "broken.rules.yml"
    broken.write_text(yaml.safe_dump(rules))
    result = run([promtool, "check", "rules", str(broken)])
    assert result.returncode != 0 and "parse error" in (result.stdout + result.stderr).lower()


def test_prometheus_config_is_valid_and_scrapes_every_replica(
    promtool: str, tmp_path: Path
) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    # Compose mounts deploy/monitoring/rules at /etc/prometheus/rules.
    assert config["rule_files"] == ["/etc/prometheus/rules/textclf.rules.yml"]
    (job,) = (j for j in config["scrape_configs"] if j["job_name"] == "textclf")
    assert job["dns_sd_configs"] == [
        {"names": ["app"], "type": "A", "port": 8000, "refresh_interval": "5s"}
    ]
    (tmp_path / "rules").mkdir()
    shutil.copy(RULES, tmp_path / "rules" / RULES.name)
    config["rule_files"] = [f"rules/{RULES.name}"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = run([promtool, "check", "config", "prometheus.yml"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 rules found" in result.stdout


# ----------------------------------------------------------------- dashboard ---


def load_dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text())
    assert isinstance(loaded, dict)
    return loaded


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return panels


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard_panels(dashboard) for t in p.get("targets", [])]


def as_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced, as Prometheus receives it."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown variable in {expr}"
    return expr


def test_dashboard_is_well_formed() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    panels = dashboard_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["multi"] and variables["instance"]["includeAll"]
    for panel in panels:
        if panel["type"] == "row":
            continue
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": "$datasource"}
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        # Every series is scoped to the chosen job and replicas.
        for target in panel["targets"]:
            for selector in re.findall(r"\{[^}]*\}", target["expr"]):
                assert 'job="$job"' in selector and 'instance=~"$instance"' in selector, (
                    panel["title"],
                    selector,
                )


# What the issue asks the dashboard to show, as the series each view needs.
REQUIRED_VIEWS = {
    "request rate by status": r"sum by \(status\) \(rate\(textclf_requests_total",
    "latency p50": r"histogram_quantile\(0\.5, [^\n]*textclf_request_duration_seconds_bucket",
    "latency p95": r"histogram_quantile\(0\.95, [^\n]*textclf_request_duration_seconds_bucket",
    "latency p99": r"histogram_quantile\(0\.99, [^\n]*textclf_request_duration_seconds_bucket",
    "queue depth": r"textclf_queue_depth\{",
    "queue tokens": r"textclf_queue_tokens\{",
    "batch size": r"textclf_batch_size_(sum|bucket)",
    "padding efficiency": r"textclf_batch_padding_efficiency_(sum|bucket)",
    "tokens/s": r"rate\(textclf_(input_tokens|batch_tokens)_sum",
    "predictions per label": r"sum by \(label\) \(rate\(textclf_predictions_total",
    "confidence": r"textclf_prediction_confidence_bucket",
    "process CPU": r"rate\(process_cpu_seconds_total",
    "process memory": r"process_resident_memory_bytes",
    "in flight": r"textclf_requests_in_flight",
    "rejections by reason": r"sum by \(reason\) \(rate\(textclf_rejections_total",
    "ready replicas": r"textclf_ready",
}


@pytest.mark.parametrize("view", sorted(REQUIRED_VIEWS))
def test_dashboard_covers(view: str) -> None:
    exprs = "\n".join(dashboard_exprs(load_dashboard()))
    assert re.search(REQUIRED_VIEWS[view], exprs), f"no panel shows {view}"


def _recording_rules(exprs: list[str]) -> str:
    rules = [{"record": f"dashboard:expr_{i}", "expr": as_promql(e)} for i, e in enumerate(exprs)]
    return yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})


def test_dashboard_expressions_parse(promtool: str, tmp_path: Path) -> None:
    """promtool 2.42 has no expression check of its own: each expression becomes a
    recording rule, which `check rules` parses with Prometheus' own parser."""
    exprs = dashboard_exprs(load_dashboard())
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(_recording_rules(exprs))
    result = run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(exprs)} rules found" in result.stdout
    # The same check fails on one malformed expression.
    path.write_text(_recording_rules([*exprs, "sum by (le (rate(textclf_batch_size_bucket[1m]))"]))
    assert run([promtool, "check", "rules", str(path)]).returncode != 0


# ------------------------------------------------------- names in a live app ---

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)\b(?!\s*\()")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_KEYWORDS |= {"and", "or", "unless", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (functions, labels, durations left out)."""
    expr = _STRINGS.sub('""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery durations
    expr = _GROUPING.sub("", expr)
    return {name for name in _IDENTIFIER.findall(expr) if name.lower() not in _KEYWORDS}


def test_metric_names_reads_only_series_names() -> None:
    expr = (
        'sum by (job, le) (rate(a_bucket{route="/x", le=~"b"}[5m])) / ignoring (label) '
        "group_left sum(rate(c_total[$__rate_interval])) > 0.5 and on (instance) "
        'd offset 5m or absent(up{job="x"}) unless e_count == bool 1 '
        'or label_replace(f, "dst", "$1", "src", "(.*)")'
    )
    assert metric_names(expr) == {"a_bucket", "c_total", "d", "up", "e_count", "f"}


def used_metric_names() -> dict[str, set[str]]:
    """Every series name each monitoring file reads."""
    used = {
        "rules": {n for r in alert_rules(load_rules()).values() for n in metric_names(r["expr"])},
        "dashboard": {n for e in dashboard_exprs(load_dashboard()) for n in metric_names(e)},
    }
    # The Kubernetes HPA's adapter rule (deploy/k8s), when present.
    if ADAPTER_VALUES.is_file():
        values = yaml.safe_load(ADAPTER_VALUES.read_text())
        rules = values.get("rules", {})
        queries = [
            rule["seriesQuery"]
            for section in ("custom", "external")
            for rule in rules.get(section) or []
        ]
        assert queries, f"{ADAPTER_VALUES} has no adapter rule"
        used["prometheus-adapter"] = {n for q in queries for n in metric_names(q)}
    return used


@pytest.fixture(scope="module")
def live_metrics(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """/metrics of the real app over HTTP, after predictions and one refusal, so that
    every labelled series has a sample."""
    log = (tmp_path_factory.mktemp("monitoring") / "server.log").open("wb")
    env = {
        "TEXTCLF_WARMUP": "false",
        "TEXTCLF_FORWARD": "padded",
        "TEXTCLF_INFERENCE_WORKERS": "1",
        "TEXTCLF_TORCH_THREADS": "1",
        # Small, so that one request is refused (413 too_large) and the counter has a sample.
        "TEXTCLF_MAX_QUEUE_TOKENS": "64",
    }
    server = ServerProcess(tiny_model, log, env)
    try:
        server.wait_ready(timeout_s=60)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for text in ("i love this film", "awful service", "the phone battery is bad"):
                assert client.post("/predict", json={"text": text}).status_code == 200
            refused = client.post("/predict", json={"texts": ["great movie ever"] * 40})
            assert refused.status_code == 413, refused.text
            response = client.get("/metrics")
            assert response.status_code == 200
            yield response.text
    finally:
        server.stop()
        log.close()


def exported_series(text: str) -> set[str]:
    """Sample names with at least one sample (with their _total/_bucket/_sum/_count)."""
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_metric_used_is_exported_by_the_app(live_metrics: str) -> None:
    exported = exported_series(live_metrics)
    # The app's own, the process collector's, and what the checks below need.
    assert {"textclf_requests_total", "textclf_rejections_total", "process_cpu_seconds_total"} <= (
        exported
    )
    for source, names in used_metric_names().items():
        assert names, f"no metric names found in the {source}"
        missing = names - exported - SYNTHETIC_SERIES
        assert not missing, f"the {source} read series the app does not export: {sorted(missing)}"


def test_a_misspelt_name_is_caught(live_metrics: str) -> None:
    """The comparison is by series name: a family name without its suffix is not one."""
    exported = exported_series(live_metrics)
    assert "textclf_requests" not in exported and "textclf_request_duration_seconds" not in exported
    assert metric_names("rate(textclf_request_total[5m])") - exported == {"textclf_request_total"}


# ------------------------------------------------------------------- compose ---


def compose_services() -> dict[str, Any]:
    services = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
    assert isinstance(services, dict)
    return services


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of each bind mount from the repository."""
    found = {}
    for volume in service["volumes"]:
        source, target, *_ = str(volume).split(":")
        if source.startswith("./"):
            assert (REPO_ROOT / source).exists(), f"{source} is missing"
            found[target] = source
    return found


def test_compose_runs_prometheus_hardened_under_its_profile() -> None:
    prometheus = compose_services()["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    assert prometheus["image"].startswith("${PROMETHEUS_IMAGE:-prom/prometheus:v")
    assert prometheus["read_only"] is True and prometheus["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in prometheus["security_opt"]
    assert {"mem_limit", "cpus", "pids_limit", "tmpfs"} <= set(prometheus)
    assert str(prometheus["user"]).split(":")[0] == "65534"
    # The app's internal network, and a published port on loopback only.
    assert "backend" in prometheus["networks"]
    assert prometheus["ports"] == ["127.0.0.1:${PROMETHEUS_PORT:-9090}:9090"]
    assert mounts(prometheus) == {
        "/etc/prometheus/prometheus.yml": "./deploy/monitoring/prometheus.yml",
        "/etc/prometheus/rules": "./deploy/monitoring/rules",
    }
    assert "prometheus-data:/prometheus" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_compose_grafana_provisions_the_dashboard() -> None:
    grafana = compose_services()["grafana"]
    assert grafana["profiles"] == ["grafana"] and grafana["read_only"] is True
    assert all(str(p).startswith("127.0.0.1:") for p in grafana["ports"])
    paths = mounts(grafana)
    provider = yaml.safe_load(
        (MONITORING / "grafana/provisioning/dashboards/textclf.yaml").read_text()
    )["providers"][0]
    # The provider reads the folder the dashboard JSON is mounted at.
    assert paths[provider["options"]["path"]] == "./deploy/monitoring/grafana/dashboards"
    (source,) = yaml.safe_load(
        (MONITORING / "grafana/provisioning/datasources/prometheus.yaml").read_text()
    )["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert (
        "frontend" in grafana["networks"]
        and "frontend" in compose_services()["prometheus"]["networks"]
    )
