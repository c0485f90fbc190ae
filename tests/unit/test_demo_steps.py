"""scripts/demo.py's step runner: a refusal is reported in plain words (no traceback), the step is marked failed
and the steps that need it are skipped; anything else propagates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import grpc
import pytest

from umbra.client import OperationFailed, UmbraRpcError

DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("umbra_demo_script", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_refused_step_is_reported_and_its_dependents_skipped(demo, capsys):
    report: dict = {}
    steps = demo.Steps(report)

    def refused():
        raise UmbraRpcError(grpc.StatusCode.INVALID_ARGUMENT, "must be in (0, 100]", field="differential_privacy."
                            "target_epsilon", reason="INVALID_INPUT")

    steps.run("dataset", "3. upload", lambda: {"version": "datasets/faces/versions/1"})
    steps.run("classifier", "4. train", refused, needs=("dataset",))
    steps.run("augmdp", "5. release", lambda: pytest.fail("ran without its classifier"), needs=("classifier",))
    steps.run("protection_job", "8. jobs", lambda: {"code": "UNIMPLEMENTED"}, needs=("dataset",))

    out = capsys.readouterr().out
    assert "refused: INVALID_ARGUMENT: must be in (0, 100]; field differential_privacy.target_epsilon; reason " \
           "INVALID_INPUT" in out
    assert "skipped: it needs what classifier would have given" in out and "Traceback" not in out
    assert steps.failed == ["4 (classifier)"] and report["skipped"] == ["augmdp"]
    assert report["dataset"] and report["protection_job"] and "classifier" not in report


def test_failed_operations_are_said_in_words(demo):
    failed = OperationFailed("operations/1", grpc.StatusCode.FAILED_PRECONDITION.value[0], "the update was refused")
    assert demo.refusal(failed) == "operations/1 ended with FAILED_PRECONDITION: the update was refused"


def test_a_bug_is_not_mistaken_for_a_refusal(demo):
    steps = demo.Steps({})
    with pytest.raises(ZeroDivisionError):
        steps.run("dataset", "3. upload", lambda: 1 / 0)
