"""The Helm chart renders (Helm's own Go SDK, through helm-python-sdk) and every manifest is valid against
the Kubernetes 1.30 schemas (kubernetes-validate, strict). No cluster is needed. The chart also refuses values
the services cannot run with (several coordinators without a database, one claim for several worker pods)."""

from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
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


# The coordinator's state, the workers' operation records and the coordinator's disruption budget.

SINGLE_COORDINATOR = {"services": {"coordinator": {"replicas": 1, "autoscaling": {"enabled": False}}}}
SINGLE_WORKERS = {"services": {s: {"replicas": 1, "autoscaling": {"enabled": False}}
                               for s in DEFAULT_PORTS if s != "coordinator"}}


def merged(*parts: dict) -> dict:
    out: dict = {}
    for part in parts:
        for key, value in part.items():
            out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def valid(docs: list[dict]) -> list[dict]:
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
    return docs


def of_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod(docs: list[dict], service: str) -> dict:
    return of_kind(docs, "Deployment")[f"umbra-{service}"]["spec"]["template"]["spec"]


def env_of(docs: list[dict], service: str) -> dict[str, dict]:
    return {e["name"]: e for e in pod(docs, service)["containers"][0]["env"]}


def mounts_of(docs: list[dict], service: str) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in pod(docs, service)["containers"][0]["volumeMounts"]}


def volumes_of(docs: list[dict], service: str) -> dict[str, dict]:
    return {v.pop("name"): v for v in pod(docs, service)["volumes"]}


def test_by_default_the_coordinator_reads_its_database_url_from_the_secret_and_keeps_no_state_on_the_pod():
    docs = valid(render())
    url = env_of(docs, "coordinator")["UMBRA_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert url == {"name": "umbra-secrets", "key": "database-url", "optional": False}
    assert volumes_of(docs, "coordinator") == {"scratch": {"emptyDir": {}}}  # no data volume for state
    assert mounts_of(docs, "coordinator") == {"scratch": "/data"}
    assert "UMBRA_COORDINATOR_DATA_DIR" not in env_of(docs, "coordinator")
    coordinator = of_kind(docs, "Deployment")["umbra-coordinator"]["spec"]
    assert coordinator["replicas"] == 2 and "strategy" not in coordinator  # rolling updates, as before
    assert of_kind(docs, "HorizontalPodAutoscaler")["umbra-coordinator"]["spec"]["minReplicas"] == 2
    assert of_kind(docs, "PersistentVolumeClaim") == {}
    for service in DEFAULT_PORTS:
        if service != "coordinator":  # the workers keep dataVolume and never see the database
            assert "UMBRA_DATABASE_URL" not in env_of(docs, service)
            assert volumes_of(docs, service) == {"data": {"emptyDir": {}}}


def test_the_database_url_key_is_a_value():
    docs = valid(render({"secretName": "prod", "database": {"urlSecretKey": "pg-url"}}))
    ref = env_of(docs, "coordinator")["UMBRA_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"], ref["optional"]) == ("prod", "pg-url", False)


@pytest.mark.parametrize("coordinator", [
    {},  # the defaults: 2 replicas, autoscaling on
    {"replicas": 2, "autoscaling": {"enabled": False}},
    {"replicas": 1, "autoscaling": {"enabled": True}},
])
def test_more_than_one_coordinator_without_a_database_is_refused(coordinator):
    values = {"database": {"enabled": False}, "services": {"coordinator": coordinator}}
    with pytest.raises(helm.HelmRenderError) as refused:
        render(values)
    message = str(refused.value)
    for named in ("database.enabled", "services.coordinator.replicas=1",
                  "services.coordinator.autoscaling.enabled=false", "ONE coordinator replica"):
        assert named in message


def test_an_empty_database_url_key_is_refused():
    with pytest.raises(helm.HelmRenderError, match="database.urlSecretKey"):
        render({"database": {"urlSecretKey": ""}})


def test_one_coordinator_without_a_database_keeps_its_sqlite_files_on_a_claim():
    docs = valid(render(merged({"database": {"enabled": False}}, SINGLE_COORDINATOR)))
    env = env_of(docs, "coordinator")
    assert "UMBRA_DATABASE_URL" not in env  # empty: the embedded SQLite file
    assert env["UMBRA_COORDINATOR_DATA_DIR"]["value"] == "/state/coordinator"
    assert mounts_of(docs, "coordinator") == {"scratch": "/data", "state": "/state"}
    volumes = volumes_of(docs, "coordinator")
    assert volumes["state"] == {"persistentVolumeClaim": {"claimName": "umbra-coordinator-state"}}
    assert volumes["scratch"] == {"emptyDir": {}}
    claim = of_kind(docs, "PersistentVolumeClaim")["umbra-coordinator-state"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    deployment = of_kind(docs, "Deployment")["umbra-coordinator"]["spec"]
    assert deployment["replicas"] == 1 and deployment["strategy"] == {"type": "Recreate"}
    assert pod(docs, "coordinator")["securityContext"]["fsGroup"] == 10001
    assert "umbra-coordinator" not in of_kind(docs, "HorizontalPodAutoscaler")
    assert of_kind(docs, "PodDisruptionBudget") == {}


def test_one_coordinator_without_a_database_may_use_an_existing_claim_but_never_none():
    values = merged({"database": {"enabled": False, "embedded": {"existingClaim": "coordinator-disk"}}},
                    SINGLE_COORDINATOR)
    docs = valid(render(values))
    assert volumes_of(docs, "coordinator")["state"] == {"persistentVolumeClaim": {"claimName": "coordinator-disk"}}
    assert of_kind(docs, "PersistentVolumeClaim") == {}
    with pytest.raises(helm.HelmRenderError, match="database.embedded"):
        render(merged({"database": {"enabled": False, "embedded": {"claimTemplate": None}}}, SINGLE_COORDINATOR))


def test_workers_keep_their_operation_records_on_claims_the_chart_makes():
    template = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}}
    docs = valid(render(merged({"workers": {"operationsVolume": {"claimTemplate": template}}}, SINGLE_WORKERS)))
    claims = of_kind(docs, "PersistentVolumeClaim")
    workers = [s for s in DEFAULT_PORTS if s != "coordinator"]
    assert set(claims) == {f"umbra-{s}-operations" for s in workers}
    for service in workers:
        assert claims[f"umbra-{service}-operations"]["spec"] == template
        volumes = volumes_of(docs, service)
        assert volumes["operations"] == {"persistentVolumeClaim": {"claimName": f"umbra-{service}-operations"}}
        assert volumes["data"] == {"emptyDir": {}}
        assert mounts_of(docs, service) == {"data": "/data", "operations": "/operations"}
        assert env_of(docs, service)[f"UMBRA_{service.upper()}_DATA_DIR"]["value"] == f"/operations/{service}"
        assert of_kind(docs, "Deployment")[f"umbra-{service}"]["spec"]["strategy"] == {"type": "Recreate"}
    assert "operations" not in volumes_of(docs, "coordinator")


def test_workers_may_share_an_existing_claim_for_their_operation_records():
    docs = valid(render(merged({"workers": {"operationsVolume": {"existingClaim": "umbra-ops"}}}, SINGLE_WORKERS)))
    assert of_kind(docs, "PersistentVolumeClaim") == {}
    for service in DEFAULT_PORTS:
        if service != "coordinator":
            assert volumes_of(docs, service)["operations"] == {"persistentVolumeClaim": {"claimName": "umbra-ops"}}
            assert env_of(docs, service)[f"UMBRA_{service.upper()}_DATA_DIR"]["value"] == f"/operations/{service}"


def test_operation_records_on_a_claim_need_one_replica_per_worker_and_one_kind_of_claim():
    with pytest.raises(helm.HelmRenderError, match=r"services\.anonymizer\.autoscaling\.enabled=false"):
        render({"workers": {"operationsVolume": {"existingClaim": "umbra-ops"}}})  # the workers autoscale
    both = {"claimTemplate": {"accessModes": ["ReadWriteOnce"]}, "existingClaim": "umbra-ops"}
    with pytest.raises(helm.HelmRenderError, match="not both"):
        render(merged({"workers": {"operationsVolume": both}}, SINGLE_WORKERS))


def test_values_yaml_says_why_losing_the_workers_operation_records_is_acceptable():
    text = (CHART / "values.yaml").read_text()
    comment = text[text.index("\nworkers:"):text.index("  operationsVolume:")]
    assert "request_id" in comment and "emptyDir" in comment and "ledger" in comment


@pytest.mark.parametrize(("coordinator", "budget"), [
    ({}, True),  # the defaults: autoscaling from 2
    ({"replicas": 3, "autoscaling": {"enabled": False}}, True),
    ({"replicas": 1, "autoscaling": {"enabled": False}}, False),  # minAvailable 1 would block every drain
    ({"replicas": 2, "autoscaling": {"enabled": True, "minReplicas": 1}}, False),
])
def test_the_coordinator_has_a_disruption_budget_when_more_than_one_runs(coordinator, budget):
    docs = valid(render({"services": {"coordinator": coordinator}}))
    budgets = of_kind(docs, "PodDisruptionBudget")
    assert bool(budgets) == budget
    if budget:
        pdb = budgets["umbra-coordinator"]
        assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["minAvailable"] == 1
        labels = of_kind(docs, "Deployment")["umbra-coordinator"]["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "coordinator"
