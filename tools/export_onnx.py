#!/usr/bin/env python3
"""Export a trained model to ONNX (input "input", output "logits", dynamic batch axis).

The input "input" is a float32 N x 3 x TRAIN.IM_SIZE x TRAIN.IM_SIZE batch prepared as the test
loader does: the short side resized to TEST.IM_SIZE, a center crop, the channels in
INPUT.CHANNEL_ORDER (bgr by default, as pycls: channel 0 is blue) and each channel normalised
as (x / 255 - mean) / std with the ImageNet mean and std in that order. The file's metadata
(metadata_props) records channel_order, mean, std, im_size and test_im_size, so a consumer can
prepare its images without this repository.

The model is exported at TRAIN.IM_SIZE in eval mode on the CPU. Export needs the onnx package
(pip install onnx; pip install -e .[onnx] adds onnxruntime; requirements-dev.txt has both). By
default the TorchScript exporter runs (torch.onnx.export(dynamo=False)); --dynamo picks the
torch.export one, which also needs onnxscript (pip install onnxscript). Where onnxruntime is
installed the exported model is run on a random batch of 2 and compared with PyTorch: the
largest absolute difference is printed, and above --tol the file is not written and the exit
status is 1. An existing --out is kept unless --force; an --out that is a folder is refused.

Example:
    python tools/export_onnx.py --cfg configs/dds_baselines/effnet/EN-B3_dds_8gpu.yaml \\
        --weights model.pyth --out en_b3.onnx [KEY VALUE ...]
"""

import argparse
import importlib.util
import inspect
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pycls.core.errors import PyclsError  # noqa: E402
from pycls.core.io import write_atomic  # noqa: E402
from pycls.launch.cli import run_cli  # noqa: E402

# Names of the graph's input and output
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def parse_args(argv):
    """Parses the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cfg", required=True, help="config file (.yaml) of the model")
    parser.add_argument("--weights", help="checkpoint (.pyth); default TEST.WEIGHTS")
    parser.add_argument("--out", required=True, help="ONNX file to write (.onnx)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version (17)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.add_argument("--dynamo", action="store_true", help="torch.export exporter (onnxscript)")
    parser.add_argument("--tol", type=float, default=1e-3, help="largest abs difference (1e-3)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE overrides")
    return parser.parse_args(argv)


def load_model(args):
    """Loads cfg and builds the model with its weights, in eval mode on the CPU."""
    import pycls.core.builders as builders
    import pycls.core.checkpoint as cp
    import pycls.core.config as config
    from pycls.core.config import cfg

    config.load_cfg(args.cfg, args.opts)
    weights = args.weights or cfg.TEST.WEIGHTS
    if not weights:
        raise PyclsError("no weights given; pass --weights FILE.pyth (or TEST.WEIGHTS FILE)")
    model = builders.build_model()
    cp.load_weights(weights, model)
    return model.eval()


def export(model, path, im_size, opset, dynamo=False):
    """Writes the model to an ONNX file with a dynamic batch axis."""
    import torch

    if importlib.util.find_spec("onnx") is None:
        msg = "ONNX export needs the onnx package, which is not installed: pip install onnx "
        msg += "(or pip install -e .[onnx], which adds onnxruntime to check the export)"
        raise PyclsError(msg)
    if dynamo and importlib.util.find_spec("onnxscript") is None:
        raise PyclsError("--dynamo needs onnxscript: pip install onnxscript (or drop --dynamo)")
    x = torch.randn(2, 3, im_size, im_size)
    kwargs = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = dynamo  # torch < 2.5 has only the TorchScript exporter
    elif dynamo:
        raise PyclsError("--dynamo needs torch >= 2.5; drop --dynamo")
    if dynamo:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
        kwargs["external_data"] = False
    else:
        kwargs["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated in favour of dynamo=True
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        try:
            torch.onnx.export(model, (x,), path, **kwargs)
        except Exception as e:  # exporter failures come in many types
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            msg = "ONNX export failed ({}); try another --opset{}"
            raise PyclsError(msg.format(reason, "" if dynamo else " or --dynamo")) from e


def max_abs_diff(model, path, im_size, batch_size=2):
    """Runs the ONNX file with onnxruntime and PyTorch; returns the largest abs difference."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = torch.randn(batch_size, 3, im_size, im_size)
    with torch.no_grad():
        expected = model(x).numpy()
    (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
    if got.shape != expected.shape:
        msg = "ONNX output has shape {}, PyTorch {}; the export is broken"
        raise PyclsError(msg.format(got.shape, expected.shape))
    return float(abs(got - expected).max())


def _check_out(args):
    """Refuses a folder, an existing output (unless --force) or a missing output folder."""
    if os.path.isdir(args.out):
        msg = "--out {} is a folder; give the ONNX file to write, like {}"
        raise PyclsError(msg.format(args.out, os.path.join(args.out, "model.onnx")))
    if os.path.exists(args.out) and not args.force:
        raise PyclsError("{} exists; pass --force to replace it".format(args.out))
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise PyclsError("output folder {} does not exist; create it first".format(folder))


def _check_onnx(path):
    """Runs the onnx checker when onnx is installed."""
    if importlib.util.find_spec("onnx") is None:
        return
    import onnx

    try:
        onnx.checker.check_model(path)
    except onnx.checker.ValidationError as e:
        raise PyclsError("the exported ONNX model is invalid ({})".format(e)) from e


def input_metadata(cfg):
    """Returns the metadata that describes the model's input (all values strings)."""
    from pycls.datasets.transforms import mean_std

    mean, std = mean_std(cfg.INPUT.CHANNEL_ORDER)
    return {
        "channel_order": cfg.INPUT.CHANNEL_ORDER,
        "mean": ",".join(str(v) for v in mean),
        "std": ",".join(str(v) for v in std),
        "pixel_scale": "1/255",
        "im_size": str(cfg.TRAIN.IM_SIZE),
        "test_im_size": str(cfg.TEST.IM_SIZE),
        "layout": "NCHW",
    }


def _write_metadata(path, metadata):
    """Adds the input metadata to an ONNX file (where onnx is installed); True if written."""
    if importlib.util.find_spec("onnx") is None:
        return False
    import onnx

    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props}
    onnx.helper.set_model_props(model, dict(props, **metadata))
    onnx.save(model, path)
    return True


def main(argv=None):
    """Exports --weights to --out and checks it against PyTorch where onnxruntime exists."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import pycls.core.net as net
    from pycls.core.config import cfg

    _check_out(args)
    model = load_model(args)
    im_size = cfg.TRAIN.IM_SIZE

    def export_and_check(tmp):
        # BN folded into the convs runs faster; the check compares it with the unfolded model
        export(net.fold_bn(model), tmp, im_size, args.opset, args.dynamo)
        _check_onnx(tmp)
        if not _write_metadata(tmp, input_metadata(cfg)):
            print("onnx is not installed: no input metadata written (pip install onnx)")
        if importlib.util.find_spec("onnxruntime") is None:
            print("onnxruntime is not installed: skipped the check (pip install onnxruntime)")
            return
        diff = max_abs_diff(model, tmp, im_size)
        print("Largest absolute difference ONNX vs PyTorch: {:.3g}".format(diff))
        if not diff <= args.tol:
            msg = "error: the difference is above --tol {:g}; {} not written"
            print(msg.format(args.tol, args.out), file=sys.stderr)
            sys.exit(1)

    write_atomic(args.out, export_and_check, by_path=True)
    msg = "Wrote {} (opset {}, input Nx3x{}x{}, {} channel order)"
    print(msg.format(args.out, args.opset, im_size, im_size, cfg.INPUT.CHANNEL_ORDER))


if __name__ == "__main__":
    run_cli(main)
