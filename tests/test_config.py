"""Config loading, merging, dumping and its errors."""

import glob
import os

import pytest

from pycls.core import config
from pycls.core.config import cfg
from pycls.core.errors import PyclsError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EN_B3 = os.path.join(REPO, "configs/dds_baselines/effnet/EN-B3_dds_8gpu.yaml")


@pytest.fixture(autouse=True)
def fresh_cfg():
    config.reset_cfg()
    yield
    config.reset_cfg()


def test_every_config_loads_and_passes_checks():
    files = glob.glob(os.path.join(REPO, "configs/**/*.yaml"), recursive=True)
    assert len(files) >= 40
    for path in files:
        config.reset_cfg()
        config.merge_from_file(path)
        config.assert_cfg()


def test_reference_configs_are_copied_unchanged():
    ref = os.path.join(REPO, "..", "shared", "reference", "pycls-configs")
    if not os.path.isdir(ref):
        pytest.skip("no shared reference configs beside the repo")
    for path in glob.glob(os.path.join(ref, "**/*.yaml"), recursive=True):
        ours = os.path.join(REPO, "configs", os.path.relpath(path, ref))
        with open(path) as a, open(ours) as b:
            assert a.read() == b.read(), ours


@pytest.mark.parametrize(
    "name,batch,lr,epochs,gpus",
    [
        ("1npu_full", 128, 0.2, 100, 1),
        ("1npu_perf", 128, 0.2, 1, 1),
        ("8npu_full", 512, 0.8, 100, 8),
        ("8npu_perf", 512, 0.8, 1, 8),
    ],
)
def test_seed_configs(name, batch, lr, epochs, gpus):
    config.merge_from_file(EN_B3.replace("8gpu", name))
    assert (cfg.TRAIN.BATCH_SIZE, cfg.OPTIM.BASE_LR, cfg.OPTIM.MAX_EPOCH) == (batch, lr, epochs)
    assert (cfg.NUM_GPUS, cfg.TRAIN.IM_SIZE, cfg.TEST.IM_SIZE) == (gpus, 300, 342)
    assert (cfg.TEST.BATCH_SIZE, cfg.OPTIM.LR_POLICY) == (200, "cos")
    assert (cfg.OPTIM.MOMENTUM, cfg.OPTIM.WEIGHT_DECAY) == (0.9, 1e-5)
    assert (cfg.AMP.OPT_LEVEL, config.loss_scale()) == ("O2", 128.0)
    # As the port: precise BN over 8192 images, BGR input
    assert (cfg.BN.USE_PRECISE_STATS, cfg.BN.NUM_SAMPLES_PRECISE) == (True, 8192)
    assert cfg.INPUT.CHANNEL_ORDER == "bgr"


def test_defaults_are_pycls_recipe():
    assert (cfg.BN.USE_PRECISE_STATS, cfg.BN.NUM_SAMPLES_PRECISE) == (True, 8192)
    assert cfg.INPUT.CHANNEL_ORDER == "bgr"
    config.merge_from_list(["INPUT.CHANNEL_ORDER", "rgb"])
    config.assert_cfg()


def test_merge_from_list_overrides_and_coerces():
    config.merge_from_file(EN_B3)
    opts = ["OPTIM.BASE_LR", "1", "AMP.LOSS_SCALE", "64", "OUT_DIR", "123", "EN.DEPTHS", "[1, 2]"]
    config.merge_from_list(opts)
    assert cfg.OPTIM.BASE_LR == 1.0 and isinstance(cfg.OPTIM.BASE_LR, float)
    assert cfg.AMP.LOSS_SCALE == "64" and config.loss_scale() == 64.0
    assert cfg.OUT_DIR == "123" and cfg.EN.DEPTHS == [1, 2]
    config.merge_from_list(["AMP.LOSS_SCALE", "dynamic"])
    assert config.loss_scale() is None


@pytest.mark.parametrize(
    "opts,words",
    [
        (["OPTIM.BASE_RL", "1"], ["OPTIM.BASE_RL", "did you mean OPTIM.BASE_LR"]),
        (["OPTIM.BASE_LR", "fast"], ["OPTIM.BASE_LR", "float"]),
        (["TRAIN.BATCH_SIZE", "1.5"], ["TRAIN.BATCH_SIZE", "int"]),
        (["TRAIN.BATCH_SIZE"], ["KEY VALUE"]),
        (["OPTIM", "1"], ["OPTIM", "section"]),
    ],
)
def test_bad_overrides_name_the_key(opts, words):
    with pytest.raises(PyclsError) as e:
        config.merge_from_list(opts)
    for word in words:
        assert word in str(e.value)


@pytest.mark.parametrize(
    "opts,key",
    [
        (["DEVICE", "tpu"], "DEVICE"),
        (["AMP.OPT_LEVEL", "O3"], "AMP.OPT_LEVEL"),
        (["AMP.LOSS_SCALE", "big"], "AMP.LOSS_SCALE"),
        (["TRAIN.BATCH_SIZE", "0"], "TRAIN.BATCH_SIZE"),
        (["OPTIM.LR_POLICY", "steps", "OPTIM.STEPS", "[5, 10]"], "OPTIM.STEPS"),
        (["DATA_LOADER.NUM_WORKERS", "-1"], "DATA_LOADER.NUM_WORKERS"),
        (["INPUT.CHANNEL_ORDER", "BGR"], "INPUT.CHANNEL_ORDER"),
        (["BN.NUM_SAMPLES_PRECISE", "0"], "BN.NUM_SAMPLES_PRECISE"),
    ],
)
def test_bad_values_name_the_key(opts, key):
    config.merge_from_list(opts)
    with pytest.raises(PyclsError, match=key.replace(".", r"\.")):
        config.assert_cfg()


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("TRAIN:\n  BATCH_SIZ: 4\n")
    with pytest.raises(PyclsError, match="TRAIN.BATCH_SIZ.*did you mean TRAIN.BATCH_SIZE"):
        config.merge_from_file(str(path))


def test_py_config_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.py"
    path.write_text("open({!r}, 'w').write('x')\ncfg = {{}}\n".format(str(marker)))
    with pytest.raises(PyclsError, match="only YAML"):
        config.merge_from_file(str(path))
    assert not marker.exists()


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(PyclsError, match="does not exist"):
        config.merge_from_file(str(tmp_path / "none.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("TRAIN: [unclosed\n")
    with pytest.raises(PyclsError, match="not valid YAML"):
        config.merge_from_file(str(bad))


def test_dump_load_round_trip_and_reset(tmp_path):
    config.merge_from_file(EN_B3)
    config.merge_from_list(["OUT_DIR", str(tmp_path), "AMP.LOSS_SCALE", "128"])
    path = config.dump_cfg()
    assert path == str(tmp_path / "config.yaml")
    dumped = cfg.clone()
    config.load_cfg(path)
    assert cfg == dumped
    config.reset_cfg()
    assert cfg.MODEL.TYPE == "" and cfg.OPTIM.BASE_LR == 0.1


def test_cli_flags_set_keys(tmp_path):
    argv = ["--cfg", EN_B3, "--device", "cpu", "--data_path", str(tmp_path), "--rank_id", "1"]
    args = config.load_cfg_from_args(argv + ["--profperf", "1", "OPTIM.BASE_LR", "0.5"])
    assert (cfg.DEVICE, cfg.DATA_LOADER.DATA_PATH) == ("cpu", str(tmp_path))
    assert cfg.PROFILE.ENABLED and cfg.OPTIM.BASE_LR == 0.5 and args.rank_id == 1
