"""The Helm chart renders (Helm's own Go SDK, through helm-python-sdk) and every manifest is valid against
the Kubernetes 1.30 schemas (kubernetes-validate, strict). No cluster is needed."""

from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

from umbra.client.layout import DEFAULT_PORTS

CHART = Path(__file__).resolve().parents[2] / "helm" / "umbra"


def render(values: dict | None = None) -> list[dict]:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values or {}, name="umbra", namespace="umbra")
    return [doc for text in rendered.values() for doc in yaml.safe_load_all(text) if doc]


def test_chart_lints_without_errors():
    assert helm.lint(str(CHART))["errors"] == []


def test_every_service_is_a_deployment_with_grpc_probes_and_valid_manifests():
    docs = render()
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {f"umbra-{s}" for s in DEFAULT_PORTS}
    for service, port in DEFAULT_PORTS.items():
        container = deployments[f"umbra-{service}"]["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == [service]
        assert container["readinessProbe"]["grpc"]["port"] == port  # the chart's ports match layout.py
        env = {e["name"]: e for e in container["env"]}
        assert "secretKeyRef" in env["UMBRA_SERVICE_TOKEN"]["valueFrom"]
        assert ("UMBRA_ADMIN_KEY" in env) == (service == "coordinator")
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "HorizontalPodAutoscaler"} == {
        "umbra-coordinator", "umbra-anonymizer", "umbra-distortion", "umbra-training"}
