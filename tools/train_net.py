#!/usr/bin/env python3
"""Train a classification model."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pycls.launch.cli import run_cli  # noqa: E402


def main():
    """Loads the config from the command line and runs the job."""
    from pycls.core import trainer
    from pycls.launch import ranks

    ranks.run_job(trainer.train_model, sys.argv[1:], __doc__, script=__file__)


if __name__ == "__main__":
    run_cli(main)
