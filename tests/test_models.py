"""Tests of the model zoo: shapes, key names, complexity, params dicts and builders."""

import os

import pytest
import torch
from conftest import TINY_EN_OPTS
from torch import nn

import pycls.core.builders as builders
import pycls.core.net as net
import pycls.models.blocks as blocks
import pycls.models.model_zoo as model_zoo
from pycls.core.config import cfg, merge_from_file, merge_from_list, reset_cfg
from pycls.core.errors import PyclsError
from pycls.models.anynet import AnyNet
from pycls.models.blocks import adjust_block_compatibility
from pycls.models.effnet import EffNet, MBConv
from pycls.models.regnet import RegNet, generate_regnet
from pycls.models.resnet import ResNet

_CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs", "dds_baselines")

# (flops, params, acts) of every config as published by pycls (dev/model_complexity.json)
_EN_B3 = (1827162472, 12233232, 23831296)
_PYCLS_CX = {
    "effnet/EN-B0_dds_8gpu.yaml": (385825092, 5288548, 6748036),
    "effnet/EN-B1_dds_8gpu.yaml": (686817992, 7794184, 10884328),
    "effnet/EN-B2_dds_8gpu.yaml": (993578282, 9109994, 13832834),
    "effnet/EN-B3_dds_8gpu.yaml": _EN_B3,
    "effnet/EN-B3_dds_1npu_full.yaml": _EN_B3,
    "effnet/EN-B3_dds_1npu_perf.yaml": _EN_B3,
    "effnet/EN-B3_dds_8npu_full.yaml": _EN_B3,
    "effnet/EN-B3_dds_8npu_perf.yaml": _EN_B3,
    "effnet/EN-B4_dds_8gpu.yaml": (4393801064, 19341616, 49489032),
    "effnet/EN-B5_dds_8gpu.yaml": (10266426072, 30389784, 98857400),
    "regnetx/RegNetX-1.6GF_dds_8gpu.yaml": (1602850792, 9190136, 7933512),
    "regnetx/RegNetX-12GF_dds_8gpu.yaml": (12086679016, 46106056, 21366568),
    "regnetx/RegNetX-16GF_dds_8gpu.yaml": (15940756456, 54278536, 25515496),
    "regnetx/RegNetX-200MF_dds_8gpu.yaml": (199040872, 2684792, 2164056),
    "regnetx/RegNetX-3.2GF_dds_8gpu.yaml": (3176622952, 15296552, 11367432),
    "regnetx/RegNetX-32GF_dds_8gpu.yaml": (31735930792, 107811560, 36302160),
    "regnetx/RegNetX-4.0GF_dds_8gpu.yaml": (3964499816, 22118248, 12201608),
    "regnetx/RegNetX-400MF_dds_8gpu.yaml": (397678568, 5157512, 3143272),
    "regnetx/RegNetX-6.4GF_dds_8gpu.yaml": (6460292264, 26209256, 16369744),
    "regnetx/RegNetX-600MF_dds_8gpu.yaml": (600891112, 6196040, 3975096),
    "regnetx/RegNetX-8.0GF_dds_8gpu.yaml": (7995133416, 39572648, 14059688),
    "regnetx/RegNetX-800MF_dds_8gpu.yaml": (799700712, 7259656, 5148744),
    "regnety/RegNetY-1.6GF_dds_8gpu.yaml": (1612087326, 11202430, 8044814),
    "regnety/RegNetY-12GF_dds_8gpu.yaml": (12092395504, 51822544, 21384496),
    "regnety/RegNetY-16GF_dds_8gpu.yaml": (15911534044, 83590140, 23041228),
    "regnety/RegNetY-200MF_dds_8gpu.yaml": (199519076, 3162996, 2168052),
    "regnety/RegNetY-3.2GF_dds_8gpu.yaml": (3176496162, 19436338, 11263418),
    "regnety/RegNetY-32GF_dds_8gpu.yaml": (32279583362, 145046770, 30261570),
    "regnety/RegNetY-4.0GF_dds_8gpu.yaml": (3973301344, 20646656, 12287200),
    "regnety/RegNetY-400MF_dds_8gpu.yaml": (401849056, 4344144, 3892496),
    "regnety/RegNetY-6.4GF_dds_8gpu.yaml": (6355221876, 30583252, 16407188),
    "regnety/RegNetY-600MF_dds_8gpu.yaml": (601227608, 6055160, 4334296),
    "regnety/RegNetY-8.0GF_dds_8gpu.yaml": (7963074196, 39180068, 17968916),
    "regnety/RegNetY-800MF_dds_8gpu.yaml": (797183328, 6263168, 5249888),
    "resnet/R-101-1x64d_dds_8gpu.yaml": (7801406440, 44549160, 16433640),
    "resnet/R-152-1x64d_dds_8gpu.yaml": (11513627624, 60192808, 22755816),
    "resnet/R-50-1x64d_dds_8gpu.yaml": (4089185256, 25557032, 11315688),
    "resnext/X-101-32x4d_dds_8gpu.yaml": (7969997800, 44177704, 21426152),
    "resnext/X-152-32x4d_dds_8gpu.yaml": (11709514728, 59951400, 29855720),
    "resnext/X-50-32x4d_dds_8gpu.yaml": (4230480872, 25028904, 14602216),
}

# pycls's archive configs for the "resnet" model type, with their published complexity
_RESNET_CASES = {
    "R-50": (
        ["MODEL.DEPTH", 50, "RESNET.TRANS_FUN", "bottleneck_transform"],
        _PYCLS_CX["resnet/R-50-1x64d_dds_8gpu.yaml"],
    ),
    "X-50": (
        ["MODEL.DEPTH", 50, "RESNET.TRANS_FUN", "bottleneck_transform"]
        + ["RESNET.NUM_GROUPS", 32, "RESNET.WIDTH_PER_GROUP", 4],
        _PYCLS_CX["resnext/X-50-32x4d_dds_8gpu.yaml"],
    ),
    "R-56-cifar": (
        ["MODEL.DEPTH", 56, "MODEL.NUM_CLASSES", 10, "TRAIN.DATASET", "cifar10"]
        + ["TRAIN.IM_SIZE", 32, "RESNET.TRANS_FUN", "basic_transform"],
        (125747850, 855770, 544778),
    ),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Runs the tiny forward passes on one thread (threads only spin on 32x32 inputs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load(rel_path):
    """Loads a config under configs/dds_baselines into cfg."""
    merge_from_file(os.path.join(_CONFIGS, rel_path))


def _num_params(model):
    """Counts the parameters of a model."""
    return sum(p.numel() for p in model.parameters())


def _shapes(model):
    """Maps each state-dict key of a model to its shape."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _load_resnet_case(name):
    """Loads one of the _RESNET_CASES into cfg; returns its expected complexity."""
    opts, expected = _RESNET_CASES[name]
    opts = ["MODEL.TYPE", "resnet", "MODEL.NUM_CLASSES", 1000, "RESNET.STRIDE_1X1", False] + opts
    merge_from_list([str(v) for v in opts])
    return expected


def test_every_config_has_expected_complexity():
    found = {
        os.path.relpath(os.path.join(root, f), _CONFIGS).replace(os.sep, "/")
        for root, _, files in os.walk(_CONFIGS)
        for f in files
        if f.endswith(".yaml")
    }
    assert found == set(_PYCLS_CX)


@pytest.mark.parametrize("rel_path", sorted(_PYCLS_CX))
def test_complexity_equals_pycls(rel_path):
    _load(rel_path)
    cx = net.complexity(builders.get_model())
    assert (cx["flops"], cx["params"], cx["acts"]) == _PYCLS_CX[rel_path]


@pytest.mark.parametrize("rel_path", sorted(_PYCLS_CX))
def test_forward_shape_and_param_count(rel_path):
    _load(rel_path)
    with torch.no_grad():
        model = builders.build_model().eval()
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, cfg.MODEL.NUM_CLASSES)
    assert torch.isfinite(out).all()
    assert _num_params(model) == net.complexity(model)["params"]


def test_en_b3_complexity_exact():
    _load("effnet/EN-B3_dds_8gpu.yaml")
    assert cfg.TRAIN.IM_SIZE == 300
    expected = {"flops": 1827162472, "params": 12233232, "acts": 23831296}
    assert net.complexity(EffNet) == expected
    model = builders.build_model()
    assert net.complexity(model) == expected
    assert _num_params(model) == 12233232


def test_en_b3_key_names_and_shapes():
    _load("effnet/EN-B3_dds_8gpu.yaml")
    shapes = _shapes(builders.build_model())
    assert shapes["stem.conv.weight"] == (40, 3, 3, 3)
    assert shapes["s1.b1.dwise.weight"] == (40, 1, 3, 3)
    assert shapes["s1.b1.se.f_ex.0.weight"] == (10, 40, 1, 1)
    assert shapes["s1.b1.se.f_ex.0.bias"] == (10,)
    assert shapes["s2.b1.exp.weight"] == (144, 24, 1, 1)
    assert shapes["s7.b2.lin_proj_bn.running_var"] == (384,)
    assert shapes["head.conv.weight"] == (1536, 384, 1, 1)
    assert shapes["head.fc.weight"] == (1000, 1536)
    assert "s1.b1.exp.weight" not in shapes  # expansion ratio 1: no expansion conv
    stages = {k.split(".")[0] for k in shapes} - {"stem", "head"}
    assert stages == {"s{}".format(i) for i in range(1, 8)}


def test_regnet_and_resnext_key_names():
    _load("regnety/RegNetY-200MF_dds_8gpu.yaml")
    shapes = _shapes(builders.build_model())
    assert shapes["stem.conv.weight"] == (32, 3, 3, 3)
    assert shapes["s1.b1.proj.weight"] == (24, 32, 1, 1)
    assert shapes["s1.b1.f.se.f_ex.0.weight"] == (8, 24, 1, 1)
    assert shapes["s4.b1.f.c_bn.weight"] == (368,)
    assert shapes["head.fc.weight"] == (1000, 368)
    reset_cfg()
    _load("resnext/X-50-32x4d_dds_8gpu.yaml")
    shapes = _shapes(builders.build_model())
    assert shapes["stem.conv.weight"] == (64, 3, 7, 7)
    assert shapes["s1.b1.f.b.weight"] == (128, 4, 3, 3)
    assert shapes["s4.b3.f.c.weight"] == (2048, 1024, 1, 1)


@pytest.mark.parametrize("name", sorted(_RESNET_CASES))
def test_resnet_type_complexity_equals_pycls(name):
    expected = _load_resnet_case(name)
    cx = net.complexity(ResNet)
    assert (cx["flops"], cx["params"], cx["acts"]) == expected
    with torch.no_grad():
        model = builders.build_model().eval()
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, cfg.MODEL.NUM_CLASSES)
    assert _num_params(model) == expected[1]


@pytest.mark.parametrize("stem", ["res_stem_cifar", "res_stem_in", "simple_stem_in"])
@pytest.mark.parametrize(
    "block",
    ["vanilla_block", "res_basic_block", "res_bottleneck_block", "res_bottleneck_linear_block"],
)
def test_every_anynet_stem_and_block_builds_and_counts(stem, block):
    opts = ["MODEL.TYPE", "anynet", "MODEL.NUM_CLASSES", 10, "ANYNET.STEM_TYPE", stem]
    opts += ["ANYNET.STEM_W", 8, "ANYNET.BLOCK_TYPE", block, "ANYNET.DEPTHS", [1, 2]]
    opts += ["ANYNET.WIDTHS", [8, 16], "ANYNET.STRIDES", [1, 2], "ANYNET.BOT_MULS", [1.0, 0.5]]
    opts += ["ANYNET.GROUP_WS", [4, 4], "ANYNET.HEAD_W", 32, "ANYNET.SE_ON", True]
    merge_from_list([str(v) for v in opts])
    with torch.no_grad():
        model = builders.build_model().eval()
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert _num_params(model) == net.complexity(model)["params"]
    shapes = _shapes(model)
    if block in ("res_basic_block", "res_bottleneck_block"):
        # the first block of stage 2 changes width and stride: a projected skip
        assert shapes["s2.b1.proj.weight"] == (16, 8, 1, 1) and "s2.b2.proj.weight" not in shapes
        assert shapes["s2.b1.bn.weight"] == (16,) and "s2.b2.f.a.weight" in shapes


def test_resnet_type_keys_equal_anynet_resnet():
    _load_resnet_case("R-50")
    resnet = builders.build_model()
    reset_cfg()
    _load("resnet/R-50-1x64d_dds_8gpu.yaml")
    assert _shapes(resnet) == _shapes(builders.build_model())


@pytest.mark.parametrize(
    "rel_path",
    [
        "effnet/EN-B0_dds_8gpu.yaml",
        "regnety/RegNetY-200MF_dds_8gpu.yaml",
        "resnext/X-50-32x4d_dds_8gpu.yaml",
    ],
)
def test_params_dict_build_needs_no_cfg(rel_path):
    _load(rel_path)
    merge_from_list(["BN.EPS", "1e-3", "BN.MOM", "0.01", "MODEL.ACTIVATION_INPLACE", "False"])
    model_cls = builders.get_model()
    params = model_cls.get_params()
    with torch.no_grad():
        from_cfg = builders.build_model()
    expected_cx = net.complexity(model_cls)
    reset_cfg()
    with torch.no_grad():
        from_params = model_cls(params)
    assert _shapes(from_params) == _shapes(from_cfg)
    assert net.complexity(from_params) == expected_cx  # every case here is at 224px
    bns = [m for m in from_params.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bn.eps == 1e-3 and bn.momentum == 0.01 for bn in bns)
    acts = [m for m in from_params.modules() if isinstance(m, (nn.ReLU, nn.SiLU))]
    assert acts and all(not a.inplace for a in acts)
    want = nn.SiLU if params["activation"] == "silu" else nn.ReLU
    assert all(isinstance(a, want) for a in acts)


def test_params_dict_missing_key_is_clear():
    params = EffNet.get_params()
    del params["bn_eps"]
    with pytest.raises(PyclsError, match="bn_eps"):
        EffNet(params)


def _tiny_effnet_params(**changes):
    """Params of a small EfficientNet (built in milliseconds)."""
    params = EffNet.get_params()
    params.update(sw=8, ds=[1, 2], ws=[8, 16], exp_rs=[1, 4], ss=[1, 2], ks=[3, 5], hw=32)
    params.update(se_r=0.25, nc=5, activation="silu")
    params.update(changes)
    return params


def test_activation_choices():
    for name, cls in [("relu", nn.ReLU), ("silu", nn.SiLU), ("swish", nn.SiLU)]:
        model = EffNet(_tiny_effnet_params(activation=name))
        assert isinstance(model.stem.af, cls)
    with pytest.raises(PyclsError, match="ACTIVATION_FUN"):
        EffNet(_tiny_effnet_params(activation="gelu"))


def test_cfg_activation_and_bn_settings_apply():
    _load("regnetx/RegNetX-200MF_dds_8gpu.yaml")
    merge_from_list(["MODEL.ACTIVATION_FUN", "silu", "BN.EPS", "1e-4", "BN.MOM", "0.2"])
    model = builders.build_model()
    assert isinstance(model.stem.af, nn.SiLU) and isinstance(model.s1.b1.af, nn.SiLU)
    assert model.s1.b1.f.a_bn.eps == 1e-4 and model.s1.b1.f.a_bn.momentum == 0.2


def test_dropout_only_when_ratio_positive():
    assert EffNet(_tiny_effnet_params()).head.dropout is None
    model = EffNet(_tiny_effnet_params(dropout_ratio=0.3))
    assert isinstance(model.head.dropout, nn.Dropout) and model.head.dropout.p == 0.3


def test_drop_connect_drops_whole_samples_in_training_only():
    params = _tiny_effnet_params(dc_ratio=0.5)
    block = MBConv(8, 4, 3, 1, 0.25, 8, params)
    assert block.has_skip
    torch.manual_seed(0)
    x = torch.randn(64, 8, 4, 4)
    with torch.no_grad():
        f_x = block.eval()(x) - x
        assert torch.equal(block(x), block(x))  # eval: no drop connect
        block.train()  # drop connect on, BN kept on its running stats
        for m in block.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        out_train = block(x)
    kept = torch.isclose(out_train, x + f_x / 0.5, atol=1e-5).flatten(1).all(1)
    dropped = torch.isclose(out_train, x).flatten(1).all(1)
    assert bool((kept | dropped).all())
    assert 0 < int(dropped.sum()) < 64


def test_training_step_with_regularization_and_inplace_silu():
    params = _tiny_effnet_params(dc_ratio=0.2, dropout_ratio=0.2, activation_inplace=True)
    model = EffNet(params).train()
    assert model.s2.b2.has_skip and model.stem.af.inplace
    out = model(torch.randn(4, 3, 32, 32))
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)


def test_zero_init_final_gamma():
    _load("regnetx/RegNetX-200MF_dds_8gpu.yaml")
    merge_from_list(["BN.ZERO_INIT_FINAL_GAMMA", "True"])
    model = builders.build_model()
    assert float(model.s1.b1.f.c_bn.weight.detach().abs().sum()) == 0.0
    assert float(model.s1.b1.f.a_bn.weight.detach().min()) == 1.0


def test_regnet_generation_helpers():
    ws, ds = generate_regnet(36.44, 24, 2.49, 13)[0:2]
    assert (ws, ds) == ([24, 56, 152, 368], [1, 1, 4, 7])
    assert adjust_block_compatibility([100], [1.0], [16]) == ([96], [1.0], [16])
    with pytest.raises(PyclsError, match="W0"):
        generate_regnet(36.44, 20, 2.49, 13)


def test_regnet_is_an_anynet():
    _load("regnetx/RegNetX-200MF_dds_8gpu.yaml")
    params = RegNet.get_params()
    expected = net.complexity(RegNet)
    reset_cfg()
    anynet = AnyNet(params)
    assert net.complexity(anynet) == expected
    assert _shapes(anynet) == _shapes(RegNet(params))


def test_bad_model_type_names_choices():
    merge_from_list(["MODEL.TYPE", "vgg"])
    with pytest.raises(PyclsError, match="anynet, effnet, regnet, resnet"):
        builders.build_model()


def test_bad_stem_and_depth_are_clear():
    _load("resnet/R-50-1x64d_dds_8gpu.yaml")
    merge_from_list(["ANYNET.STEM_TYPE", "res_stem_xx"])
    with pytest.raises(PyclsError, match="res_stem_in"):
        builders.build_model()
    reset_cfg()
    _load_resnet_case("R-50")
    merge_from_list(["MODEL.DEPTH", "34"])
    with pytest.raises(PyclsError, match="MODEL.DEPTH"):
        builders.build_model()


def test_register_model_and_loss():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

    builders.register_model("tiny_test_model", Tiny)
    merge_from_list(["MODEL.TYPE", "tiny_test_model"])
    assert isinstance(builders.build_model(), Tiny)
    assert isinstance(builders.build_loss_fun(), net.SoftCrossEntropyLoss)


def test_model_zoo_names_and_configs():
    names = model_zoo.list_models()
    assert len(names) == 36
    assert {"EfficientNet-B3", "RegNetY-200MF", "ResNeXt-101", "ResNet-50"} <= set(names)
    for name in names:
        assert os.path.isfile(model_zoo.get_config_file(name))
    assert model_zoo.get_config_file("EfficientNet-B3").endswith("effnet/EN-B3_dds_8gpu.yaml")
    with pytest.raises(PyclsError, match="RegNetY-200MF"):
        model_zoo.get_config_file("RegNetY-200M")


def test_model_zoo_build_with_local_weights(tmp_path):
    source = model_zoo.build_model("EfficientNet-B0")
    assert cfg.MODEL.TYPE == "effnet" and cfg.EN.STEM_W == 32
    path = str(tmp_path / "EN-B0.pyth")
    torch.save({"epoch": 1, "model_state": source.state_dict()}, path)
    loaded = model_zoo.build_model("EfficientNet-B0", pretrained_path=path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    with pytest.raises(PyclsError, match="missing.pyth"):
        model_zoo.build_model("EfficientNet-B0", pretrained_path=str(tmp_path / "missing.pyth"))


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("size,stride", [((1, 1), 2), ((3, 1), 2), ((2, 2), 3), ((5, 5), 2)])
def test_strided_conv_gradients_equal_a_float64_reference(amp, size, stride):
    """A strided 'same' conv, plain and depthwise, on inputs narrower than its stride (as
    EfficientNet's stage 6 at 16px images: 1x1) and wider: channels_last, under CPU bf16
    autocast too, its output and gradients equal a float64 reference. torch's own bf16 conv on
    AVX-512 CPUs got the narrow case wrong (see blocks.Conv2d)."""
    torch.manual_seed(0)
    for groups in (1, 16):
        conv = blocks.conv2d(16, 16, 5, stride=stride, groups=groups)
        conv = conv.to(memory_format=torch.channels_last)
        ref = nn.Conv2d(16, 16, 5, stride=stride, padding=2, groups=groups, bias=False).double()
        ref.weight.data.copy_(conv.weight.data)
        for _ in range(20):  # the bad kernel read stale memory: wrong only some of the time
            junk = [torch.full((1 << k,), 7.0) for k in range(8, 20)]
            del junk
            x = torch.randn(2, 16, *size).to(memory_format=torch.channels_last)
            x.requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                y = conv(x)
            dy = torch.randn(y.shape)
            conv.zero_grad()
            y.float().backward(dy)
            x_ref = x.detach().double().requires_grad_()
            ref.zero_grad()
            y_ref = ref(x_ref)
            y_ref.backward(dy.double())
            tol = dict(atol=0.1, rtol=0.05) if amp else dict(atol=1e-4, rtol=1e-4)
            assert y.shape == y_ref.shape
            torch.testing.assert_close(y.double(), y_ref.detach(), **tol)
            torch.testing.assert_close(conv.weight.grad.double(), ref.weight.grad, **tol)
            torch.testing.assert_close(x.grad.double(), x_ref.grad, **tol)


def test_en_taps_that_see_only_padding_get_no_gradient():
    """A tiny EfficientNet at 16px, as the multi-node tests train it (channels_last, CPU bf16
    autocast): stage 6's 5x5 depthwise conv sees a 1x1 input, so only its centre tap meets the
    image and every other tap's gradient is exactly 0. With torch's plain Conv2d, 20 of 100
    such steps got garbage there on an AVX-512 CPU, which made two equal runs differ."""
    merge_from_file(os.path.join(_CONFIGS, "effnet", "EN-B3_dds_8npu_full.yaml"))
    merge_from_list([x for kv in TINY_EN_OPTS.items() for x in kv])
    for seed in range(30):
        junk = [torch.full((1 << k,), 7.0 + seed) for k in range(8, 20)]
        del junk
        torch.manual_seed(seed)
        model = builders.build_model().to(memory_format=torch.channels_last)
        x = torch.randn(2, 3, 16, 16).to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x).float().logsumexp(1).sum().backward()
        grad = model.s6.b1.dwise.weight.grad[:, 0].clone()
        assert grad[:, 2, 2].abs().sum() > 0
        grad[:, 2, 2] = 0
        assert torch.count_nonzero(grad) == 0, seed


def test_cpu_bf16_autocast_trains_depthwise_convs_in_fp32():
    """Under CPU bf16 autocast a depthwise conv computes in fp32 where autograd records it (its
    bf16 backward is the slow one) and in bf16 without autograd; other convs follow autocast."""
    torch.manual_seed(0)
    dwise, pwise = blocks.conv2d(8, 8, 3, groups=8), blocks.conv2d(8, 8, 1)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = dwise(x)
        assert y.dtype == torch.float32 and pwise(x).dtype == torch.bfloat16
        with torch.no_grad():
            assert dwise(x).dtype == torch.bfloat16
    assert torch.equal(y, dwise(x))  # the same fp32 conv as without autocast
