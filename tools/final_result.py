#!/usr/bin/env python3
"""Prints the seed's "Final result" block (FPS, accuracy, E2E seconds) from a run's log."""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pycls.core.errors import PyclsError, run_cli  # noqa: E402


def final_result(log_data, case, e2e):
    """Returns the result lines for the json_stats of a run."""
    train, test = log_data.get("train_epoch", {}), log_data.get("test_epoch", {})
    fps_values = train.get("fps") or test.get("fps")
    if not fps_values:
        raise PyclsError("no train_epoch or test_epoch json_stats in the log; see its errors")
    fps = sum(float(v) for v in fps_values) / len(fps_values)
    top1 = "{:.4f}".format(100.0 - float(test["top1_err"][-1])) if test.get("top1_err") else "-"
    top5 = "{:.4f}".format(100.0 - float(test["top5_err"][-1])) if test.get("top5_err") else "-"
    return [
        "------------------ Final result ------------------",
        "Case : {}".format(case),
        "Final Performance images/sec : {:.2f}".format(fps),
        "Final Train Accuracy (top1) : {}".format(top1),
        "Final Train Accuracy (top5) : {}".format(top5),
        "E2E Training Duration sec : {}".format(e2e),
    ]


def main():
    """Parses the arguments and prints the block."""
    from pycls.core.logging import load_log_data

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("log", help="a log with json_stats lines")
    parser.add_argument("--case", default="", help="the launcher's case name")
    parser.add_argument("--e2e", default="-", help="end-to-end seconds of the run")
    args = parser.parse_args()
    if not os.path.isfile(args.log):
        raise PyclsError("log {} does not exist".format(args.log))
    print("\n".join(final_result(load_log_data(args.log), args.case, args.e2e)))


if __name__ == "__main__":
    run_cli(main)
