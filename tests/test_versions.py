"""The torch / torchvision floor: every CLI and launcher refuses an older stack in one line."""

import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, child_env, output_id

from pycls.launch import versions

# Runs a tool (argv[1], or `-m module`) with torch's or torchvision's version faked (env
# FAKE_TORCH / FAKE_TV)
FAKE_RUNNER = """
import os, runpy, sys
import torch
import torchvision
torch.__version__ = os.environ.get("FAKE_TORCH", torch.__version__)
torchvision.__version__ = os.environ.get("FAKE_TV", torchvision.__version__)
sys.argv = sys.argv[1:]
if sys.argv[0] == "-m":
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_version_tuple():
    assert versions.version_tuple("2.3.1+cpu") == (2, 3, 1)
    assert versions.version_tuple("2.4.0a0+git1234") == (2, 4, 0)
    assert versions.version_tuple("0.18.0") >= versions.MIN_VERSIONS["torchvision"]
    assert versions.version_tuple("1.8.1") < versions.MIN_VERSIONS["torch"]
    assert versions.version_tuple("unknown") == ()


def test_installed_stack_passes():
    assert versions.check_versions() is None


def test_check_names_both_versions_and_the_fix(monkeypatch):
    found = {"torch": "1.8.1", "torchvision": "0.9.1"}
    monkeypatch.setattr(versions, "installed_version", found.get)
    msg = versions.check_versions()
    assert "torch 1.8.1" in msg and "torchvision 0.9.1" in msg
    assert "torch >= 2.3" in msg and "torchvision >= 0.18" in msg and "requirements.txt" in msg
    monkeypatch.setattr(versions, "installed_version", {"torch": "2.5.0"}.get)
    assert versions.check_versions() is None  # torchvision absent: its import error says so


@pytest.mark.parametrize(
    "tool,fake",
    [
        ("train_net", {"FAKE_TORCH": "2.0.1"}),
        ("test_net", {"FAKE_TV": "0.15.2"}),
        ("predict", {"FAKE_TORCH": "1.8.1", "FAKE_TV": "0.9.1"}),
    ],
)
def test_cli_refuses_an_old_stack_in_one_line(tmp_path, tool, fake):
    runner = tmp_path / "fake_versions.py"
    runner.write_text(FAKE_RUNNER)
    cfg = os.path.join(REPO, "configs", "demo", "EN-B3_digits_cpu.yaml")
    cmd = [sys.executable, str(runner), os.path.join(REPO, "tools", tool + ".py"), "--cfg", cfg]
    res = subprocess.run(cmd + ["x.jpg"] * (tool == "predict"), capture_output=True, text=True,
                         env=child_env(**fake), cwd=str(tmp_path))  # fmt: skip
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: this code needs torch >= 2.3"), lines
    for name, key in (("torch", "FAKE_TORCH"), ("torchvision", "FAKE_TV")):
        if key in fake:
            assert "{} {}".format(name, fake[key]) in lines[0]
    assert sorted(os.listdir(tmp_path)) == ["fake_versions.py"]


def test_launcher_refuses_an_old_stack_in_one_line(tmp_path):
    runner = tmp_path / "fake_versions.py"
    runner.write_text(FAKE_RUNNER)
    python = tmp_path / "python"
    python.write_text('#!/bin/sh\nexec "{}" "{}" "$@"\n'.format(sys.executable, runner))
    python.chmod(0o755)
    out_id = output_id(91)  # the launcher logs to test/output/<id>/, removed below
    env = child_env(FAKE_TORCH="1.8.1", PYTHON=str(python), ASCEND_DEVICE_ID=out_id)
    cmd = ["bash", os.path.join(REPO, "test", "train_full_1p.sh"), "--data_path=" + str(tmp_path)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path))
    finally:
        shutil.rmtree(os.path.join(REPO, "test", "output", out_id), ignore_errors=True)
    assert res.returncode == 2, res.stdout + res.stderr
    errors = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "torch 1.8.1" in errors[0] and "torchvision" in errors[0]
    assert "Traceback" not in res.stdout + res.stderr
