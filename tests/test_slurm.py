"""SLURM: node facts read from the environment set by hand, a stand-in scontrol on PATH, the
node-list parser without scontrol, the 8p/1p launchers passing the values to torchrun (a
stand-in Python stops them there), the sbatch example (a stand-in srun) and core binding."""

import os
import shutil
import stat
import subprocess
import sys

import pytest
from conftest import REPO, output_id

from pycls.core.errors import PyclsError
from pycls.launch import slurm

# A two-node job's batch script (the job's variables only)
BATCH = {
    "SLURM_JOB_ID": "123456",
    "SLURM_NNODES": "2",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NODEID": "0",
    "SLURM_JOB_NODELIST": "node[07-08]",
    "SLURM_GPUS_ON_NODE": "4",
}

# The task on the second node of `srun --ntasks-per-node=1` in that job
STEP = dict(
    BATCH,
    SLURM_NODEID="1",
    SLURM_STEP_NUM_NODES="2",
    SLURM_STEP_NUM_TASKS="2",
    SLURM_STEP_NODELIST="node[07-08]",
)

# Launcher output of these tests goes under test/output/<this id>/ (removed after)
DEVICE_ID = output_id(94)


def values(facts):
    """Returns {name: value} of launch facts."""
    return {name: fact.value for name, fact in facts.items()}


@pytest.fixture(autouse=True)
def no_scontrol(monkeypatch, tmp_path):
    """Runs each test with a PATH that holds no scontrol (a test may put a stand-in first)."""
    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp_path / "bin"), "/usr/bin", "/bin"]))


def stand_in(tmp_path, name, script):
    """Puts an executable command name (scontrol, srun) with a shell body first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
        ("a1,b[2-3]", ["a1", "b2", "b3"]),
        ("gpu-[1-2]-x", ["gpu-1-x", "gpu-2-x"]),
        ("n[8-11]", ["n8", "n9", "n10", "n11"]),
        ("n[098-100]", ["n098", "n099", "n100"]),
        ("r[1-2]-n[1-2]", ["r1-n1", "r1-n2", "r2-n1", "r2-n2"]),
        ("host.example.com", ["host.example.com"]),
        ("c[5],d_1", ["c5", "d_1"]),
    ],
)
def test_expand_nodelist(nodelist, hosts):
    assert slurm.expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize(
    "nodelist, why",
    [
        ("n[1-2", "brackets do not pair up"),
        ("n[1-2]]", "brackets do not pair up"),
        ("n[[1-2]]", "brackets do not pair up"),
        ("n[3-1]", "range 3-1 runs backwards"),
        ("n[a-b]", r"\[a-b\] is not a list of numbers and ranges"),
        ("n[]", r"\[\] is not a list"),
        ("n1,,n2", "empty entry"),
        ("n 1", "it holds ' '"),
        ("n[1-99999999]", "more than 65536 hosts"),
    ],
)
def test_expand_nodelist_rejects(nodelist, why):
    with pytest.raises(PyclsError, match="cannot read the SLURM node list .*" + why) as e:
        slurm.expand_nodelist(nodelist)
    fix = "put scontrol on PATH or set MASTER_ADDR to the first node's address"
    assert str(e.value).endswith(fix)


def test_outside_slurm_nothing_changes():
    facts = slurm.launch_facts({}, 8)
    assert values(facts) == {
        "NNODES": 1,
        "NODE_RANK": 0,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": 29500,
        "nproc": 8,
    }
    # SLURM_* without SLURM_JOB_ID is not a SLURM job
    env = {k: v for k, v in STEP.items() if k != "SLURM_JOB_ID"}
    assert values(slurm.launch_facts(env, 8)) == values(facts)


def test_slurm_step_gives_every_value():
    facts = slurm.launch_facts(STEP, 8)
    assert values(facts) == {
        "NNODES": 2,
        "NODE_RANK": 1,
        "MASTER_ADDR": "node07",
        "MASTER_PORT": 20000 + 123456 % 10000,
        "nproc": 4,
    }
    line = slurm.sources_line(STEP, facts)
    assert line == (
        "SLURM job 123456: NNODES=2 (SLURM_STEP_NUM_NODES), NODE_RANK=1 (SLURM_NODEID), "
        "MASTER_ADDR=node07 (first host of SLURM_STEP_NODELIST, parsed), "
        "MASTER_PORT=23456 (20000 + SLURM_JOB_ID % 10000), processes per node=4 "
        "(SLURM_GPUS_ON_NODE)"
    )


def test_explicit_values_win():
    env = dict(STEP, NNODES="3", NODE_RANK="2", MASTER_ADDR="10.0.0.9", MASTER_PORT="31000")
    facts = slurm.launch_facts(dict(env, RANK_SIZE="2"), 8)
    assert values(facts) == {
        "NNODES": 3,
        "NODE_RANK": 2,
        "MASTER_ADDR": "10.0.0.9",
        "MASTER_PORT": 31000,
        "nproc": 2,
    }
    assert all(fact.source.endswith(" set") for fact in facts.values())


def test_step_values_before_job_values():
    env = dict(STEP, SLURM_STEP_NUM_NODES="1", SLURM_STEP_NODELIST="node08", SLURM_NODEID="0")
    env.update(SLURM_STEP_NUM_TASKS="1")
    facts = slurm.launch_facts(env, 8)
    # a one-node step: rank 0 on 127.0.0.1, as outside SLURM
    assert values(facts)["NNODES"] == 1 and facts["NNODES"].source == "SLURM_STEP_NUM_NODES"
    assert values(facts)["MASTER_ADDR"] == "127.0.0.1"
    env.update(SLURM_STEP_NUM_NODES="2", SLURM_STEP_NODELIST="node[08-09]")
    assert values(slurm.launch_facts(env, 8))["MASTER_ADDR"] == "node08"


def test_one_node_job_needs_no_nodeid():
    env = {"SLURM_JOB_ID": "7", "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "solo"}
    assert values(slurm.launch_facts(env, 8))["NODE_RANK"] == 0


@pytest.mark.parametrize(
    "devices, nproc",
    [
        ({"SLURM_GPUS_ON_NODE": "8"}, 8),
        ({"SLURM_GPUS_ON_NODE": "0", "SLURM_GPUS_PER_NODE": "a100:4"}, 4),
        ({"SLURM_GPUS_PER_NODE": "2"}, 2),
        ({"SLURM_TRES_PER_NODE": "gres/npu:8"}, 8),
        ({"SLURM_TRES_PER_NODE": "gres/shard:2,gres/npu:910b:6"}, 6),
        ({"SLURM_GRES": "npu:4"}, 4),
        ({"SLURM_GRES": "bandwidth:lustre:4G"}, 8),
        ({}, 8),
    ],
)
def test_procs_per_node_from_devices(devices, nproc):
    env = {"SLURM_JOB_ID": "1", **devices}
    assert slurm.procs_per_node(env, 8).value == nproc


@pytest.mark.parametrize(
    "changes, error",
    [
        ({"SLURM_NODEID": None}, "SLURM_NODEID is not set: this launcher runs in a 2-node"),
        ({"SLURM_NODEID": "2"}, r"SLURM_NODEID='2' is not 0\.\.1; start one launcher per node"),
        ({"SLURM_STEP_NUM_NODES": "two"}, "SLURM_STEP_NUM_NODES='two' is not an integer >= 1"),
        ({"NNODES": "2x"}, "NNODES='2x' is not an integer >= 1; set NNODES to the number"),
        ({"NODE_RANK": "-1"}, r"NODE_RANK='-1' is not 0\.\.1; set NODE_RANK to this node's rank"),
        ({"NNODES": "2", "NODE_RANK": "2"}, r"NODE_RANK='2' is not 0\.\.1"),
        ({"RANK_SIZE": "0"}, "RANK_SIZE='0' is not an integer >= 1"),
        ({"MASTER_PORT": "70000"}, r"MASTER_PORT='70000' is not 1\.\.65535"),
        ({"MASTER_PORT": "0"}, r"MASTER_PORT='0' is not 1\.\.65535; set MASTER_PORT to a free"),
        ({"MASTER_PORT": "auto"}, r"MASTER_PORT='auto' is not 1\.\.65535"),
        ({"RANK_SIZE": "two"}, "RANK_SIZE='two' is not an integer >= 1; set RANK_SIZE to the"),
        ({"NNODES": "0"}, "NNODES='0' is not an integer >= 1"),
        ({"ASCEND_DEVICE_ID": "first"}, "ASCEND_DEVICE_ID='first' is not an integer >= 0; set it"),
        (
            {"MASTER_ADDR": "no-such-host.invalid"},
            r"MASTER_ADDR='no-such-host\.invalid' does not resolve \(.+\); set MASTER_ADDR to node "
            r"0's host name or IP address \(127\.0\.0\.1 on one machine\)$",
        ),
        ({"SLURM_STEP_NODELIST": "n[07-08"}, "cannot read the SLURM node list 'n\\[07-08'"),
        (
            {"SLURM_STEP_NODELIST": None, "SLURM_JOB_NODELIST": None},
            "none of SLURM_STEP_NODELIST, .* is set; set MASTER_ADDR",
        ),
        (
            {"SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NUM_NODES": "2"},
            "srun started 4 launchers on 2 nodes .*use srun --ntasks-per-node=1",
        ),
    ],
)
def test_bad_values_name_the_variable_and_fix(changes, error):
    env = dict(STEP, **{k: v for k, v in changes.items() if v is not None})
    for name in [k for k, v in changes.items() if v is None]:
        del env[name]
    with pytest.raises(PyclsError, match=error):
        slurm.launch_facts(env, 8)


def test_master_addr_must_resolve_only_where_torchrun_uses_it(capsys):
    env = {"MASTER_ADDR": "no-such-host.invalid", "RANK_SIZE": "1"}
    assert values(slurm.launch_facts(env, 1))["MASTER_ADDR"] == "no-such-host.invalid"  # 1p
    with pytest.raises(PyclsError, match="does not resolve"):
        slurm.launch_facts(dict(env, RANK_SIZE="2"), 1)
    assert values(slurm.launch_facts(dict(env, MASTER_ADDR="10.0.0.9", RANK_SIZE="2"), 1))
    # a bad RANK_SIZE reaches --nproc too (the 8p launchers pass it): still its one line
    assert slurm.main(["--nproc", "x"], env={"RANK_SIZE": "x"}) == 2
    assert capsys.readouterr() == (
        "",
        "error: RANK_SIZE='x' is not an integer >= 1; set "
        "RANK_SIZE to the number of processes (devices) per node\n",
    )


def test_a_multi_node_job_outside_srun_is_refused():
    # the batch script itself: only node 0 would start, and wait for the others
    error = "SLURM_STEP_NUM_NODES is not set: this launcher runs in a 2-node SLURM job "
    error += r"\(SLURM_NNODES\) but not in an srun step; start one launcher per node with srun"
    with pytest.raises(PyclsError, match=error):
        slurm.launch_facts(BATCH, 8)
    # unless the user places the node: explicit values win
    facts = slurm.launch_facts(dict(BATCH, NODE_RANK="0"), 8)
    assert values(facts)["NODE_RANK"] == 0 and values(facts)["MASTER_ADDR"] == "node07"


def test_bad_explicit_values_are_checked_outside_slurm():
    error = r"NODE_RANK='1' is not 0\.\.0; set NNODES to the number of nodes and NODE_RANK"
    with pytest.raises(PyclsError, match=error):
        slurm.launch_facts({"NODE_RANK": "1"}, 8)


def test_scontrol_expands_the_nodelist(tmp_path):
    calls = tmp_path / "calls"
    stand_in(tmp_path, "scontrol", 'echo "$@" >> {}\necho alpha\necho beta\n'.format(calls))
    env = dict(STEP, SLURM_STEP_NODELIST="weird{alpha,beta}")  # only scontrol can read it
    facts = slurm.launch_facts(env, 8)
    assert facts["MASTER_ADDR"].value == "alpha"
    assert facts["MASTER_ADDR"].source == "first host of SLURM_STEP_NODELIST, scontrol"
    assert calls.read_text() == "show hostnames weird{alpha,beta}\n"


def test_failing_scontrol_falls_back_to_the_parser(tmp_path):
    stand_in(tmp_path, "scontrol", "echo 'slurm_load_ctl_conf error' >&2\nexit 1\n")
    facts = slurm.launch_facts(STEP, 8)
    assert facts["MASTER_ADDR"].value == "node07"
    assert facts["MASTER_ADDR"].source.endswith(", parsed")


def test_cli_prints_assignments_and_the_sources_line(capsys):
    assert slurm.main(["--nproc", "8"], env=dict(STEP)) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[:-1] == [
        "export NNODES=2",
        "export NODE_RANK=1",
        "export MASTER_ADDR=node07",
        "export MASTER_PORT=23456",
        "nproc=4",
    ]
    assert lines[-1].startswith("NODE_SOURCES='SLURM job 123456: NNODES=2 (SLURM_STEP_NUM_NODES)")
    assert err == ""


def test_cli_bad_value_is_one_line_and_exit_2(capsys):
    env = dict(STEP, SLURM_NODEID="5")
    assert slurm.main(["--nproc", "8"], env=env) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("error: SLURM_NODEID='5'")


def test_cli_outside_slurm_prints_the_checked_node_facts_only(capsys):
    assert slurm.main(["--nproc", "8"], env={"NNODES": "2", "NODE_RANK": "01"}) == 0
    assert capsys.readouterr() == ("export NNODES=2\nexport NODE_RANK=1\nNODE_SOURCES=''\n", "")
    assert slurm.main(["--nproc", "8"], env={}) == 0
    assert capsys.readouterr() == ("export NNODES=1\nexport NODE_RANK=0\nNODE_SOURCES=''\n", "")


def test_cli_ignore_slurm_reads_no_slurm_variable(capsys):
    assert slurm.main(["--nproc", "1", "--ignore-slurm"], env=dict(STEP)) == 0
    assert capsys.readouterr() == ("export NNODES=1\nexport NODE_RANK=0\nNODE_SOURCES=''\n", "")
    env = dict(STEP, NODE_RANK="3", NNODES="2")
    assert slurm.main(["--nproc", "1", "--ignore-slurm"], env=env) == 2
    assert capsys.readouterr().err.startswith("error: NODE_RANK='3' is not 0..1")


# --------------------------- the launchers, stopped before torchrun --------------------------- #

# A stand-in Python for the launchers: runs pycls.launch.slurm for real, records any other command
# line (the torchrun / train_net one and the final-result one) and succeeds without running it
FAKE_PYTHON = """#!/bin/sh
if [ "$1" = -m ] && [ "$2" = pycls.launch.slurm ]; then exec {python} "$@"; fi
echo "$@" >> {calls}
"""


def run_launcher(tmp_path, script, env):
    """Runs bash test/<script> with the stand-in Python; returns (result, recorded commands)."""
    calls = tmp_path / "calls"
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable, calls=calls))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    full_env = {k: v for k, v in os.environ.items() if k not in slurm.EXPLICIT_VARS}
    full_env = {k: v for k, v in full_env.items() if not k.startswith("SLURM_")}
    full_env.update(env, PYTHON=str(fake), ASCEND_DEVICE_ID=DEVICE_ID)
    argv = ["bash", os.path.join(REPO, "test", script), "--data_path=" + str(tmp_path)]
    result = subprocess.run(
        argv + ["--device=cpu"],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    recorded = calls.read_text().splitlines() if calls.exists() else []
    return result, recorded


@pytest.fixture
def launcher_output():
    """Yields test/output/DEVICE_ID and removes it after a launcher test (unless it was there)."""
    output = os.path.join(REPO, "test", "output", DEVICE_ID)
    existed = os.path.exists(output)
    yield output
    if not existed:
        subprocess.run(["rm", "-rf", output], check=False)


def test_8p_launcher_passes_slurm_values_to_torchrun(tmp_path, launcher_output):
    stand_in(tmp_path, "scontrol", "echo n-a\necho n-b\n")
    result, recorded = run_launcher(tmp_path, "train_full_8p.sh", STEP)
    assert result.returncode == 0, result.stderr
    torchrun = recorded[0].split()
    assert torchrun[:2] == ["-m", "pycls.launch.ranks"]
    for arg in (
        "--nproc_per_node=4",
        "--nnodes=2",
        "--node_rank=1",
        "--master_addr=n-a",
        "--master_port=23456",
    ):
        assert arg in torchrun, recorded[0]
    assert torchrun[-2:] == ["NUM_GPUS", "8"]
    source = "SLURM job 123456: NNODES=2 (SLURM_STEP_NUM_NODES), NODE_RANK=1 (SLURM_NODEID), "
    source += "MASTER_ADDR=n-a (first host of SLURM_STEP_NODELIST, scontrol)"
    assert source in result.stderr
    # SLURM made this node 1, whose log is its own (named before the log is opened)
    with open(os.path.join(launcher_output, "train_full_8p.node1.log")) as f:
        assert source in f.read()
    assert not os.path.exists(os.path.join(launcher_output, "train_full_8p.log"))


def test_8p_launcher_explicit_values_win(tmp_path, launcher_output):
    env = dict(STEP, NNODES="1", MASTER_PORT="31001", RANK_SIZE="1")
    result, recorded = run_launcher(tmp_path, "train_full_8p.sh", env)
    assert result.returncode == 0, result.stderr
    # one node and one process: the launcher runs the tool itself, on no torchrun port
    assert recorded[0].split()[0].endswith("train_net.py")
    assert "NNODES=1 (NNODES set)" in result.stderr
    assert "MASTER_PORT=31001 (MASTER_PORT set)" in result.stderr


def test_8p_launcher_bad_slurm_value_stops_before_anything_starts(tmp_path, launcher_output):
    result, recorded = run_launcher(tmp_path, "train_full_8p.sh", dict(STEP, SLURM_NODEID="2"))
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("error: SLURM_NODEID='2' is not 0..1")
    assert recorded == []


def test_1p_launcher_ignores_slurm(tmp_path, launcher_output):
    result, recorded = run_launcher(tmp_path, "train_full_1p.sh", dict(STEP, SLURM_NODEID="9"))
    assert result.returncode == 0, result.stderr
    assert recorded[0].split()[0].endswith("train_net.py") and "--device_id" in recorded[0]
    assert "SLURM job" not in result.stderr


@pytest.mark.skipif(
    not shutil.which("taskset") or len(os.sched_getaffinity(0)) < 2, reason="needs taskset, 2 cores"
)
def test_ranks_are_bound_within_the_cores_the_launcher_may_use():
    # as in a SLURM job's cpuset: the launcher may use only its last core, which is not core 0
    last = str(max(os.sched_getaffinity(0)))
    script = os.path.join(REPO, "test", "bind_cores.sh")
    cmd = ["taskset", "-c", last, "bash", script, "grep", "Cpus_allowed_list", "/proc/self/status"]
    env = dict(os.environ, LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
    assert out.split() == ["Cpus_allowed_list:", last]


def test_sbatch_example_runs_one_launcher_per_node(tmp_path):
    sbatch = os.path.join(REPO, "test", "slurm_train_full_8p.sbatch")
    with open(sbatch) as f:
        options = [line.split()[1] for line in f if line.startswith("#SBATCH ")]
    assert {"--nodes=2", "--ntasks-per-node=1", "--gres=gpu:8"} <= set(options)
    calls = tmp_path / "calls"
    stand_in(tmp_path, "srun", 'echo "$PWD $*" > {}\n'.format(calls))
    env = dict(os.environ, SLURM_SUBMIT_DIR=REPO)
    subprocess.run(["bash", sbatch, "--data_path=/d", "OUT_DIR", "/o"], env=env, check=True)
    cwd, *argv = calls.read_text().split()
    assert cwd == REPO and "--ntasks-per-node=1" in argv
    assert argv[-5:] == ["bash", "test/train_full_8p.sh", "--data_path=/d", "OUT_DIR", "/o"]


def test_slurm_module_is_torch_free():
    # the launchers run it before every 8p job: it must start fast and work without torch
    code = "import sys, pycls.launch.slurm; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert out.stdout.strip() == "False"
