"""Tests of pycls.core.errors: the one error line of a failed CLI and what torchrun records."""

import json
import sys
import types

import pytest

from pycls.core import errors


def test_lost_peer_is_one_line_and_recorded_for_torchrun(tmp_path, monkeypatch, capsys):
    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    monkeypatch.setenv("RANK", "3")
    text = "[/x/gloo/transport/tcp/pair.cc:545] Read error [::1]:5: Connection reset by peer. Bye"

    def lost():
        raise RuntimeError(text)

    with pytest.raises(SystemExit) as exit_info:
        errors.run_cli(lost)
    assert exit_info.value.code == 1
    line = "error: rank 3 lost contact with another process of the job (Read error [::1]:5: "
    line += "Connection reset by peer); the job's first failure says why"
    assert capsys.readouterr().err == line + "\n"
    assert json.loads(error_file.read_text())["message"] == line
    with pytest.raises(RuntimeError, match="a bug"):  # other errors keep their traceback
        errors.run_cli(lambda: (_ for _ in ()).throw(RuntimeError("a bug")))


def test_an_error_line_is_one_write(monkeypatch):
    # Ranks failing together share one stderr pipe: each line must reach it in one write
    # (stderr is write-through, so print() would send the text and its newline apart)
    writes = []
    fake = types.SimpleNamespace(write=writes.append, flush=lambda: None)
    monkeypatch.setattr(sys, "stderr", fake)
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE", raising=False)
    with pytest.raises(SystemExit):
        errors.run_cli(lambda: (_ for _ in ()).throw(errors.PyclsError("bad batch")))
    assert writes == ["error: bad batch\n"]
