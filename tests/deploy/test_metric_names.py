"""Dashboards, alert rules and autoscaling rules query only the metrics the services export
(deploy/metrics.txt), with the labels and label values those metrics have; the dashboard parses and
its every expression is valid PromQL."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from deploy_helpers import (
    ADAPTER_VALUES_FILE,
    DASHBOARD_FILE,
    SCRAPE_LABELS,
    alert_rule_groups,
    grouping_labels,
    label_matchers,
    load_metrics,
    recording_rule_names,
    run,
    series_catalogue,
    series_in,
    tool,
)


def dashboard() -> dict:
    return json.loads(DASHBOARD_FILE.read_text())


def dashboard_panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_expressions() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p["targets"]]


def rule_expressions() -> list[str]:
    return [rule["expr"] for group in alert_rule_groups() for rule in group["rules"]]


def adapter_expressions() -> list[str]:
    rules = yaml.safe_load(ADAPTER_VALUES_FILE.read_text())["rules"]["custom"]
    return [e for rule in rules for e in (rule["seriesQuery"], rule["metricsQuery"])]


def all_expressions() -> list[tuple[str, str]]:
    return (
        [("dashboard", e) for e in dashboard_expressions()]
        + [("alert rules", e) for e in rule_expressions()]
        + [("prometheus adapter", e) for e in adapter_expressions()]
    )


def as_plain_promql(expr: str) -> str:
    """A Grafana or Prometheus Adapter expression with its variables filled in as they would be."""
    expr = re.sub(r"\$__(rate_interval|interval|range)", "5m", expr)
    expr = re.sub(r"\$\{?\w+\}?", ".*", expr)
    return expr.replace("<<.LabelMatchers>>", 'namespace="mrt",pod="generator-0"').replace(
        "<<.GroupBy>>", "pod"
    )


def test_metrics_list_has_every_service():
    metrics = load_metrics()
    assert "up" in metrics
    for service in ("gateway", "embedder", "generator"):
        assert any(name.startswith(f"mrt_{service}_") for name in metrics), service
    for metric in metrics.values():
        assert metric.type != "counter" or metric.name.endswith("_total"), metric.name


def test_extracting_series_names():
    expr = (
        'histogram_quantile(0.95, sum by (le, pod) (rate(mrt_a_seconds_bucket{namespace=~"$namespace"}'
        '[$__rate_interval]))) / ignoring (pod) sum(rate(mrt_b_total{x="y"}[5m] offset 1h)) or up > 1e3'
    )
    assert series_in(expr) == {"mrt_a_seconds_bucket", "mrt_b_total", "up"}
    assert grouping_labels(expr) == {"le", "pod"}
    assert label_matchers(expr) == [
        ("mrt_a_seconds_bucket", "namespace", "=~", "$namespace"),
        ("mrt_b_total", "x", "=", "y"),
    ]


@pytest.mark.parametrize("source, expr", all_expressions())
def test_expressions_use_only_listed_metrics_and_labels(source, expr):
    catalogue = series_catalogue(load_metrics())
    recorded = recording_rule_names()
    names = series_in(expr)
    assert names, f"{source}: no series found in {expr!r}"
    unknown = {n for n in names if n not in catalogue and n not in recorded}
    assert not unknown, f"{source}: {sorted(unknown)} are not in deploy/metrics.txt: {expr}"
    known_labels = set(SCRAPE_LABELS)
    for name in names & catalogue.keys():
        known_labels |= catalogue[name][1]
    assert grouping_labels(expr) <= known_labels, f"{source}: grouping by an unknown label: {expr}"
    for series, label, operator, value in label_matchers(expr):
        if series in recorded:
            assert label in SCRAPE_LABELS, (source, series, label)
            continue
        metric, labels = catalogue[series]
        assert label in labels | SCRAPE_LABELS, f"{source}: {series} has no label {label}"
        values = metric.labels.get(label)
        if values and operator in ("=", "=~"):
            written = set(value.split("|")) if operator == "=~" else {value}
            assert written <= values, (
                f"{source}: {series}{{{label}}} never takes {sorted(written - values)}"
            )


def test_dashboard_expressions_are_valid_promql(tmp_path):
    """promtool parses each expression as a recording rule: a syntax error fails the check."""
    expressions = dashboard_expressions() + [m for m in adapter_expressions()]
    rules = [
        {"record": f"check:expression_{i}", "expr": as_plain_promql(e)}
        for i, e in enumerate(expressions)
    ]
    rules_file = tmp_path / "expressions.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    output = run([tool("promtool"), "check", "rules", str(rules_file)]).stdout
    assert f"SUCCESS: {len(rules)} rules found" in output


def test_dashboard_covers_the_cluster():
    board = dashboard()
    panels = dashboard_panels()
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"]), (
        "panel ids must be unique"
    )
    titles = " / ".join(p["title"].lower() for p in panels)
    for topic in (
        "sessions",
        "underruns",
        "time to first audio",
        "chunk generation latency",
        "chunk lateness",
        "batch size",
        "real-time factor",
        "cache hit ratio",
        "per pod",
        "queue wait",
    ):
        assert topic in titles, topic
    per_pod = [p for p in panels if "per pod" in p["title"].lower()]
    assert per_pod and all(
        "by (pod)" in t["expr"] or ", pod)" in t["expr"] for p in per_pod for t in p["targets"]
    )
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all('namespace=~"$namespace"' in t["expr"] for t in panel["targets"]), panel["title"]
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys() and panel["gridPos"]["x"] + panel[
            "gridPos"
        ]["w"] <= 24
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert series_in(
        variables["namespace"]["definition"].removeprefix("label_values(").rsplit(",", 1)[0]
    ) == {"up"}
