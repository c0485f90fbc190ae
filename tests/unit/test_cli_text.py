"""What the CLI prints from a tenant reaches the terminal escaped: no ESC, CSI, OSC, BEL or carriage return."""

from __future__ import annotations

import io
import unicodedata

import grpc
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from umbra.cli import jobs as cli_jobs
from umbra.cli import main as cli
from umbra.cli.text import printable
from umbra.client.errors import UmbraRpcError
from umbra.common.v1 import image_pb2
from umbra.coordinator.v1 import job_service_pb2 as js

ATTACK = "\x1b]0;pwned\x07\x1b[31m"
RAW = ("\x1b", "\x07", "\x9b", "\r", "\x00", "\x7f")


def test_printable_escapes_escape_sequences_bel_cr_and_c1():
    assert printable("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"  # CSI (SGR)
    assert printable("\x1b]0;pwned\x07") == "\\x1b]0;pwned\\x07"  # OSC: retitles, ended by BEL
    assert printable("\x1b]8;;http://evil\x1b\\link") == "\\x1b]8;;http://evil\\x1b\\link"  # OSC 8 link, ST end
    assert printable("ok\rpwned") == "ok\\rpwned"
    assert printable("a\nb\tc") == "a\\nb\\tc"
    assert printable("\x9b31m") == "\\u009b31m"  # C1 CSI, one byte in 8-bit terminals
    assert printable("\x00\x7f\x85") == "\\x00\\x7f\\u0085"
    assert printable("\u202eevil") == "\\u202eevil"  # a bidi override (format character)
    assert printable("\U000e0001") == "\\U000e0001"  # a tag character


def test_printable_keeps_ordinary_text():
    for text in ("skin_tone", "Café é", "顔データ", "日本語 ラベル", "naïve — “quoted” ε=1.5 δ", "a b", "back\\slash"):
        assert printable(text) == text
    assert printable(42) == "42"
    assert printable(ValueError("bad \x1b[2J")) == "bad \\x1b[2J"


@given(st.text())
def test_printable_output_is_always_printable(text):
    out = printable(text)
    assert out.isprintable()
    assert not any(unicodedata.category(c) in ("Cc", "Cf") for c in out)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "gray").save(buffer, format="PNG")
    return buffer.getvalue()


def _round(label: str) -> js.FeedbackRound:
    return js.FeedbackRound(
        name=f"jobs/j/rounds/1{label}", intensity=0.5, risk={f"{label}_classifier_agreement": 0.6},
        flagged_samples=[f"sample{label}"],
        criteria=[js.PolicyCriterion(name="adversary_advantage", attribute=label, value=0.2, limit=0.1, met=False,
                                     comparison="at most", faces=8, summary=f"Attribute guessed {label} 20%"),
                  js.PolicyCriterion(name="kept_utility", attribute="skin_tone", value=0.9, limit=0.8, met=True,
                                     comparison="at least", faces=8)])


class FakeJobs:
    """A JobServiceStub that answers from memory, every string holding the label."""

    def __init__(self, label: str):
        self.label = label

    def GetPreview(self, request, timeout=None):  # noqa: N802 (the RPC's name)
        pair = js.PreviewPair(original=image_pb2.Image(data=_png(), sample_key=f"key{self.label}"),
                              anonymized=image_pb2.Image(data=_png()))
        pair.released_attributes.add(attribute=self.label, category=self.label)
        return js.GetPreviewResponse(round=_round(self.label), pairs=[pair])

    def ListFeedbackRounds(self, request, timeout=None):  # noqa: N802
        return js.ListFeedbackRoundsResponse(rounds=[_round(self.label), _round(self.label)])

    def ListProtectionJobs(self, request, timeout=None):  # noqa: N802
        return js.ListProtectionJobsResponse(jobs=[js.ProtectionJob(name=f"jobs/j{self.label}")])


def _run(monkeypatch, capsys, *args):
    monkeypatch.setattr(cli_jobs, "_stub", lambda: FakeJobs(ATTACK))
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_jobs_preview_prints_a_hostile_label_escaped(monkeypatch, capsys, tmp_path):
    code, said = _run(monkeypatch, capsys, "jobs", "preview", "j", "--out", str(tmp_path / "grid.png"))
    assert code == 0, said
    assert not any(c in said for c in RAW), said
    escaped = printable(ATTACK)
    assert f"key{escaped}: released {escaped}={escaped}" in said  # sample key, attribute and released value
    assert f"flagged: sample{escaped}" in said
    assert "policy: 1 of 2 criteria met" in said
    assert f"missed  Attribute guessed {escaped} 20%" in said  # the server's summary, escaped
    assert "met     kept_utility skin_tone 0.9, 8 faces; limit at least 0.8" in said  # made here: no summary sent
    assert (tmp_path / "grid.png").exists()


def test_jobs_rounds_and_list_print_a_hostile_label_escaped(monkeypatch, capsys):
    for command in ("rounds", "list"):
        args = ("jobs", command, "j") if command == "rounds" else ("jobs", command)
        code, said = _run(monkeypatch, capsys, *args)
        assert code == 0, said
        assert "\\x1b]0;pwned\\x07\\x1b[31m" in said
        assert not any(c in said for c in RAW), said


def test_an_error_message_from_the_server_is_printed_escaped(monkeypatch, capsys):
    class Refusing(FakeJobs):
        def CancelProtectionJob(self, request, timeout=None):  # noqa: N802
            raise UmbraRpcError(grpc.StatusCode.NOT_FOUND, f"jobs/{self.label} is not a job of yours")

    monkeypatch.setattr(cli_jobs, "_stub", lambda: Refusing(ATTACK))
    code = cli.main(["jobs", "cancel", "j"])
    err = capsys.readouterr().err
    assert code == 1
    assert "NOT_FOUND: jobs/\\x1b]0;pwned" in err and not any(c in err for c in RAW), err
