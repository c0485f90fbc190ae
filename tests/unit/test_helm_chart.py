"""The Helm chart renders (Helm's own Go SDK, through helm-python-sdk) and every manifest is valid against
the Kubernetes 1.30 schemas (kubernetes-validate, strict), except the ServiceMonitor: a CRD of the Prometheus
Operator, whose schema kubernetes-validate does not have (SchemaNotFoundError), so its fields are checked here by
hand. No cluster is needed. The chart also refuses values the services cannot run with (several coordinators
without a database, one claim for several worker pods, a metrics port that is a gRPC port, an Indexed Job without
its tenant or request)."""

import json
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from google.protobuf import json_format

from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
from umbra.client.layout import DEFAULT_PORTS

CHART = Path(__file__).resolve().parents[2] / "helm" / "umbra"
NOT_IN_KUBERNETES_VALIDATE = {"ServiceMonitor"}  # CRDs: no schema to validate against (checked by hand below)


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
        if doc["kind"] not in NOT_IN_KUBERNETES_VALIDATE:
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


# Metrics (UMBRA_METRICS_PORT, /metrics) and traces (OTEL_EXPORTER_OTLP_ENDPOINT).


def ports_of(docs: list[dict], service: str) -> tuple[dict[str, int], dict[str, dict]]:
    """The container's ports and the Service's, by name."""
    container = {p["name"]: p["containerPort"] for p in pod(docs, service)["containers"][0]["ports"]}
    return container, {p["name"]: p for p in of_kind(docs, "Service")[f"umbra-{service}"]["spec"]["ports"]}


def test_every_service_serves_its_metrics_on_a_port_named_metrics_by_default():
    docs = valid(render())
    for service in DEFAULT_PORTS:
        assert env_of(docs, service)["UMBRA_METRICS_PORT"]["value"] == "9464"
        container, ports = ports_of(docs, service)
        assert container["metrics"] == 9464
        assert ports["metrics"] == {"name": "metrics", "port": 9464, "targetPort": "metrics", "appProtocol": "http"}
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env_of(docs, service)  # no traces unless an endpoint is given
    assert of_kind(docs, "ServiceMonitor") == {}  # off by default: the CRD may not be installed


def test_metrics_can_move_or_be_turned_off():
    docs = valid(render({"metrics": {"port": 9100}}))
    assert env_of(docs, "anonymizer")["UMBRA_METRICS_PORT"]["value"] == "9100"
    assert ports_of(docs, "anonymizer")[1]["metrics"]["port"] == 9100
    docs = valid(render({"metrics": {"enabled": False}}))
    for service in DEFAULT_PORTS:
        assert env_of(docs, service)["UMBRA_METRICS_PORT"]["value"] == "0"  # 0: the process serves no metrics
        container, ports = ports_of(docs, service)
        assert set(container) == set(ports) == {"grpc"}


def test_a_service_monitor_scrapes_every_service_when_enabled():
    docs = valid(render({"metrics": {"serviceMonitor": {"enabled": True, "interval": "15s",
                                                        "labels": {"release": "kube-prometheus-stack"}}}}))
    [monitor] = of_kind(docs, "ServiceMonitor").values()
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["metadata"]["name"] == "umbra"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    selector = monitor["spec"]["selector"]
    [components] = selector["matchExpressions"]
    assert components["key"] == "app.kubernetes.io/component" and components["operator"] == "In"
    for name, service in of_kind(docs, "Service").items():  # it selects every Service, each with a `metrics` port
        labels = service["metadata"]["labels"]
        assert selector["matchLabels"].items() <= labels.items() and labels[components["key"]] in components["values"]
        assert "metrics" in {p["name"] for p in service["spec"]["ports"]}, name
    assert set(components["values"]) == set(DEFAULT_PORTS)


def test_metrics_values_the_services_cannot_run_with_are_refused():
    with pytest.raises(helm.HelmRenderError, match="metrics.serviceMonitor.enabled needs metrics.enabled"):
        render({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}})
    with pytest.raises(helm.HelmRenderError, match=r"metrics.port 50052 is services.anonymizer.port"):
        render({"metrics": {"port": 50052}})


def test_traces_go_to_the_otlp_endpoint_when_one_is_given():
    docs = valid(render({"tracing": {"otlpEndpoint": "http://otel-collector:4317"}}))
    for service in DEFAULT_PORTS:
        assert env_of(docs, service)["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://otel-collector:4317"


# Dataset-wide anonymization as an Indexed Job (`umbra job anonymize`).

REQUEST = {"settings": {"generator": {"model": "models/gen", "version": 1}, "protectedAttributes": ["gender"],
                        "keptAttributes": ["age"], "intensity": 0.75, "seed": "5"},
           "dataset": {"dataset": "datasets/faces", "version": 1}, "outputDataset": "datasets/faces",
           "outputVersion": 3}


def indexed(**job) -> dict:
    return {"indexedJobs": {"anonymize": {"enabled": True, "tenant": "acme", "request": REQUEST} | job}}


def test_no_indexed_job_by_default():
    docs = render()
    assert of_kind(docs, "Job") == {} and of_kind(docs, "ConfigMap") == {}


def test_the_anonymization_job_is_indexed_and_retried_per_index():
    docs = valid(render(indexed(completions=6, parallelism=3, backoffLimitPerIndex=2, maxFailedIndexes=1)))
    job = of_kind(docs, "Job")["umbra-anonymize"]["spec"]
    assert job["completionMode"] == "Indexed" and (job["completions"], job["parallelism"]) == (6, 3)
    assert job["backoffLimitPerIndex"] == 2 and job["maxFailedIndexes"] == 1 and "backoffLimit" not in job
    fail_index, ignore = job["podFailurePolicy"]["rules"]
    assert fail_index["action"] == "FailIndex" and fail_index["onExitCodes"]["values"] == [2]  # a refused request
    assert ignore == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    spec = job["template"]["spec"]
    assert spec["restartPolicy"] == "Never" and spec["securityContext"]["runAsNonRoot"]
    [container] = spec["containers"]
    assert container["name"] == fail_index["onExitCodes"]["containerName"]
    assert container["command"] == ["umbra", "job", "anonymize"] and "args" not in container
    env = {e["name"]: e for e in container["env"]}
    assert env["UMBRA_JOB_COMPLETIONS"]["value"] == "6" and env["UMBRA_JOB_TENANT"]["value"] == "acme"
    assert env["UMBRA_COORDINATOR_URL"]["value"] == "umbra-coordinator:50051"  # the privacy ledger
    assert "secretKeyRef" in env["UMBRA_SERVICE_TOKEN"]["valueFrom"]
    assert "JOB_COMPLETION_INDEX" not in env  # Kubernetes sets it in each index's pod
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert env["UMBRA_JOB_REQUEST"]["value"] == mounts["request"] + "/request.json"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["request"]["configMap"]["name"] == "umbra-anonymize"
    data = of_kind(docs, "ConfigMap")["umbra-anonymize"]["data"]["request.json"]
    request = json_format.Parse(data, an.AnonymizeDatasetRequest())  # what `umbra job anonymize` reads
    assert request.output_version == 3 and request.settings.seed == 5 and not request.shards
    assert json.loads(data) == REQUEST  # the values, as JSON


def test_the_anonymization_job_may_read_its_request_from_a_config_map_of_yours_and_more_env():
    s3 = [{"name": "UMBRA_STORE", "value": "s3"},
          {"name": "UMBRA_S3_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "access"}}}]
    docs = valid(render(indexed(request={}, existingConfigMap="big-job", requestKey="job.json", name="faces-v3",
                                extraEnv=s3)))
    assert of_kind(docs, "ConfigMap") == {}
    spec = of_kind(docs, "Job")["umbra-faces-v3"]["spec"]["template"]["spec"]
    assert {v["name"]: v for v in spec["volumes"]}["request"]["configMap"] == {
        "name": "big-job", "items": [{"key": "job.json", "path": "job.json"}]}
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert env["UMBRA_JOB_REQUEST"]["value"] == "/etc/umbra/job/job.json"
    assert env["UMBRA_STORE"]["value"] == "s3" and "secretKeyRef" in env["UMBRA_S3_ACCESS_KEY"]["valueFrom"]


@pytest.mark.parametrize(("job", "named"), [
    ({"tenant": ""}, "indexedJobs.anonymize.tenant is empty"),
    ({"request": {}}, "indexedJobs.anonymize.request is empty"),
    ({"existingConfigMap": "mine"}, "not both"),
    ({"request": REQUEST | {"shards": [0, 1]}}, "indexedJobs.anonymize.request.shards must be empty"),
    ({"completions": 0}, "indexedJobs.anonymize.completions is 0"),
])
def test_an_anonymization_job_without_what_it_needs_is_refused(job, named):
    with pytest.raises(helm.HelmRenderError, match=named):
        render(indexed(**job))
