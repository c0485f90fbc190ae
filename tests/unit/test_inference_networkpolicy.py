"""The chart's NetworkPolicy for the inference server (issue 26): off by default; when enabled, only the
coordinator's pods (and components named in extraComponents) reach Triton's gRPC and HTTP ports."""

from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "umbra"


def policy(values: dict) -> dict | None:
    """The rendered umbra-inference NetworkPolicy (every manifest checked against the Kubernetes 1.30 schemas)."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name="umbra", namespace="umbra")
    docs = [doc for text in rendered.values() for doc in yaml.safe_load_all(text) if doc]
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
    found = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    return found.get("umbra-inference")


def test_off_unless_enabled():
    assert policy({}) is None
    assert policy({"inference": {"networkPolicy": {"enabled": False}}}) is None


def test_only_the_coordinator_reaches_the_inference_ports():
    spec = policy({"inference": {"networkPolicy": {"enabled": True}}})["spec"]
    assert spec["podSelector"]["matchLabels"] == {"app.kubernetes.io/instance": "umbra",
                                                  "app.kubernetes.io/component": "inference"}
    assert spec["policyTypes"] == ["Ingress"]
    [rule] = spec["ingress"]
    assert [peer["podSelector"]["matchLabels"] for peer in rule["from"]] == [
        {"app.kubernetes.io/instance": "umbra", "app.kubernetes.io/component": "coordinator"}]
    assert sorted(p["port"] for p in rule["ports"]) == [8000, 8001]


def test_ports_and_extra_components_from_values():
    spec = policy({"inference": {"ports": {"grpc": 9001, "http": 9000},
                                 "networkPolicy": {"enabled": True, "extraComponents": ["training"]}}})["spec"]
    [rule] = spec["ingress"]
    assert [peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in rule["from"]] == [
        "coordinator", "training"]
    assert sorted(p["port"] for p in rule["ports"]) == [9000, 9001]
