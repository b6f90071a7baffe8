"""Config loading, merging, dumping and its errors."""

import glob
import os

import pytest
from conftest import REPO

from pycls.core import config
from pycls.core.config import cfg
from pycls.core.errors import PyclsError

EN_B3 = os.path.join(REPO, "configs/dds_baselines/effnet/EN-B3_dds_8gpu.yaml")


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
        (["DATA_LOADER.NUM_WORKERS", "-1"], "DATA_LOADER.NUM_WORKERS"),
        (["INPUT.CHANNEL_ORDER", "BGR"], "INPUT.CHANNEL_ORDER"),
        (["BN.NUM_SAMPLES_PRECISE", "0"], "BN.NUM_SAMPLES_PRECISE"),
        (["RNG_SEED", "-1"], "RNG_SEED"),
        (["RNG_SEED", str(2**31)], "RNG_SEED"),
    ],
)
def test_bad_values_name_the_key(opts, key):
    config.merge_from_list(opts)
    with pytest.raises(PyclsError, match=key.replace(".", r"\.")):
        config.assert_cfg()


@pytest.mark.parametrize(
    "opts,key",
    [
        (["OPTIM.LR_POLICY", "steps", "OPTIM.STEPS", "[5, 10]"], "OPTIM.STEPS"),
        (["OPTIM.LR_POLICY", "linear"], "OPTIM.LR_POLICY"),
        (["OPTIM.OPTIMIZER", "lamb"], "OPTIM.OPTIMIZER"),
        (["MODEL.ACTIVATION_FUN", "gelu"], "MODEL.ACTIVATION_FUN"),
        (["MODEL.LOSS_FUN", "focal"], "MODEL.LOSS_FUN"),
        (["MODEL.TYPE", "vit"], "MODEL.TYPE"),
    ],
)
def test_registry_names_are_checked_by_their_registries(opts, key):
    import pycls.core.builders as builders

    config.load_cfg(EN_B3, opts)  # the config's own checks pass
    with pytest.raises(PyclsError, match=key.replace(".", r"\.")):
        builders.check_cfg_names()


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


# ------------------------------ round two: hostile files ------------------------------ #


def _write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    "{}: &{} [{}]\n".format(chr(98 + i), chr(98 + i), ", ".join(["*" + chr(97 + i)] * 10))
    for i in range(8)
)


@pytest.mark.parametrize(
    "data, words",
    [
        (_BOMB.encode(), r"uses a YAML anchor or alias \(line 1\); write the values out"),
        (b"OUT_DIR: [x, &a [*a]]\n", r"uses a YAML anchor or alias \(line 1\)"),
        (b"OPTIM:\n  BASE_LR: *a\n", r"uses a YAML anchor or alias \(line 2\)"),
        (b"# " + b"x" * (2 * 1024**2), r"is larger than 1 MiB"),
        (b"MODEL:\n  TYPE: effn\xe9t\n", r"is not UTF-8 text \(byte 0xe9 at offset 19\)"),
        (
            b"OPTIM:\n  BASE_LR: 0.1\nOPTIM:\n  MAX_EPOCH: 3\n",
            r"sets OPTIM twice \(lines 1 and 3\)",
        ),
        (b"OPTIM:\n  BASE_LR: 0.1\n  BASE_LR: 0.2\n", r"sets BASE_LR twice \(lines 2 and 3\)"),
        (b"OUT_DIR: " + b"[" * 100000 + b"]" * 100000, r"is nested too deeply"),
        (b"OUT_DIR: " + b"y" * 100000 + b"\n", r"value of 100000 characters \(y{57}\.\.\.\)"),
    ],
)
def test_hostile_config_files_are_refused_in_one_short_line(tmp_path, data, words):
    path = _write_bytes(tmp_path / "c.yaml", data)
    with pytest.raises(PyclsError, match=words) as info:
        config.merge_from_file(path)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_hostile_overrides_are_refused_in_one_short_line():
    levels = ["&a0 [{}]".format(", ".join(["x"] * 10))]
    levels += ["&a{} [{}]".format(i, ", ".join(["*a{}".format(i - 1)] * 10)) for i in range(1, 8)]
    bomb = "[{}]".format(", ".join(levels))
    with pytest.raises(PyclsError, match=r"OPTIM\.STEPS in the command line takes a list"):
        config.merge_from_list(["OPTIM.STEPS", bomb])
    with pytest.raises(PyclsError, match=r"value of 100000 characters \(z{57}\.\.\.\); "):
        config.merge_from_list(["OUT_DIR", "z" * 100000])
    with pytest.raises(PyclsError, match=r"^config overrides must be KEY VALUE pairs; got .{,60}$"):
        config.merge_from_list(["OUT_DIR"] * 10001)


def test_load_cfg_resets_merges_and_checks():
    cfg.TRAIN.BATCH_SIZE = 7  # left over from an earlier load: reset away
    config.load_cfg(EN_B3, ["OPTIM.BASE_LR", 0.5, "MODEL.NUM_CLASSES", "3"])
    assert cfg.MODEL.TYPE == "effnet" and cfg.OPTIM.BASE_LR == 0.5
    assert cfg.MODEL.NUM_CLASSES == 3 and cfg.TRAIN.BATCH_SIZE != 7
    with pytest.raises(PyclsError, match=r"TRAIN\.BATCH_SIZE is 0; it must be above 0"):
        config.load_cfg(EN_B3, ["TRAIN.BATCH_SIZE", "0"])


def test_a_registered_loss_passes_the_checks_and_trains():
    import torch

    import pycls.core.builders as builders
    import pycls.core.net as net
    import pycls.core.trainer as trainer
    from pycls.core.amp import Amp

    calls = []

    class HalfLoss(torch.nn.Module):
        def forward(self, x, y):
            calls.append(x.shape)
            return 0.5 * net.SoftCrossEntropyLoss()(x, y)

    opts = ["MODEL.LOSS_FUN", "half_ce", "MODEL.NUM_CLASSES", "3", "DEVICE", "cpu"]
    config.load_cfg(EN_B3, opts)
    with pytest.raises(PyclsError, match="MODEL.LOSS_FUN 'half_ce' is not a known loss"):
        builders.check_cfg_names()
    builders.register_loss_fun("half_ce", HalfLoss)
    try:
        config.load_cfg(EN_B3, opts + ["AMP.OPT_LEVEL", "O0"])
        builders.check_cfg_names()
        loss_fun = builders.build_loss_fun()
        model = torch.nn.Linear(4, 3)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        amp = Amp(torch.device("cpu"))
        model, optimizer = amp.prepare(model, optimizer)
        before = model.weight.detach().clone()
        labels = net.smooth_one_hot_labels(torch.tensor([0, 2]))
        _, loss = trainer.train_step(model, loss_fun, optimizer, amp, torch.randn(2, 4), labels)
        assert calls == [(2, 3)] and bool(torch.isfinite(loss))
        assert not torch.equal(model.weight.detach(), before)
    finally:
        builders._loss_funs.pop("half_ce")


# ------------------------- round three: values that make no sense ------------------------- #


@pytest.mark.parametrize(
    "opts,words",
    [
        (["OPTIM.BASE_LR", ".nan"], r"OPTIM\.BASE_LR is nan; it must be a finite number"),
        (["OPTIM.MOMENTUM", "1e999"], r"OPTIM\.MOMENTUM is inf; it must be a finite number"),
        (["TRAIN.LABEL_SMOOTHING", "1"], r"LABEL_SMOOTHING is 1\.0; it must be in \[0, 1\)"),
        (["EN.DROPOUT_RATIO", "-0.1"], r"EN\.DROPOUT_RATIO is -0\.1; it must be in \[0, 1\)"),
        (
            ["DATA_LOADER.MAX_BAD_FRACTION", "1.5"],
            r"MAX_BAD_FRACTION is 1\.5; it must be in \[0, 1\]",
        ),
        (["TRAIN.MIXUP_ALPHA", "-1"], r"TRAIN\.MIXUP_ALPHA is -1\.0; it must be 0 or more"),
        (["TRAIN.HFLIP", "2"], r"TRAIN\.HFLIP is 2\.0; it must be in \[0, 1\]"),
        (["EN.SE_R", "0"], r"EN\.SE_R is 0\.0; it must be in \(0, 1\]"),
        (["EN.KERNELS", "[3, 0]"], r"EN\.KERNELS is \[3, 0\]; every entry must be above 0"),
        (["EN.DEPTHS", "[1, x]"], r"EN\.DEPTHS is \[1, 'x'\]; every entry must be a finite number"),
        (["AMP.LOSS_SCALE", "inf"], r"AMP\.LOSS_SCALE is 'inf'; give a number above 0 or dynamic"),
        (["TRAIN.CROP_SCALE", "[0.9, 0.1]"], r"TRAIN\.CROP_SCALE must be \[low, high\]"),
        (["BN.PRECISE_BATCH_SIZE", "-128"], r"BN\.PRECISE_BATCH_SIZE is -128; it must be 0 or more"),
        (
            ["TRAIN.BATCH_SIZE", "32", "BN.PRECISE_BATCH_SIZE", "100"],
            r"BN\.PRECISE_BATCH_SIZE is 100 and TRAIN\.BATCH_SIZE 32; set it to 0 or a multiple",
        ),
    ],
)
def test_numbers_that_make_no_sense_are_refused(opts, words):
    config.merge_from_list(opts)
    with pytest.raises(PyclsError, match=words):
        config.assert_cfg()


def test_every_number_key_has_a_range_and_defaults_pass():
    config.reset_cfg()
    config.assert_cfg()  # the defaults make sense
    listed = " ".join(config._RANGES.values()).split()
    assert len(listed) == len(set(listed)) and set(listed) <= set(config._all_keys(cfg))


@pytest.mark.parametrize(
    "opts,words",
    [
        (["OPTIM.BASE_LR.X", "1"], r"unknown config key OPTIM\.BASE_LR\.X in the command line: "),
        (["OPTIM.BASE_LR", "None"], r"OPTIM\.BASE_LR in the command line takes a float"),
        (["OPTIM.BASE_LR", "~"], r"takes a float \(like 0\.1\), not None"),
        (["MODEL.COMPILE", "1"], r"MODEL\.COMPILE in the command line takes a bool"),
    ],
)
def test_overrides_of_the_wrong_shape_are_refused(opts, words):
    with pytest.raises(PyclsError, match=words):
        config.merge_from_list(opts)


@pytest.mark.parametrize(
    "text,words",
    [
        ("- OPTIM\n- BASE_LR\n", r"holds \['OPTIM', 'BASE_LR'\], not a mapping of config keys"),
        ("just text\n", r"holds just text, not a mapping of config keys"),
        ("OPTIM:\n  BASE_LR:\n    X: 1\n", r"unknown config key OPTIM\.BASE_LR\.X in "),
        ("OPTIM:\n", r"config key OPTIM in .* is a section; give its keys"),
        ("OUT_DIR: 2024-01-01\n", r"OUT_DIR in .* takes a str \('/tmp'\)|takes a str"),
        ("OPTIM:\n  BASE_LR: 1\n  MAX_EPOCH: 1e1\n", None),
    ],
)
def test_files_of_the_wrong_shape_are_refused(tmp_path, text, words):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    if words is None:  # ints widen to floats, 1e1 (text to YAML) is named as typed
        with pytest.raises(
            PyclsError, match=r"MAX_EPOCH in .* takes a int \(like 200\), not '1e1'"
        ):
            config.merge_from_file(str(path))
        assert cfg.OPTIM.BASE_LR == 1.0 and isinstance(cfg.OPTIM.BASE_LR, float)
        return
    with pytest.raises(PyclsError, match=words):
        config.merge_from_file(str(path))


def test_out_dir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("x")
    config.merge_from_list(["OUT_DIR", str(path)])
    with pytest.raises(PyclsError, match=r"OUT_DIR .* is a file; set OUT_DIR to a folder"):
        config.assert_cfg()


def test_str_keys_keep_their_text_and_dumps_have_no_anchors(tmp_path):
    config.merge_from_list(["OUT_DIR", str(tmp_path), "DESC", "[1, 2]", "TEST.WEIGHTS", "None"])
    assert (cfg.DESC, cfg.TEST.WEIGHTS) == ("[1, 2]", "None")
    with open(config.dump_cfg()) as f:
        assert "&" not in f.read()
