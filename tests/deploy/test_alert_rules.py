"""Alert rules and Prometheus configurations: promtool accepts them, and promtool unit tests show
every alert both firing and staying quiet."""

from __future__ import annotations

import importlib.util

import yaml
from deploy_helpers import DEPLOY, K8S, METRICS_PORT, RULES_FILE, alert_rule_groups, run, tool

PROMETHEUS_DIR = DEPLOY / "prometheus"
UNIT_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))


def alert_names() -> list[str]:
    return [
        rule["alert"] for group in alert_rule_groups() for rule in group["rules"] if "alert" in rule
    ]


def test_promtool_accepts_the_rules():
    output = run([tool("promtool"), "check", "rules", str(RULES_FILE)]).stdout
    assert "SUCCESS" in output


def test_promtool_unit_tests_pass():
    assert UNIT_TESTS
    output = run(
        [tool("promtool"), "test", "rules", *map(str, UNIT_TESTS)], cwd=PROMETHEUS_DIR
    ).stdout
    assert output.count("SUCCESS") == len(UNIT_TESTS)


def test_every_alert_is_tested_firing_and_quiet():
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TESTS:
        unit = yaml.safe_load(path.read_text())
        assert unit["rule_files"] == ["../rules/mrt-alerts.yml"], path.name
        for test in unit["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    assert set(alert_names()) == firing, "alerts without a test where they fire"
    assert set(alert_names()) == quiet, "alerts without a test where they stay quiet"


def test_the_required_alerts_exist_with_severity_and_summary():
    assert {
        "MrtBufferUnderrunRateHigh",
        "MrtGeneratorSlowerThanRealTime",
        "MrtNoGeneratorCapacity",
        "MrtSessionErrorRatioHigh",
        "MrtRpcErrorRatioHigh",
        "MrtServiceDown",
    } <= set(alert_names())
    for group in alert_rule_groups():
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
                assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule[
                    "alert"
                ]


def test_prometheusrule_is_rendered_from_the_rules_file():
    spec = importlib.util.spec_from_file_location(
        "render_prometheusrule", PROMETHEUS_DIR / "render_prometheusrule.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = (K8S / "components" / "monitoring" / "prometheusrule.yaml").read_text()
    assert committed == module.render(), (
        "prometheusrule.yaml is stale: python deploy/prometheus/render_prometheusrule.py "
        "> deploy/k8s/components/monitoring/prometheusrule.yaml"
    )


def test_standalone_prometheus_scrapes_the_loopback_cluster():
    config_file = PROMETHEUS_DIR / "prometheus.yml"
    run([tool("promtool"), "check", "config", str(config_file)])
    config = yaml.safe_load(config_file.read_text())
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets == {job: [f"127.0.0.1:{port}"] for job, port in METRICS_PORT.items()}
    assert (config_file.parent / config["rule_files"][0]).resolve() == RULES_FILE


def test_in_cluster_prometheus_config_is_valid(tmp_path):
    """deploy/prometheus/kubernetes.yml: Debian's promtool is built without Kubernetes discovery, so
    check it with the discovery swapped for a static target; the relabelling is what matters."""
    config = yaml.safe_load((PROMETHEUS_DIR / "kubernetes.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    job["static_configs"] = [{"targets": ["127.0.0.1:9093"]}]
    del job["kubernetes_sd_configs"]
    config["rule_files"] = [str(RULES_FILE)]
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config))
    run([tool("promtool"), "check", "config", str(checked)])
    relabelled = {
        r["target_label"]: r["source_labels"] for r in job["relabel_configs"] if "target_label" in r
    }
    assert relabelled["job"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_component"]
    assert relabelled["namespace"] == ["__meta_kubernetes_namespace"]
    assert relabelled["pod"] == ["__meta_kubernetes_pod_name"]
    assert relabelled["__address__"][1] == "__meta_kubernetes_pod_annotation_prometheus_io_port"
