"""Shared by the tests of deploy/: paths, the metrics list, rendered overlays, PromQL name extraction."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("local", "gpu", "tpu")
RULES_FILE = DEPLOY / "prometheus" / "rules" / "mrt-alerts.yml"
DASHBOARD_FILE = K8S / "components" / "monitoring" / "dashboards" / "mrt-overview.json"
ADAPTER_VALUES_FILE = (
    K8S / "components" / "generator-autoscaling" / "prometheus-adapter-values.yaml"
)
SERVICES = ("gateway", "embedder", "generator")
GRPC_PORT = {"gateway": 50051, "embedder": 50052, "generator": 50053}
METRICS_PORT = {"gateway": 9091, "embedder": 9092, "generator": 9093}
# Labels Prometheus attaches to every scraped series (deploy/metrics.txt does not list them).
SCRAPE_LABELS = frozenset(
    {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}
)
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
PROMQL_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"})


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def tool(name: str) -> str:
    """The path of a command-line tool the tests need: on PATH, or beside this Python (a venv's bin/)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    assert found, (
        f"{name} is not installed: run scripts/ci_system_deps.sh (or make setup for Python tools)"
    )
    return found


def run(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run a command; fail the test with its output when it exits non-zero."""
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def render_overlay(overlay: str) -> list[dict]:
    """The objects `kubectl kustomize` renders for deploy/k8s/overlays/<overlay>."""
    out = run([tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)]).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(objects: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    type: str  # counter | gauge | histogram
    labels: dict[str, frozenset[str] | None]  # label -> its values, or None when open-ended

    def series_names(self) -> dict[str, set[str]]:
        """The series names a query may use for this metric, each with the labels it carries."""
        own = set(self.labels)
        if self.type == "histogram":
            return {
                self.name + "_bucket": own | {"le"},
                self.name + "_sum": own,
                self.name + "_count": own,
            }
        return {self.name: own}


def load_metrics(path: Path = DEPLOY / "metrics.txt") -> dict[str, Metric]:
    """deploy/metrics.txt, by metric name."""
    metrics: dict[str, Metric] = {}
    for line in path.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        name, kind, *label_fields = fields
        labels: dict[str, frozenset[str] | None] = {}
        for field in label_fields:
            label, _, values = field.partition("=")
            labels[label] = frozenset(values.split("|")) if values else None
        assert kind in ("counter", "gauge", "histogram"), f"{name}: unknown type {kind}"
        assert name not in metrics, f"{name} is listed twice"
        metrics[name] = Metric(name, kind, labels)
    return metrics


def series_catalogue(metrics: dict[str, Metric]) -> dict[str, tuple[Metric, set[str]]]:
    """Every series name queries may use -> (its metric, the labels it carries besides scrape labels)."""
    return {
        series: (m, labels) for m in metrics.values() for series, labels in m.series_names().items()
    }


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*\"((?:[^\"\\]|\\.)*)\"")


def series_in(expr: str) -> set[str]:
    """The series names a PromQL expression selects (functions, keywords and labels left out).

    Also accepts Grafana variables ($namespace, $__rate_interval) and Prometheus Adapter templates
    (<<.LabelMatchers>>): they only appear inside label matchers, ranges and grouping lists.
    """
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        before = text[match.start() - 1] if match.start() else " "
        after = text[match.end() :].lstrip()
        if (
            before.isdigit()
            or before in ".$"
            or after.startswith("(")
            or match.group() in PROMQL_KEYWORDS
        ):
            continue  # a number's exponent or unit, a variable, a function / aggregation, an operator
        names.add(match.group())
    return names


def label_matchers(expr: str) -> list[tuple[str, str, str, str]]:
    """(series, label, operator, value) for every label matcher written on a series."""
    found = []
    for selector in _SELECTOR.finditer(expr):
        for matcher in _MATCHER.finditer(selector.group(2)):
            found.append((selector.group(1), *matcher.groups()))
    return found


def grouping_labels(expr: str) -> set[str]:
    """Labels named in by / without / on / ignoring / group_* lists (templates left out)."""
    labels = set()
    for group in _GROUPING.finditer(_STRING.sub('""', expr)):
        labels |= {
            label.strip()
            for label in group.group(1).split(",")
            if label.strip() and "<<" not in label
        }
    return labels


def alert_rule_groups() -> list[dict]:
    return yaml.safe_load(RULES_FILE.read_text())["groups"]


def recording_rule_names() -> set[str]:
    return {
        rule["record"]
        for group in alert_rule_groups()
        for rule in group["rules"]
        if "record" in rule
    }
