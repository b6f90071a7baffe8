#!/usr/bin/env python3
"""Plot the top-1 error and loss curves of one or more training runs into a PNG.

Each LOG is a log with json_stats lines (OUT_DIR/stdout.log, test/output/<id>/<case>.log) or
an OUT_DIR holding stdout.log. The left panel shows top-1 error per epoch (train solid, test
dashed, EMA test dotted), the right panel the training loss. Runs are named by --names, else
by the log's folder. Needs matplotlib (pip install matplotlib, or requirements-dev.txt).

Example:
    python tools/plot_log.py out/run1 out/run2/stdout.log --out curves.png --names base ema
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pycls.core.errors import PyclsError  # noqa: E402
from pycls.core.io import write_atomic  # noqa: E402
from pycls.launch.cli import run_cli  # noqa: E402

# Log file name in an OUT_DIR
_LOG_NAME = "stdout.log"

# Curves drawn per run: (stats type, label, line style); iter stats stand in for missing epochs
_CURVES = (
    ("train_epoch", "train", "-"),
    ("test_epoch", "test", "--"),
    ("test_ema_epoch", "test EMA", ":"),
)
_ITER_TYPES = {"train_epoch": "train_iter", "test_epoch": "test_iter"}


def parse_args(argv):
    """Parses the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("logs", nargs="+", metavar="LOG", help="log files or OUT_DIR folders")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--names", nargs="+", help="one name per run (default: log folder)")
    parser.add_argument("--title", default="", help="figure title")
    return parser.parse_args(argv)


def log_file(path):
    """Returns the log file of a path (an OUT_DIR means its stdout.log)."""
    return os.path.join(path, _LOG_NAME) if os.path.isdir(path) else path


def run_names(paths, names=None):
    """Returns one name per run: the given names, else one made from each log's path."""
    if names is not None:
        if len(names) != len(paths):
            msg = "--names has {} names for {} logs; give one per log"
            raise PyclsError(msg.format(len(names), len(paths)))
        return list(names)
    files = [os.path.abspath(log_file(p)) for p in paths]
    # An OUT_DIR's stdout.log is named by its folder; any other log (a launcher's
    # test/output/<id>/<case>.log) by its folder and file name
    return [
        _folder(f) if os.path.basename(f) == _LOG_NAME else "{}/{}".format(_folder(f), _stem(f))
        for f in files
    ]


def _folder(path):
    """Returns the name of the folder a file is in."""
    return os.path.basename(os.path.dirname(path))


def _stem(path):
    """Returns a file's name without its extension."""
    return os.path.splitext(os.path.basename(path))[0]


def _epoch_x(stats, path):
    """Returns the x values (epochs, fractional for iter stats) of a stats dict."""
    xs = []
    try:
        for i, epoch in enumerate(stats["epoch"]):
            x = float(str(epoch).split("/")[0])
            if stats.get("iter") and stats["iter"][i]:
                cur, total = (float(v) for v in str(stats["iter"][i]).split("/"))
                x += cur / total - 1.0
            xs.append(x)
    except (ValueError, ZeroDivisionError) as e:
        raise PyclsError("{} has a malformed epoch or iter ({})".format(path, e)) from e
    return xs


def _curve(stats, path):
    """Returns (xs, {"top1_err": ys, "loss": ys}) of a stats dict, sorted by x."""
    xs = _epoch_x(stats, path)
    order = sorted(range(len(xs)), key=xs.__getitem__)
    ys = {k: [stats[k][i] for i in order] for k in ("top1_err", "loss") if k in stats}
    return [xs[i] for i in order], ys


def load_curves(path):
    """Loads a log's curves: {label: (line style, xs, {"top1_err": ys, "loss": ys})}."""
    from pycls.core.logging import load_log_data

    data = load_log_data(log_file(path))
    if not data:
        raise PyclsError("{} has no json_stats lines; give a pycls training log".format(path))
    curves = {}
    for data_type, label, style in _CURVES:
        stats = data.get(data_type) or data.get(_ITER_TYPES.get(data_type, ""))
        if stats and "epoch" in stats:
            curves[label] = (style,) + _curve(stats, path)
    if not curves:
        msg = "{} has json_stats but no train or test epochs ({}); give a training log"
        raise PyclsError(msg.format(path, ", ".join(sorted(data))))
    return curves


def _figure():
    """Returns a matplotlib Figure drawn by the Agg backend (no display needed)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise PyclsError("plotting needs matplotlib: pip install matplotlib") from e
    fig = Figure(figsize=(12, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_runs(runs, out, title=""):
    """Plots runs ([(name, curves)]) into a PNG: top-1 error and loss per epoch."""
    fig = _figure()
    axes = fig.subplots(1, 2)
    panels = (("top1_err", "top-1 error (%)", "Top-1 error"), ("loss", "loss", "Loss"))
    for ax, (key, ylabel, panel_title) in zip(axes, panels):
        for i, (name, curves) in enumerate(runs):
            color = "C{}".format(i % 10)
            for label, (style, xs, ys) in curves.items():
                points = [(x, y) for x, y in zip(xs, ys.get(key, [])) if y is not None]
                if points:
                    run_label = "{} {}".format(name, label)
                    ax.plot(*zip(*points), style, color=color, marker="o", ms=3, label=run_label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, out)


def _save(fig, out):
    """Saves a figure as a PNG through a temporary file (an old --out stays on failure)."""
    try:
        write_atomic(out, lambda f: fig.savefig(f, format="png"))
    except OSError as e:
        raise PyclsError("cannot write {} ({}); check --out".format(out, e.strerror)) from e


def main(argv=None):
    """Plots the curves of the given logs into --out."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    names = run_names(args.logs, args.names)
    runs = [(name, load_curves(path)) for name, path in zip(names, args.logs)]
    plot_runs(runs, args.out, args.title)
    print("Wrote {} ({} runs)".format(args.out, len(runs)))


if __name__ == "__main__":
    run_cli(main)
