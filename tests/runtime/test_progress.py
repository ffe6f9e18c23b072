"""runtime.progress: a bar on a terminal, plain periodic lines in a log, nothing under TQDM_DISABLE."""
from __future__ import annotations

import io

from runtime.progress import LogProgress, progress


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_log_lines_are_periodic_plain_and_final():
    out, clock = io.StringIO(), Clock()
    p = LogProgress(10, "teacher train", stream=out, every_s=30.0, clock=clock)
    for i in range(10):
        clock.t += 10.0  # one step per 10 s: a line every third step
        p.set_postfix(loss=f"{1.0 / (i + 1):.2f}")
        p.update(1)
    p.close()
    p.close()  # closing twice writes once
    lines = out.getvalue().splitlines()
    assert lines == ["teacher train: 3/10 it (0.1 it/s) loss=0.33", "teacher train: 6/10 it (0.1 it/s) loss=0.17",
                     "teacher train: 9/10 it (0.1 it/s) loss=0.11", "teacher train: 10/10 it (0.1 it/s) loss=0.10"]
    assert "\r" not in out.getvalue()


def test_a_log_gets_lines_a_terminal_gets_a_bar_and_disable_silences(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert isinstance(progress(5, "x", stream=io.StringIO()), LogProgress)
    bar = progress(5, "x", stream=Tty())
    assert not isinstance(bar, LogProgress)
    bar.close()
    monkeypatch.setenv("TQDM_DISABLE", "1")
    quiet = progress(5, "x", stream=io.StringIO())
    quiet.update(5)
    quiet.close()
    assert quiet.stream is None


def test_command_log_writes_prefixed_lines_to_stderr_only(capsys):
    from runtime.progress import command_log

    command_log("distill fit")("step 1")
    command_log()("plain")
    out = capsys.readouterr()
    assert out.err == "[distill fit] step 1\nplain\n" and out.out == ""
