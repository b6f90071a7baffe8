"""Tests of pycls.launch.cli: the one error line of a failed CLI and what torchrun records."""

import json
import signal
import subprocess
import sys
import types

import pytest
from conftest import child_env

from pycls.core.errors import PyclsError
from pycls.launch import cli


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    """Restores pytest's SIGINT/SIGTERM handlers, which run_cli replaces, after each test."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_lost_peer_is_one_line_and_recorded_for_torchrun(tmp_path, monkeypatch, capsys):
    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    monkeypatch.setenv("RANK", "3")
    text = "[/x/gloo/transport/tcp/pair.cc:545] Read error [::1]:5: Connection reset by peer. Bye"

    def lost():
        raise RuntimeError(text)

    # It leaves through os._exit (a process group's teardown can abort the exit): made a
    # SystemExit here, so that pytest lives on
    monkeypatch.setattr(cli.os, "_exit", lambda code: sys.exit(("os._exit", code)))
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(lost)
    assert exit_info.value.code == ("os._exit", 1)
    line = "error: rank 3 lost contact with another process of the job (Read error [::1]:5: "
    line += "Connection reset by peer); the job's first failure says why"
    assert capsys.readouterr().err == line + "\n"
    assert json.loads(error_file.read_text())["message"] == line
    with pytest.raises(RuntimeError, match="a bug"):  # other errors keep their traceback
        cli.run_cli(lambda: (_ for _ in ()).throw(RuntimeError("a bug")))


def test_an_error_line_is_one_write(monkeypatch):
    # Ranks failing together share one stderr pipe: each line must reach it in one write
    # (stderr is write-through, so print() would send the text and its newline apart)
    writes = []
    fake = types.SimpleNamespace(write=writes.append, flush=lambda: None)
    monkeypatch.setattr(sys, "stderr", fake)
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE", raising=False)
    with pytest.raises(SystemExit):
        cli.run_cli(lambda: (_ for _ in ()).throw(PyclsError("bad batch")))
    assert writes == ["error: bad batch\n"]


# A CLI that fails with its one line, then gets SIGTERM while the interpreter exits (as a rank
# does when torchrun stops it while it already ends on its own error)
LATE_SIGNAL_CLI = """
import atexit, os, signal, time
from pycls.core import errors
from pycls.launch.cli import run_cli

def late_stop():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)

def main():
    atexit.register(late_stop)
    raise errors.PyclsError("bad batch")

run_cli(main)
"""


def test_a_stop_signal_after_the_error_line_changes_nothing():
    cmd = [sys.executable, "-c", LATE_SIGNAL_CLI]
    result = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    assert (result.returncode, result.stderr) == (2, "error: bad batch\n")
