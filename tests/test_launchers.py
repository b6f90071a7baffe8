"""The seed's launchers in test/: arguments, multi-process runs over gloo, the Final result."""

import os
import re
import shutil
import subprocess

import pytest
from conftest import REPO, json_stats

TEST_DIR = os.path.join(REPO, "test")
# A launcher output id of our own, removed afterwards (the launchers write test/output/<id>/)
OUTPUT_ID = "97"


@pytest.fixture(scope="module", autouse=True)
def clean_output():
    """Removes what the launchers wrote under test/output/<OUTPUT_ID>."""
    yield
    shutil.rmtree(os.path.join(TEST_DIR, "output", OUTPUT_ID), ignore_errors=True)


def launch(script, *args, rank_size=None, cwd=REPO):
    """Runs bash test/<script>.sh with args; returns the CompletedProcess."""
    env = dict(os.environ, ASCEND_DEVICE_ID=OUTPUT_ID)
    if rank_size:
        env["RANK_SIZE"] = str(rank_size)
    cmd = ["bash", os.path.join(TEST_DIR, script + ".sh")] + [str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)


def final_result(stdout):
    """Parses the Final result block into a dict."""
    block = stdout.split("Final result", 1)[1]
    pairs = [ln.rsplit(" : ", 1) for ln in block.splitlines() if " : " in ln]
    return {k.strip(): v.strip() for k, v in pairs}


@pytest.fixture(scope="module")
def run_8p(demo_data, tiny_cfg):
    """The 8p launcher with RANK_SIZE=2: two gloo processes for one epoch."""
    args = ["--data_path=" + demo_data, "--device=cpu", "--cfg=" + tiny_cfg, "OPTIM.MAX_EPOCH", 1]
    return launch("train_full_8p", *args, rank_size=2)


@pytest.mark.slow
def test_8p_launcher_runs_two_processes_to_the_end(run_8p):
    assert run_8p.returncode == 0, run_8p.stdout[-1500:] + run_8p.stderr[-1500:]
    result = final_result(run_8p.stdout)
    assert float(result["Final Performance images/sec"]) > 0
    assert 0 < float(result["Final Train Accuracy (top1)"]) <= 100
    log_path = os.path.join(TEST_DIR, "output", OUTPUT_ID, "train_full_8p.log")
    with open(log_path) as f:
        log = f.read()
    assert "world size 2" in log and "Final result" in log
    assert [s["epoch"] for s in json_stats(log, "train_epoch")] == ["1/1"]


@pytest.mark.slow
def test_eval_launcher_evaluates_the_checkpoint(run_8p, demo_data, tiny_cfg):
    out_dir = os.path.join(TEST_DIR, "output", OUTPUT_ID, "train_full_8p", "tiny_en")
    weights = os.path.join(out_dir, "checkpoints", "model_epoch_0001.pyth")
    args = [
        "--data_path=" + demo_data,
        "--device=cpu",
        "--cfg=" + tiny_cfg,
        "--pth_path=" + weights,
    ]
    res = launch("train_eval_8p", *args, rank_size=2)
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-1500:]
    trained = json_stats(run_8p.stdout, "test_epoch")[-1]
    assert json_stats(res.stdout, "test_epoch")[-1]["top1_err"] == trained["top1_err"]


@pytest.mark.slow
def test_1p_launcher_from_test_dir_with_spaces_in_paths(demo_data, tiny_cfg, tmp_path):
    data = tmp_path / "my data $(touch pwned)"
    shutil.copytree(demo_data, data)
    args = ["--data_path=" + str(data), "--device=cpu", "--cfg=" + tiny_cfg, "OPTIM.MAX_EPOCH", 1]
    res = launch("train_full_1p", *args, cwd=TEST_DIR)
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-1500:]
    assert "Final Performance images/sec" in res.stdout
    assert not os.path.exists(os.path.join(TEST_DIR, "pwned"))


@pytest.mark.parametrize(
    "script,args,message",
    [
        ("train_full_1p", [], "--data_path=DIR is required"),
        ("train_full_8p", ["--data_dir=/x"], "unknown option --data_dir=/x"),
        ("train_eval_8p", ["--data_path=/x"], "--pth_path=FILE is required"),
    ],
)
def test_launcher_argument_errors(script, args, message):
    res = launch(script, *args)
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: " + message) and "Traceback" not in res.stderr


def test_env_npu_is_harmless_without_cann():
    res = subprocess.run(
        ["bash", "-c", "source test/env_npu.sh && echo ok $TASK_QUEUE_ENABLE"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert res.returncode == 0 and res.stdout.strip() == "ok 1"


def test_readme_quick_start_is_the_tested_commands():
    # Exactly two commands in the quick start's code block: the script tested below and the
    # test command that .ci/run calls
    with open(os.path.join(REPO, "README.md")) as f:
        section = f.read().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```")
    assert len(blocks) == 3, "one code block in the quick start"
    commands = [ln.strip() for ln in blocks[1].splitlines()[1:] if ln.strip()]
    assert commands == ["bash tools/quickstart.sh", ".venv/bin/python -m pytest -q"]
    with open(os.path.join(REPO, ".ci", "run")) as f:
        ci_lines = [ln.strip() for ln in f]
    assert "bash tools/install.sh" in ci_lines and commands[1] in ci_lines


@pytest.mark.parametrize("free_mb, message", [
    (500, r"only 500 MB free on the disk of .*: free space, then rerun bash tools/install.sh"),
    (90000, r"pip could not install the requirements into .*/\.venv"),
])  # fmt: skip
def test_install_failure_names_its_cause(tmp_path, free_mb, message):
    # install.sh in a copy of the repo whose venv python fails as pip does, beside a stand-in df
    repo = tmp_path / "repo"
    (repo / "tools").mkdir(parents=True)
    shutil.copy(os.path.join(REPO, "tools", "install.sh"), repo / "tools")
    fakes = {
        repo
        / ".venv"
        / "bin"
        / "python": "echo 'ERROR: [Errno 28] No space left on device' >&2; exit 1",
        tmp_path
        / "bin"
        / "df": f"echo 'Filesystem 1M-blocks Used Available'; echo 'vda 9 9 {free_mb}'",
    }
    for path, body in fakes.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    res = subprocess.run(
        ["bash", str(repo / "tools" / "install.sh")], capture_output=True, text=True, env=env
    )
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(message, last), res.stderr


@pytest.mark.slow
def test_quickstart_at_reduced_size():
    # The README's first command, through the same script: 1 epoch at 16px
    env = dict(os.environ, ASCEND_DEVICE_ID=OUTPUT_ID)
    cmd = ["bash", os.path.join(REPO, "tools", "quickstart.sh")]
    cmd += ["OPTIM.MAX_EPOCH", "1", "TRAIN.IM_SIZE", "16", "TEST.IM_SIZE", "16"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-1500:]
    result = final_result(res.stdout)
    assert result["Case"] == "train_full_1p"
    assert float(result["Final Performance images/sec"]) > 0
    assert os.path.isdir(os.path.join(REPO, "output", "demo_data", "val"))
