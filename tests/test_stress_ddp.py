"""benchmarks/stress_ddp.py: two-process train + eval jobs in a row, none failed or hung."""

import os
import subprocess
import sys

import pytest
from conftest import LAUNCH_VARS, REPO, output_id

# Jobs run in CI (the coordinator's closing run uses 40 or more)
RUNS = 3


@pytest.mark.slow
def test_two_process_train_and_eval_jobs_neither_fail_nor_hang(small_data, tmp_path):
    script = os.path.join(REPO, "benchmarks", "stress_ddp.py")
    # --limit is the hard limit past which a launcher counts as hung, not a speed figure
    args = ["--runs", RUNS, "--epochs", 1, "--limit", 900, "--data_path", small_data]
    args += ["--work", tmp_path, "--output_id", output_id(92)]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    cmd = [sys.executable, script] + [str(a) for a in args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    summary = "finished {0} failed 0 hung 0 of {0}".format(RUNS)
    assert res.returncode == 0 and summary in res.stdout, res.stdout + res.stderr[-2000:]
