"""The seed's launchers in test/: arguments, multi-process runs over gloo, the Final result."""

import os
import re
import shutil
import subprocess

import pytest
from conftest import REPO, json_stats, output_id

TEST_DIR = os.path.join(REPO, "test")
# A launcher output id of our own, removed afterwards (the launchers write test/output/<id>/)
OUTPUT_ID = output_id(97)
# The output id of the rerun test (its logs are counted)
RERUN_ID = output_id(971)


@pytest.fixture(scope="module", autouse=True)
def clean_output():
    """Removes what the launchers wrote under test/output/<OUTPUT_ID> (and RERUN_ID)."""
    yield
    for folder_id in (OUTPUT_ID, RERUN_ID):
        shutil.rmtree(os.path.join(TEST_DIR, "output", folder_id), ignore_errors=True)


def launch(script, *args, rank_size=None, cwd=REPO, output_id=OUTPUT_ID):
    """Runs bash test/<script>.sh with args; returns the CompletedProcess."""
    env = dict(os.environ, ASCEND_DEVICE_ID=output_id)
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
def run_8p(small_data, tiny_cfg):
    """The 8p launcher with RANK_SIZE=2: two gloo processes for one epoch."""
    args = ["--data_path=" + small_data, "--device=cpu", "--cfg=" + tiny_cfg, "OPTIM.MAX_EPOCH", 1]
    return launch("train_full_8p", *args, rank_size=2)


@pytest.mark.slow
def test_8p_launcher_runs_two_processes_to_the_end(run_8p):
    assert run_8p.returncode == 0, run_8p.stdout[-1500:] + run_8p.stderr[-1500:]
    result = final_result(run_8p.stdout)
    assert float(result["Final Performance images/sec"]) > 0
    assert 0 < float(result["Final Train Accuracy"]) <= 100
    assert 0 < float(result["Test Accuracy top1"]) <= 100
    log_path = os.path.join(TEST_DIR, "output", OUTPUT_ID, "train_full_8p.log")
    with open(log_path) as f:
        log = f.read()
    assert "world size 2" in log and "Final result" in log
    assert [s["epoch"] for s in json_stats(log, "train_epoch")] == ["1/1"]


@pytest.mark.slow
def test_eval_launcher_evaluates_the_checkpoint(run_8p, small_data, tiny_cfg):
    out_dir = os.path.join(TEST_DIR, "output", OUTPUT_ID, "train_full_8p", "tiny_en")
    weights = os.path.join(out_dir, "checkpoints", "model_epoch_0001.pyth")
    args = [
        "--data_path=" + small_data,
        "--device=cpu",
        "--cfg=" + tiny_cfg,
        "--pth_path=" + weights,
    ]
    res = launch("train_eval_8p", *args, rank_size=2)
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-1500:]
    trained = json_stats(run_8p.stdout, "test_epoch")[-1]
    assert json_stats(res.stdout, "test_epoch")[-1]["top1_err"] == trained["top1_err"]


@pytest.mark.slow
def test_1p_launcher_from_test_dir_with_spaces_in_paths(small_data, tiny_cfg, tmp_path):
    data = tmp_path / "my data $(touch pwned)"
    shutil.copytree(small_data, data)
    args = ["--data_path=" + str(data), "--device=cpu", "--cfg=" + tiny_cfg, "OPTIM.MAX_EPOCH", 1]
    res = launch("train_full_1p", *args, cwd=TEST_DIR)
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-1500:]
    assert "Final Performance images/sec" in res.stdout
    assert not os.path.exists(os.path.join(TEST_DIR, "pwned"))


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


def launcher_run(small_data, tiny_cfg, out_dir, *extra, script="train_full_1p", data=None):
    """Runs a launcher on the tiny model into out_dir (a KEY VALUE override)."""
    args = ["--data_path=" + (data or small_data), "--device=cpu", "--cfg=" + tiny_cfg]
    return launch(script, *args, "OUT_DIR", out_dir, *extra, output_id=RERUN_ID)


def out_path(*names):
    """Returns a path under test/output/<RERUN_ID>."""
    return os.path.join(TEST_DIR, "output", RERUN_ID, *names)


def files_state(folder):
    """Returns {relative path: mtime_ns} of the files under a folder (a run's lock left out)."""
    state = {}
    for root, _, names in os.walk(folder):
        for name in (n for n in names if "lock" not in n.lower()):
            path = os.path.join(root, name)
            state[os.path.relpath(path, folder)] = os.stat(path).st_mtime_ns
    return state


@pytest.mark.slow
def test_rerun_of_a_finished_launcher_run(small_data, tiny_cfg, tmp_path):
    out_dir = str(tmp_path / "run")
    first = launcher_run(small_data, tiny_cfg, out_dir, "OPTIM.MAX_EPOCH", 1)
    assert first.returncode == 0, first.stdout[-1500:] + first.stderr[-1500:]
    first_result = final_result(first.stdout)
    # The ModelZoo summary: key = value lines, and one train loss per epoch
    with open(out_path("EfficientNet-B3_bs64_1p_acc.log")) as f:
        summary = dict(ln.strip().split(" = ", 1) for ln in f)
    assert summary["CaseName"] == "EfficientNet-B3_bs64_1p_acc" and summary["RankSize"] == "1"
    assert summary["TrainAccuracy"] == first_result["Final Train Accuracy"]
    with open(out_path("train_EfficientNet-B3_bs64_1p_acc_loss.txt")) as f:
        losses = f.read().split()
    assert losses == ["%.4f" % json_stats(first.stdout, "train_epoch")[0]["loss"]]
    before = files_state(out_dir)
    # Rerun: success, the same block, nothing in OUT_DIR rewritten, the first log kept
    again = launcher_run(small_data, tiny_cfg, out_dir, "OPTIM.MAX_EPOCH", 1)
    assert again.returncode == 0, again.stdout[-1500:] + again.stderr[-1500:]
    assert "are done, nothing to train" in again.stdout
    assert final_result(again.stdout) == first_result
    assert files_state(out_dir) == before
    with open(out_path("train_full_1p.log.1")) as f:
        assert json_stats(f.read(), "train_epoch")  # the first run's log, kept
    # A rerun with a wrong data path stops on the data before reading a checkpoint
    bad = launcher_run(small_data, tiny_cfg, out_dir, data=str(tmp_path / "nowhere"))
    assert bad.returncode == 2
    assert bad.stdout.strip().splitlines()[-1].startswith("error: data path ")
    assert "Resumed from" not in bad.stdout and files_state(out_dir) == before
    assert os.path.isfile(out_path("train_full_1p.log.2"))
    # The eval launcher takes the run's checkpoints folder as --pth_path
    args = ["--data_path=" + small_data, "--device=cpu", "--cfg=" + tiny_cfg]
    args += ["--pth_path=" + os.path.join(out_dir, "checkpoints")]
    eval_dir = str(tmp_path / "eval")
    res = launch("train_eval_8p", *args, "OUT_DIR", eval_dir, rank_size=1, output_id=RERUN_ID)
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-1500:]
    assert os.path.join(out_dir, "checkpoints", "model_best.pyth") in res.stdout
    result = final_result(res.stdout)
    assert result["Final Train Accuracy"] == first_result["Test Accuracy top1"]


@pytest.mark.slow
def test_two_launcher_jobs_at_once_keep_their_own_logs(small_data, tiny_cfg, tmp_path):
    # Two jobs of one case at once: each log holds one run, each block reads its own stats
    script = os.path.join(TEST_DIR, "train_full_1p.sh")
    env = dict(os.environ, ASCEND_DEVICE_ID=OUTPUT_ID + "2")
    jobs = []
    for epochs in (1, 2):
        args = ["--data_path=" + small_data, "--device=cpu", "--cfg=" + tiny_cfg]
        args += ["OUT_DIR", str(tmp_path / str(epochs)), "OPTIM.MAX_EPOCH", str(epochs)]
        cmd = ["bash", script] + args
        jobs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    outputs = [job.communicate(timeout=600)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], [o[-1500:] for o in outputs]
    folder = os.path.join(TEST_DIR, "output", OUTPUT_ID + "2")
    try:
        logs = sorted(n for n in os.listdir(folder) if n.startswith("train_full_1p.log"))
        assert logs == ["train_full_1p.log", "train_full_1p.log.1"]
        epochs_per_log = []
        for name in logs:
            with open(os.path.join(folder, name)) as f:
                text = f.read()
            assert text.count("Final result") == 1
            epochs_per_log.append([s["epoch"] for s in json_stats(text, "train_epoch")])
        assert sorted(epochs_per_log) == [["1/1"], ["1/2", "2/2"]]
        for epochs, out in zip((1, 2), outputs):
            train = json_stats(out, "train_epoch")
            assert len(train) == epochs
            accuracy = float(final_result(out)["Final Train Accuracy"])
            assert accuracy == pytest.approx(100 - train[-1]["top1_err"], abs=1e-3)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
