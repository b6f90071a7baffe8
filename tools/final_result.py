#!/usr/bin/env python3
"""Prints the seed's "Final result" block of a launcher run and writes its ModelZoo summary.

The block holds the seed's three lines with the seed's meanings, then the project's own lines:

    Final Performance images/sec : X   (mean train fps of the run; test fps for an eval run)
    Final Train Accuracy : X           (100 - last train_epoch top1_err; test_epoch for eval)
    E2E Training Duration sec : X
    Case : ...  /  Test Accuracy top1 : X  /  Test Accuracy top5 : X

With --summary_dir it also writes the ModelZoo summary <CaseName>.log (key = value lines) and
train_<CaseName>_loss.txt (one train loss per epoch). With --out_dir a training run's result is
saved as OUT_DIR/final_result.json, and a rerun of a finished run (a log without epoch stats)
prints that saved result. No file is ever overwritten: an earlier one is kept as NAME.1, .2, ...
(the first free number, so the higher the number, the newer the file). --keep PATH only moves
PATH aside that way (the launchers call it before they create their own log).
"""

import argparse
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pycls.core.errors import PyclsError  # noqa: E402
from pycls.core.io import remove_quietly, temp_path, write_atomic  # noqa: E402
from pycls.launch.cli import run_cli  # noqa: E402

# The network the launchers train (the ModelZoo summary's Network)
NETWORK = "EfficientNet-B3"

# The saved result of a training run, in its OUT_DIR
SAVED_NAME = "final_result.json"

# Written for a figure a run does not have (as the ModelZoo scripts do)
MISSING = "None"


def keep_earlier(path):
    """Moves path aside to the first free path.N without replacing any file; returns the name."""
    n = 1
    while True:
        kept = "{}.{}".format(path, n)
        try:
            os.link(path, kept)
        except FileExistsError:
            n += 1
            continue
        except FileNotFoundError:
            return None  # another job moved it first
        except OSError:  # no hard links on this file system
            if os.path.lexists(kept):
                n += 1
                continue
            os.rename(path, kept)
            return kept
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return kept


def write_new(path, text):
    """Writes text to path; an earlier, different file there is kept (keep_earlier) first."""
    if os.path.isfile(path):
        with open(path, errors="replace") as f:
            if f.read() == text:
                return
    tmp = temp_path(path)
    with open(tmp, "w") as f:
        f.write(text)
    try:
        for _ in range(100):
            if os.path.lexists(path):
                keep_earlier(path)
            try:
                os.link(tmp, path)
                return
            except FileExistsError:
                continue  # another job wrote one meanwhile: keep it too
            except OSError:
                os.replace(tmp, path)
                return
        raise PyclsError("could not write {}: other jobs keep writing it".format(path))
    finally:
        remove_quietly(tmp)


def _mean(values):
    """Returns the mean of a list of numbers (None for an empty one)."""
    values = [float(v) for v in values or [] if v is not None]
    return sum(values) / len(values) if values else None


def _pct(err):
    """Returns 100 - err formatted, or MISSING."""
    return MISSING if err is None else "{:.4f}".format(100.0 - float(err))


def _read_cfg(out_dir):
    """Returns the config a run dumped in OUT_DIR (as a dict), or {}."""
    import yaml

    path = os.path.join(out_dir or "", "config.yaml")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _cfg_value(cfg_data, section, key):
    """Returns cfg_data[section][key], or None."""
    value = cfg_data.get(section)
    return value.get(key) if isinstance(value, dict) else None


def _by_epoch(stats, key):
    """Returns the values of key, one per epoch (the last line of an epoch wins), in order."""
    values = {}
    for epoch, value in zip(stats.get("epoch", []), stats.get(key, [])):
        values[int(str(epoch).split("/")[0])] = value
    return [values[e] for e in sorted(values)]


def compute_result(log_data, case, e2e, cfg_data):
    """Returns the figures of a run from its json_stats (train or eval run)."""
    train, test = log_data.get("train_epoch", {}), log_data.get("test_epoch", {})
    if not train.get("fps") and not test.get("fps"):
        raise PyclsError("no train_epoch or test_epoch json_stats in the log; see its errors")
    is_train = bool(train.get("fps"))
    top1 = _by_epoch(test, "top1_err")
    top5 = _by_epoch(test, "top5_err")
    losses = _by_epoch(train, "loss") if is_train else []
    section = "TRAIN" if is_train else "TEST"
    train_top1 = _by_epoch(train, "top1_err") if is_train else top1
    result = {
        "case": case,
        "case_name": "{}_bs{}_{}p_{}".format(
            NETWORK,
            _cfg_value(cfg_data, section, "BATCH_SIZE") or MISSING,
            cfg_data.get("NUM_GPUS") or MISSING,
            "perf" if "performance" in case else "acc",
        ),
        "fps": _mean(train["fps"] if is_train else test["fps"]),
        "train_accuracy": _pct(train_top1[-1] if train_top1 else None),
        "e2e": e2e,
        "test_top1": _pct(top1[-1] if top1 else None),
        "test_top5": _pct(top5[-1] if top5 else None),
        "batch_size": _cfg_value(cfg_data, section, "BATCH_SIZE"),
        "rank_size": cfg_data.get("NUM_GPUS"),
        "losses": [float(v) for v in losses],
    }
    return result


def block_lines(result):
    """Returns the Final result block of a run's figures."""
    fps = result["fps"]
    return [
        "------------------ Final result ------------------",
        "Final Performance images/sec : {}".format(MISSING if fps is None else "%.2f" % fps),
        "Final Train Accuracy : {}".format(result["train_accuracy"]),
        "E2E Training Duration sec : {}".format(result["e2e"]),
        "Case : {}".format(result["case"]),
        "Test Accuracy top1 : {}".format(result["test_top1"]),
        "Test Accuracy top5 : {}".format(result["test_top5"]),
    ]


def summary_text(result):
    """Returns the ModelZoo summary (<CaseName>.log) of a run's figures."""
    fps, batch = result["fps"], result["batch_size"]
    step_ms = "%.2f" % (1000.0 * batch / fps) if fps and batch else MISSING
    losses = result["losses"]
    pairs = [
        ("Network", NETWORK),
        ("RankSize", result["rank_size"] or MISSING),
        ("BatchSize", batch or MISSING),
        ("DeviceType", platform.machine() or MISSING),
        ("CaseName", result["case_name"]),
        ("ActualFPS", MISSING if fps is None else "%.2f" % fps),
        ("TrainingTime", step_ms),
        ("TrainAccuracy", result["train_accuracy"]),
        ("ActualLoss", "%.4f" % losses[-1] if losses else MISSING),
        ("E2ETrainingTime", result["e2e"]),
    ]
    return "".join("{} = {}\n".format(k, v) for k, v in pairs)


def write_summary(result, summary_dir):
    """Writes <CaseName>.log and train_<CaseName>_loss.txt in summary_dir; returns the first."""
    name = result["case_name"]
    path = os.path.join(summary_dir, name + ".log")
    write_new(path, summary_text(result))
    if result["losses"]:
        losses = "".join("%.4f\n" % v for v in result["losses"])
        write_new(os.path.join(summary_dir, "train_{}_loss.txt".format(name)), losses)
    return path


def save_result(result, out_dir):
    """Saves a training run's figures as OUT_DIR/final_result.json (atomically)."""
    path = os.path.join(out_dir, SAVED_NAME)
    write_atomic(path, lambda f: json.dump(result, f, indent=1), text=True)


def load_saved_result(out_dir):
    """Returns the saved figures of OUT_DIR's run, or None."""
    path = os.path.join(out_dir or "", SAVED_NAME)
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and "case_name" in result else None


def run_result(log, case, e2e, out_dir):
    """Returns (figures, note) of the run of log: its own stats, or for a finished run's rerun
    (a log without epoch stats) the result saved in OUT_DIR."""
    from pycls.core.logging import load_log_data

    log_data = load_log_data(log)
    has_stats = any(log_data.get(t, {}).get("fps") for t in ("train_epoch", "test_epoch"))
    if not has_stats and out_dir:
        saved = load_saved_result(out_dir)
        if saved is not None:
            note = "Nothing was trained: the Final result of the finished run in {} (from {}):"
            return saved, note.format(out_dir, os.path.join(out_dir, SAVED_NAME))
    result = compute_result(log_data, case, e2e, _read_cfg(out_dir))
    if out_dir and result["losses"]:
        save_result(result, out_dir)
    return result, None


def main():
    """Parses the arguments, prints the block and writes the summary files."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("log", nargs="?", help="the run's log (json_stats lines)")
    parser.add_argument("--case", default="", help="the launcher's case name")
    parser.add_argument("--e2e", default=MISSING, help="end-to-end seconds of the run")
    parser.add_argument("--out_dir", default="", help="the run's OUT_DIR (config, saved result)")
    parser.add_argument("--summary_dir", default="", help="where to write the ModelZoo summary")
    parser.add_argument("--keep", metavar="PATH", help="only move PATH aside to PATH.N")
    args = parser.parse_args()
    if args.keep:
        kept = keep_earlier(args.keep)
        if kept:
            print("Kept the earlier {} as {}".format(args.keep, kept), file=sys.stderr)
        return
    if not args.log:
        raise PyclsError("no log given; pass the log of a run (json_stats lines)")
    if not os.path.isfile(args.log):
        raise PyclsError("log {} does not exist".format(args.log))
    result, note = run_result(args.log, args.case, args.e2e, args.out_dir)
    lines = ([note] if note else []) + block_lines(result)
    if args.summary_dir:
        path = write_summary(result, args.summary_dir)
        lines.append("ModelZoo summary ({}) : {}".format(result["case_name"], path))
    print("\n".join(lines))


if __name__ == "__main__":
    run_cli(main)
