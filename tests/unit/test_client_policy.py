"""A job's release policy from YAML, JSON or a dict, as the SDK and `umbra jobs create --policy` read it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from umbra.cli import jobs as cli_jobs
from umbra.cli import main as cli
from umbra.client.jobs import create_protection_job, protection_job_spec
from umbra.client.policy import PolicyError, load_policy, policy_to_dict
from umbra.coordinator.v1 import job_service_pb2 as js

POLICY = {"max_reidentification": 0.05, "max_adversary_advantage": {"gender": 0.1},
          "min_kept_utility": {"skin_tone": 0.8}, "max_epsilon": 20}
YAML = """\
# limits of the release
max_reidentification: 0.05
max_adversary_advantage:
  gender: 0.10
min_kept_utility:
  skin_tone: 0.8
max_epsilon: 20
"""


def _expected() -> js.ReleasePolicy:
    return js.ReleasePolicy(max_reidentification=0.05, max_adversary_advantage={"gender": 0.1},
                            min_kept_utility={"skin_tone": 0.8}, max_epsilon=20.0)


def test_yaml_json_dict_and_proto_give_the_same_policy(tmp_path):
    (tmp_path / "p.yaml").write_text(YAML)
    (tmp_path / "p.yml").write_text(YAML)
    (tmp_path / "p.json").write_text(json.dumps(POLICY))
    (tmp_path / "p.policy").write_text(json.dumps(POLICY))  # no known suffix: JSON by its content
    (tmp_path / "p.txt").write_text(YAML)  # ... and YAML by its content
    for source in ("p.yaml", "p.yml", "p.json", "p.policy", "p.txt"):
        assert load_policy(tmp_path / source) == _expected(), source
    assert load_policy(str(tmp_path / "p.yaml")) == _expected()
    assert load_policy(POLICY) == _expected()
    assert load_policy(_expected()) == _expected()
    assert policy_to_dict(load_policy(POLICY)) == {**POLICY, "max_epsilon": 20.0}


def test_unset_limits_stay_unset():
    policy = load_policy({"max_epsilon": 4, "max_reidentification": None})
    assert policy.HasField("max_epsilon") and not policy.HasField("max_reidentification")
    assert not policy.max_adversary_advantage and not policy.min_kept_utility
    assert load_policy({"max_reidentification": 0}).HasField("max_reidentification")  # 0 is a limit, not unset


@pytest.mark.parametrize(("data", "field", "words"), [
    ({"max_reid": 0.1}, "max_reid", "is not a policy field"),
    ({"max_epsilon": "ten"}, "max_epsilon", "must be a number, not 'ten'"),
    ({"max_epsilon": True}, "max_epsilon", "must be a number"),
    ({"max_epsilon": 0}, "max_epsilon", "not a positive number"),
    ({"max_epsilon": float("inf")}, "max_epsilon", "finite"),
    ({"max_reidentification": 5}, "max_reidentification", "not a share in [0, 1]"),
    ({"max_adversary_advantage": {"gender": "high"}}, "max_adversary_advantage.gender", "must be a number"),
    ({"min_kept_utility": {"skin_tone": 80}}, "min_kept_utility.skin_tone", "not a share in [0, 1]"),
    ({"min_kept_utility": [0.8]}, "min_kept_utility", "must map attribute names to limits"),
    ({"min_kept_utility": {1: 0.8}}, "min_kept_utility", "not an attribute name"),
])
def test_a_bad_value_is_refused_naming_its_field(data, field, words):
    with pytest.raises(PolicyError) as refused:
        load_policy(data)
    assert refused.value.field == field
    assert str(refused.value).startswith(f"{field}: ") and words in str(refused.value), str(refused.value)


def test_an_empty_or_unreadable_policy_is_refused_naming_the_file(tmp_path):
    with pytest.raises(PolicyError, match="sets no limit"):
        load_policy({})
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_adversary_advantage:\n  gender: lots\n")
    with pytest.raises(PolicyError) as refused:
        load_policy(bad)
    assert str(refused.value) == f"{bad}: max_adversary_advantage.gender: must be a number, not 'lots'"
    for name, text, words in (("list.yaml", "- 0.1\n", "must be a mapping of limits"),
                              ("broken.json", "{max_epsilon: 1", "is not valid JSON"),
                              ("broken.yaml", "max_epsilon: [1\n", "is not valid YAML"),
                              ("empty.yaml", "", "must be a mapping of limits")):
        (tmp_path / name).write_text(text)
        with pytest.raises(PolicyError) as refused:
            load_policy(tmp_path / name)
        assert str(refused.value).startswith(f"{tmp_path / name}: ") and words in str(refused.value), name
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        load_policy(tmp_path / "missing.yaml")


def test_the_spec_carries_the_policy_and_the_review():
    spec = protection_job_spec(dataset="faces", version=1, protect=["gender"], keep=["skin_tone"], policy=POLICY,
                               review="automatic")
    assert spec.policy == _expected() and spec.review == js.REVIEW_AUTOMATIC
    assert spec.dataset.dataset == "datasets/faces"
    plain = protection_job_spec(dataset="faces", version=1, protect=["gender"])
    assert not plain.HasField("policy") and plain.review == js.REVIEW_UNSPECIFIED
    assert protection_job_spec(dataset="faces", version=1, protect=["gender"], review="person").review == \
        js.REVIEW_PERSON


def test_the_spec_refuses_what_the_coordinator_would():
    with pytest.raises(ValueError, match="automatic review needs a policy"):
        protection_job_spec(dataset="faces", version=1, protect=["gender"], review="automatic")
    with pytest.raises(ValueError, match="review 'robot'"):
        protection_job_spec(dataset="faces", version=1, protect=["gender"], review="robot")
    with pytest.raises(PolicyError) as refused:
        protection_job_spec(dataset="faces", version=1, protect=["age"], policy=POLICY)
    assert refused.value.field == "max_adversary_advantage.gender" and "not a protected attribute" in str(
        refused.value)


class RecordingJobs:
    def __init__(self):
        self.requests: list[js.CreateProtectionJobRequest] = []

    def CreateProtectionJob(self, request, timeout=None):  # noqa: N802 (the RPC's name)
        self.requests.append(request)
        response = js.CreateProtectionJobResponse()
        response.operation.name = "operations/1"
        return response


def test_create_protection_job_sends_the_spec_with_a_request_id():
    stub = RecordingJobs()
    spec = protection_job_spec(dataset="faces", version=1, protect=["gender"], keep=["skin_tone"], policy=POLICY,
                               review="person")
    assert create_protection_job(stub, "protect-faces", spec).name == "operations/1"
    (sent,) = stub.requests
    assert sent.job_id == "protect-faces" and sent.spec == spec and len(sent.request_id) == 36


def _create(monkeypatch, capsys, *args):
    stub = RecordingJobs()
    monkeypatch.setattr(cli_jobs, "_stub", lambda: stub)
    code = cli.main(["jobs", "create", "protect-faces", "--dataset", "faces", "--version", "1", "--protect",
                     "gender", "--keep", "skin_tone", *args])
    out = capsys.readouterr()
    return code, out.out + out.err, stub.requests


def test_cli_flags_build_the_request(monkeypatch, capsys, tmp_path):
    (tmp_path / "policy.yaml").write_text(YAML)
    code, said, (sent,) = _create(monkeypatch, capsys, "--policy", str(tmp_path / "policy.yaml"), "--review",
                                  "automatic", "--model", "gender:2", "--epsilon", "8")
    assert code == 0, said
    assert sent.spec.policy == _expected() and sent.spec.review == js.REVIEW_AUTOMATIC
    assert sent.spec.model.model == "models/gender" and sent.spec.model.version == 2
    assert sent.spec.budget.epsilon == 8 and list(sent.spec.kept_attributes) == ["skin_tone"]
    assert "jobs/protect-faces started (operations/1) (rounds answered by the policy)" in said

    code, said, (sent,) = _create(monkeypatch, capsys, "--policy", str(tmp_path / "policy.yaml"))
    assert code == 0 and sent.spec.policy == _expected() and sent.spec.review == js.REVIEW_UNSPECIFIED

    code, said, (sent,) = _create(monkeypatch, capsys)
    assert code == 0 and not sent.spec.HasField("policy")


def test_cli_refuses_an_automatic_review_without_a_policy_and_a_bad_policy(monkeypatch, capsys, tmp_path):
    with pytest.raises(SystemExit) as refused:
        _create(monkeypatch, capsys, "--review", "automatic")
    assert "--review automatic needs --policy FILE" in str(refused.value.code)

    (tmp_path / "policy.json").write_text(json.dumps({"min_kept_utility": {"skin_tone": "most\x1b[2J"}}))
    with pytest.raises(SystemExit) as refused:
        _create(monkeypatch, capsys, "--policy", str(tmp_path / "policy.json"))
    message = str(refused.value.code)
    assert message.startswith(f"umbra jobs create: --policy {tmp_path / 'policy.json'}: min_kept_utility.skin_tone:")
    assert "\x1b" not in message and "\\x1b[2J" in message

    with pytest.raises(SystemExit) as refused:
        _create(monkeypatch, capsys, "--generator", "faces-gen")
    assert "--generator 'faces-gen': write it as MODEL:VERSION" in str(refused.value.code)


def test_cli_help_names_the_new_flags(capsys):
    with pytest.raises(SystemExit):
        cli.main(["jobs", "create", "--help"])
    text = capsys.readouterr().out
    assert "--policy FILE" in text and "--review {person,automatic}" in text and "needs --policy" in text


def test_the_policy_in_the_usage_guide_reads(tmp_path):
    usage = (Path(__file__).resolve().parents[2] / "docs" / "usage.md").read_text()
    block = usage.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "policy.yaml").write_text("\n".join(line.removeprefix("  ") for line in block.splitlines()))
    assert load_policy(tmp_path / "policy.yaml") == _expected()
