"""The Kubernetes manifests: every overlay renders, passes the API schemas, and wires the services
together as the design says (ports, probes, discovery, assets volume, hardening, labels)."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest
import yaml
from deploy_helpers import (
    DASHBOARD_FILE,
    GRPC_PORT,
    K8S,
    METRICS_PORT,
    OVERLAYS,
    SERVICES,
    find,
    project_version,
)

# The oldest Kubernetes minor we support (native gRPC probes are GA since 1.27) and the newest
# the validator knows: an object must be valid on both.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
# Custom resources of the Prometheus Operator: no schema in the Kubernetes API; the tests below
# and test_alert_rules.py check their content instead.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}
NAMESPACE = "mrt"


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def workloads(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] in ("Deployment", "Job")]


def container(objects: list[dict], service: str) -> dict:
    deployment = find(objects, "Deployment", service)
    return next(c for c in pod_spec(deployment)["containers"] if c["name"] == service)


def config_env(objects: list[dict], container_spec: dict) -> dict[str, str]:
    """The environment a container gets: its ConfigMaps (envFrom), then its own `env`."""
    env: dict[str, str] = {}
    for source in container_spec.get("envFrom", []):
        env.update(find(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({e["name"]: e["value"] for e in container_spec.get("env", []) if "value" in e})
    return env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_objects_pass_the_kubernetes_schemas(rendered, overlay):
    objects = rendered[overlay]
    assert {o["kind"] for o in objects} >= {
        "Namespace",
        "Deployment",
        "Service",
        "ConfigMap",
        "ServiceAccount",
        "PersistentVolumeClaim",
        "Job",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
    }
    unique = {json.dumps(o, sort_keys=True): o for o in objects if o["kind"] not in CUSTOM_KINDS}
    for obj in unique.values():
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(
                    f"{obj['kind']}/{obj['metadata']['name']} is invalid on Kubernetes {version}: "
                    f"{error.message} at {'/'.join(map(str, error.path))}"
                )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_has_the_recommended_labels_and_namespace(rendered, overlay):
    version = project_version()
    for obj in rendered[overlay]:
        meta = obj["metadata"]
        labels = meta.get("labels", {})
        where = f"{overlay}: {obj['kind']}/{meta['name']}"
        assert labels.get("app.kubernetes.io/part-of") == "mrt-serving", where
        assert labels.get("app.kubernetes.io/version") == version, where
        if obj["kind"] == "Namespace":
            assert meta["name"] == NAMESPACE
            continue
        assert meta.get("namespace") == NAMESPACE, where
        if obj["kind"] not in ("ConfigMap", "NetworkPolicy"):
            assert labels.get("app.kubernetes.io/name", "").startswith("mrt-"), where
            assert labels.get("app.kubernetes.io/component"), where
    for workload in workloads(rendered[overlay]):
        template_labels = workload["spec"]["template"]["metadata"]["labels"]
        for key in ("name", "component", "part-of", "version"):
            assert f"app.kubernetes.io/{key}" in template_labels, workload["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_carry_the_project_version(rendered, overlay):
    version = project_version()
    accelerator = {"local": "cpu", "gpu": "cuda12", "tpu": "tpu"}[overlay]
    expected = {
        "gateway": f"mrt-gateway:{version}",
        "embedder": f"mrt-embedder:{version}",
        "generator": f"mrt-generator:{version}-{accelerator}",
    }
    for service in SERVICES:
        deployment = find(rendered[overlay], "Deployment", service)
        images = {
            c["image"]
            for c in pod_spec(deployment)["containers"]
            + pod_spec(deployment).get("initContainers", [])
        }
        assert images == {expected[service]}, service
    job = find(rendered[overlay], "Job", "mrt-assets-fill")
    assert pod_spec(job)["containers"][0]["image"] == expected["generator"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_unprivileged_with_resource_bounds(rendered, overlay):
    for workload in workloads(rendered[overlay]):
        spec = pod_spec(workload)
        name = workload["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] >= 10000, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["serviceAccountName"], name
        find(rendered[overlay], "ServiceAccount", spec["serviceAccountName"])
        for c in spec["containers"] + spec.get("initContainers", []):
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][bound]), (name, c["name"], bound)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", SERVICES)
def test_services_listen_where_probes_and_scrapers_look(rendered, overlay, service):
    objects = rendered[overlay]
    c = container(objects, service)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": GRPC_PORT[service], "metrics": METRICS_PORT[service]}
    env = config_env(objects, c)
    assert env["MRT_PORT"] == str(GRPC_PORT[service]) and env["MRT_METRICS_PORT"] == str(
        METRICS_PORT[service]
    )
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == GRPC_PORT[service], (
            probe
        )  # the standard gRPC health service
    annotations = find(objects, "Deployment", service)["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(METRICS_PORT[service])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_finds_embedder_and_every_generator_pod(rendered, overlay):
    objects = rendered[overlay]
    env = config_env(objects, container(objects, "gateway"))
    generator_target = env["MRT_GENERATOR_ADDRESSES"]
    assert generator_target.startswith("dns:///")
    host, port = generator_target.removeprefix("dns:///").rsplit(":", 1)
    service_name, namespace = host.removesuffix(".svc.cluster.local").split(".")
    assert namespace == NAMESPACE and port == str(GRPC_PORT["generator"])
    headless = find(objects, "Service", service_name)
    assert headless["spec"]["clusterIP"] == "None"
    generator_pods = find(objects, "Deployment", "generator")["spec"]["template"]["metadata"][
        "labels"
    ]
    assert headless["spec"]["selector"].items() <= generator_pods.items()
    assert GRPC_PORT["generator"] in {p["port"] for p in headless["spec"]["ports"]}

    host, port = env["MRT_EMBEDDER_ADDRESS"].rsplit(":", 1)
    service_name, namespace = host.removesuffix(".svc.cluster.local").split(".")
    assert namespace == NAMESPACE and port == str(GRPC_PORT["embedder"])
    embedder_pods = find(objects, "Deployment", "embedder")["spec"]["template"]["metadata"][
        "labels"
    ]
    assert (
        find(objects, "Service", service_name)["spec"]["selector"].items() <= embedder_pods.items()
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_generators_have_time_to_drain(rendered, overlay):
    spec = pod_spec(find(rendered[overlay], "Deployment", "generator"))
    assert spec["terminationGracePeriodSeconds"] >= 60


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_files_come_from_one_volume_filled_by_the_job(rendered, overlay):
    objects = rendered[overlay]
    job = find(objects, "Job", "mrt-assets-fill")
    job_container = pod_spec(job)["containers"][0]
    job_env = config_env(objects, job_container)
    script = job_container["command"][-1]
    assert 'mrt assets download --model "$MRT_MODEL"' in script
    ready_marker = '"$MRT_ASSETS_DIR/.ready-$MRT_MODEL"'
    assert f"touch {ready_marker}" in script

    def assets_mount(spec: dict, c: dict) -> tuple[str, dict, str]:
        """The path, mount and claim of the container's one persistent volume."""
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = [m for m in c["volumeMounts"] if "persistentVolumeClaim" in volumes[m["name"]]]
        assert len(mounts) == 1
        return (
            mounts[0]["mountPath"],
            mounts[0],
            volumes[mounts[0]["name"]]["persistentVolumeClaim"]["claimName"],
        )

    job_path, _, claim = assets_mount(pod_spec(job), job_container)
    assert job_env["MRT_ASSETS_DIR"] == job_path
    find(objects, "PersistentVolumeClaim", claim)
    for service in ("embedder", "generator"):
        spec = pod_spec(find(objects, "Deployment", service))
        c = container(objects, service)
        path, mount, service_claim = assets_mount(spec, c)
        assert service_claim == claim and mount.get("readOnly") is True, service
        assert config_env(objects, c)["MRT_ASSETS_DIR"] == path
        assert config_env(objects, c)["MRT_MODEL"] == job_env["MRT_MODEL"]
        waiter = spec["initContainers"][0]
        assert ready_marker in waiter["command"][-1], service


def test_overlays_pick_model_and_accelerator(rendered):
    def generator(overlay: str) -> tuple[dict, dict, dict]:
        objects = rendered[overlay]
        c = container(objects, "generator")
        return c, config_env(objects, c), pod_spec(find(objects, "Deployment", "generator"))

    c, env, spec = generator("local")
    assert env["MRT_MODEL"] == "tiny"
    assert not any("gpu" in r or "tpu" in r for r in c["resources"]["limits"])

    c, env, spec = generator("gpu")
    assert env["MRT_MODEL"] == "large"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]

    c, env, spec = generator("tpu")
    assert env["MRT_MODEL"] == "large"
    assert c["resources"]["limits"]["google.com/tpu"] == "1"
    assert spec["nodeSelector"]["cloud.google.com/gke-tpu-accelerator"].startswith("tpu-")
    assert "cloud.google.com/gke-tpu-topology" in spec["nodeSelector"]

    for overlay in ("gpu", "tpu"):
        claim = find(rendered[overlay], "PersistentVolumeClaim", "mrt-assets")
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"], (
            overlay
        )  # pods on many nodes read it


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscalers_and_disruption_budgets_cover_the_deployments(rendered, overlay):
    objects = rendered[overlay]
    hpas = {
        o["spec"]["scaleTargetRef"]["name"]: o
        for o in objects
        if o["kind"] == "HorizontalPodAutoscaler"
    }
    for service in ("gateway", "embedder"):
        metric = hpas[service]["spec"]["metrics"][0]
        assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    if overlay == "local":
        assert "generator" not in hpas  # no custom-metrics adapter on a laptop
    else:
        metric = hpas["generator"]["spec"]["metrics"][0]
        assert metric["type"] == "Pods"
        assert metric["pods"]["metric"]["name"] == "mrt_generator_session_utilization"
        adapter = yaml.safe_load(
            (
                K8S / "components" / "generator-autoscaling" / "prometheus-adapter-values.yaml"
            ).read_text()
        )
        assert [r["name"]["as"] for r in adapter["rules"]["custom"]] == [
            "mrt_generator_session_utilization"
        ]
    for target in hpas:
        find(objects, "Deployment", target)
    for service in SERVICES:
        pod_labels = find(objects, "Deployment", service)["spec"]["template"]["metadata"]["labels"]
        budgets = [
            o
            for o in objects
            if o["kind"] == "PodDisruptionBudget"
            and o["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        ]
        assert len(budgets) == 1, service


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitor_scrapes_each_service_once(rendered, overlay):
    objects = rendered[overlay]
    monitor = find(objects, "ServiceMonitor", "mrt")
    (expression,) = monitor["spec"]["selector"]["matchExpressions"]
    assert expression["operator"] == "In"
    selected = [
        s
        for s in objects
        if s["kind"] == "Service"
        and s["metadata"]["labels"].get(expression["key"]) in expression["values"]
    ]
    (endpoint,) = monitor["spec"]["endpoints"]
    jobs = {}
    for service in selected:
        metrics_ports = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
        assert len(metrics_ports) == 1, service["metadata"]["name"]
        jobs[service["metadata"]["labels"][monitor["spec"]["jobLabel"]]] = metrics_ports[0]["port"]
    assert jobs == METRICS_PORT  # job names gateway / embedder / generator, as in the alert rules


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_monitoring_objects_are_the_committed_rules_and_dashboard(rendered, overlay):
    objects = rendered[overlay]
    rule = find(objects, "PrometheusRule", "mrt-alerts")
    source = yaml.safe_load((K8S.parent / "prometheus" / "rules" / "mrt-alerts.yml").read_text())
    assert rule["spec"]["groups"] == source["groups"]
    dashboard = find(objects, "ConfigMap", "mrt-grafana-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["mrt-overview.json"]) == json.loads(
        DASHBOARD_FILE.read_text()
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateways_drain_before_the_pod_is_killed_and_roll_one_at_a_time(rendered, overlay):
    objects = rendered[overlay]
    gateway = find(objects, "Deployment", "gateway")
    env = config_env(objects, container(objects, "gateway"))
    drain_s = float(env["MRT_DRAIN_GRACE_S"]) + float(env.get("MRT_SHUTDOWN_GRACE_S", 5))
    assert pod_spec(gateway)["terminationGracePeriodSeconds"] > drain_s
    rolling = gateway["spec"]["strategy"]
    assert rolling["type"] == "RollingUpdate" and rolling["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_several_gateways_share_a_redis_session_store_they_may_reach(rendered, overlay):
    objects = rendered[overlay]
    store = config_env(objects, container(objects, "gateway"))["MRT_SESSION_STORE"]
    if overlay == "local":
        assert store == "memory://"  # one gateway, nothing more to run
        return
    assert store == "redis://redis.mrt.svc.cluster.local:6379/0"
    redis_service = find(objects, "Service", "redis")
    assert redis_service["spec"]["ports"][0]["port"] == 6379
    egress = find(objects, "NetworkPolicy", "gateway")["spec"]["egress"]
    assert any(
        rule["to"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mrt-redis"}
        and rule["ports"][0]["port"] == 6379
        for rule in egress
    )
    ingress = find(objects, "NetworkPolicy", "redis")["spec"]["ingress"]
    assert ingress[0]["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "mrt-gateway"
    }
