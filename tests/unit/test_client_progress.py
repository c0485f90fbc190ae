"""Progress off a terminal (a log file, a pipe): a line at most every few seconds and the final state; on a
terminal, tqdm's bar."""

import io
import subprocess
import sys

from umbra.client.progress import Progress, is_terminal


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_log_gets_a_line_every_few_seconds_and_the_final_state():
    out, clock = io.StringIO(), Clock()
    with Progress("matching features", total=1000, unit="images", file=out, interval=5.0, clock=clock) as progress:
        for done in range(1, 1001):  # 1,000 updates over 20 s
            clock.now = done * 0.02
            progress.show(done=done)
    lines = out.getvalue().splitlines()
    assert lines[0] == "matching features: 1/1000 images (0%)"  # the first at once
    assert lines[-1] == "matching features: 1000/1000 images (100%)"  # the final line on close
    assert len(lines) == 5  # at 0.02 s, about 5, 10 and 15 s, then the close at 20 s
    assert "\r" not in out.getvalue()


def test_a_log_repeats_no_unchanged_line_and_shows_stage_and_note():
    out, clock = io.StringIO(), Clock()
    progress = Progress(file=out, interval=5.0, clock=clock)
    for second in range(60):  # a minute of polls that change nothing
        clock.now = second
        progress.show(done=3, total=10, stage="training", unit="epochs", note="epsilon 1.2")
    clock.now = 61
    progress.show(done=10, stage="writing model", note="")
    progress.close()
    progress.close()  # closing twice writes nothing more
    assert out.getvalue().splitlines() == ["training: 3/10 epochs (30%) epsilon 1.2",
                                           "writing model: 10/10 epochs (100%)"]


def test_nothing_shown_writes_nothing():
    out = io.StringIO()
    Progress("idle", file=out).close()
    assert out.getvalue() == ""


def test_unknown_total_counts_without_a_percentage():
    out = io.StringIO()
    with Progress("uploading", file=out, unit="shards") as progress:
        progress.advance(2)
    assert out.getvalue().splitlines() == ["uploading: 2 shards"]


def test_a_terminal_gets_the_tqdm_bar():
    out = io.StringIO()
    with Progress("checking images", total=4, file=out, terminal=True) as progress:
        for done in range(1, 5):
            progress.show(done=done)
        progress.show(stage="writing shards", note="2 shards")
    text = out.getvalue()
    assert "\r" in text and "4/4" in text and "writing shards" in text


def test_is_terminal_for_files_and_pipes():
    assert not is_terminal(io.StringIO())
    closed = io.StringIO()
    closed.close()
    assert not is_terminal(closed)
    # a child whose stderr is a pipe draws plain lines, not a bar
    code = ("from umbra.client.progress import Progress\n"
            "with Progress('work', total=3) as p:\n"
            "    [p.show(done=i) for i in range(1, 4)]\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["work: 1/3 (33%)", "work: 3/3 (100%)"]
