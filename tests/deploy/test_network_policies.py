"""The NetworkPolicies open exactly the paths of the design, checked by evaluating them the way
Kubernetes does for every pair of pods and every port a service listens on."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from deploy_helpers import GRPC_PORT, METRICS_PORT, OVERLAYS, SERVICES, find


@dataclasses.dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: dict
    namespace_labels: dict


OUTSIDE = Pod("internet", "", {}, {})  # an address outside the cluster (the Hugging Face Hub)


def pods(objects: list[dict]) -> dict[str, Pod]:
    """Our pods as the overlay labels them, and pods elsewhere that talk to them."""
    ours = {o["metadata"]["name"]: o for o in objects if o["kind"] in ("Deployment", "Job")}
    mrt = {"kubernetes.io/metadata.name": "mrt"}
    found = {
        name: Pod(name, "mrt", o["spec"]["template"]["metadata"]["labels"], mrt)
        for name, o in ours.items()
    }
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    found["client"] = Pod(
        "client", "default", {"app": "player"}, {"kubernetes.io/metadata.name": "default"}
    )
    found["prometheus"] = Pod(
        "prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}, monitoring
    )
    found["grafana"] = Pod(
        "grafana", "monitoring", {"app.kubernetes.io/name": "grafana"}, monitoring
    )
    found["kube-dns"] = Pod(
        "kube-dns",
        "kube-system",
        {"k8s-app": "kube-dns"},
        {"kubernetes.io/metadata.name": "kube-system"},
    )
    return found


def selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are evaluated here"
    return selector.get("matchLabels", {}).items() <= labels.items()


def peer_matches(peer: dict, policy_namespace: str, pod: Pod) -> bool:
    if pod is OUTSIDE:
        return False  # no policy here names an ipBlock
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], pod.namespace_labels):
            return False
    elif pod.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector", {}), pod.labels)


def rule_allows(
    rule: dict, peers_key: str, policy_namespace: str, peer: Pod, port: int, protocol: str
) -> bool:
    ports = rule.get("ports")
    if ports is not None and not any(
        p["port"] == port and p.get("protocol", "TCP") == protocol for p in ports
    ):
        return False
    peers = rule.get(peers_key)
    return peers is None or any(peer_matches(p, policy_namespace, peer) for p in peers)


def allowed(policies: list[dict], src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
    """Whether Kubernetes lets src open a connection to dst:port under these policies."""

    def direction_allows(
        pod: Pod, policy_type: str, rules_key: str, peers_key: str, peer: Pod
    ) -> bool:
        applying = [
            p
            for p in policies
            if pod.namespace == p["metadata"]["namespace"]
            and policy_type in p["spec"]["policyTypes"]
            and selects(p["spec"]["podSelector"], pod.labels)
        ]
        if not applying:
            return True  # a pod no policy selects is open in that direction
        return any(
            rule_allows(rule, peers_key, p["metadata"]["namespace"], peer, port, protocol)
            for p in applying
            for rule in p["spec"].get(rules_key, [])
        )

    return direction_allows(src, "Egress", "egress", "to", dst) and direction_allows(
        dst, "Ingress", "ingress", "from", src
    )


def design_paths(everyone: dict[str, Pod]) -> set[tuple[str, str, int]]:
    """Clients (any pod outside the namespace) -> gateway, gateway -> embedder and generator,
    Prometheus -> every metrics port."""
    clients = {name for name, pod in everyone.items() if pod.namespace != "mrt"}
    return (
        {(client, "gateway", GRPC_PORT["gateway"]) for client in clients}
        | {
            ("gateway", "embedder", GRPC_PORT["embedder"]),
            ("gateway", "generator", GRPC_PORT["generator"]),
        }
        | {("prometheus", service, METRICS_PORT[service]) for service in SERVICES}
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_design_paths_reach_the_services(rendered, overlay):
    policies = [o for o in rendered[overlay] if o["kind"] == "NetworkPolicy"]
    everyone = pods(rendered[overlay])
    open_paths = {
        (src, dst, port)
        for src, dst in itertools.product(everyone, SERVICES)
        for port in (GRPC_PORT[dst], METRICS_PORT[dst])
        if src != dst and allowed(policies, everyone[src], everyone[dst], port)
    }
    assert open_paths == design_paths(everyone)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_egress_is_dns_plus_the_assets_download(rendered, overlay):
    policies = [o for o in rendered[overlay] if o["kind"] == "NetworkPolicy"]
    everyone = pods(rendered[overlay])
    for name in (*SERVICES, "mrt-assets-fill"):
        assert allowed(policies, everyone[name], everyone["kube-dns"], 53, "UDP"), name
        assert allowed(policies, everyone[name], OUTSIDE, 443) == (name == "mrt-assets-fill"), name
    assert not allowed(
        policies, everyone["embedder"], everyone["generator"], GRPC_PORT["generator"]
    )
    find(rendered[overlay], "NetworkPolicy", "default-deny")
