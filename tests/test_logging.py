"""Tests of pycls.core.logging: json_stats lines, log parsing and the logging setup."""

import decimal
import logging as std_logging
import math
import re

import pytest
from conftest import json_stats

import pycls.core.distributed as dist
import pycls.core.logging as logging
from pycls.core.config import cfg
from pycls.core.errors import PyclsError

pytestmark = pytest.mark.usefixtures("fresh_cfg")


@pytest.fixture
def restore_root_logger():
    root = std_logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers, root.level = handlers, level


def test_dump_log_data_line_format():
    data = {"top1_err": 76.123456, "epoch": "1/100", "mem": 12}
    line = logging.dump_log_data(data, "train_epoch")
    assert line == 'json_stats: {"_type": "train_epoch", "epoch": "1/100", "mem": 12, ' + (
        '"top1_err": 76.1235}'
    )
    assert "_type" not in data


def test_float_to_decimal_rounds_and_keeps_small_values():
    out = logging.float_to_decimal({"a": 1.23456789, "lr": 1.6e-5, "n": {"x": 0.5}, "i": 3})
    assert out["a"] == decimal.Decimal("1.2346")
    assert out["lr"] == decimal.Decimal("0.00001600")
    assert out["n"]["x"] == decimal.Decimal("0.5000")
    assert out["i"] == 3 and isinstance(out["i"], int)
    assert logging.float_to_decimal(0.123456, prec=0) == 0.123456


def test_non_finite_values_dump_as_nan_and_inf():
    line = logging.dump_log_data({"loss": float("nan"), "eta": float("inf")}, "train_iter")
    assert "NaN" in line and "Infinity" in line
    assert line.startswith("json_stats: ")
    (data,) = json_stats(line, "train_iter")
    assert math.isnan(data["loss"]) and math.isinf(data["eta"])


def test_load_log_data_round_trip(tmp_path):
    log_file = tmp_path / "stdout.log"
    lines = [
        "[trainer.py:  10]: Start epoch: 1",
        "[meters.py: 120]: " + logging.dump_log_data({"epoch": "1/2", "loss": 2.5}, "train_epoch"),
        "[meters.py: 121]: "
        + logging.dump_log_data({"epoch": "1/2", "top1_err": 50.0}, "test_epoch"),
        "[meters.py: 120]: " + logging.dump_log_data({"epoch": "2/2", "loss": 1.25}, "train_epoch"),
        '[meters.py: 121]: json_stats: {"_type": "test_epoch", "epo',  # a cut-off last line
    ]
    log_file.write_text("\n".join(lines) + "\n")
    data = logging.load_log_data(str(log_file))
    assert data == {
        "train_epoch": {"epoch": ["1/2", "2/2"], "loss": [2.5, 1.25]},
        "test_epoch": {"epoch": ["1/2"], "top1_err": [50.0]},
    }
    skipped = logging.load_log_data(str(log_file), data_types_to_skip=("test_epoch",))
    assert list(skipped) == ["train_epoch"]


def test_load_log_data_fills_keys_missing_from_some_lines(tmp_path):
    log_file = tmp_path / "stdout.log"
    rows = [{"epoch": "1/2"}, {"epoch": "2/2", "bad_files": 3}]
    log_file.write_text("".join(logging.dump_log_data(r, "train_epoch") + "\n" for r in rows))
    data = logging.load_log_data(str(log_file))
    assert data["train_epoch"]["bad_files"] == [None, 3]


def test_load_log_data_missing_file(tmp_path):
    with pytest.raises(PyclsError, match="does not exist"):
        logging.load_log_data(str(tmp_path / "nope.log"))


def test_sort_log_data_orders_by_epoch_and_iter():
    data = {
        "train_iter": {
            "epoch": ["2/2", "1/2", "1/2"],
            "iter": ["1/4", "3/4", "1/4"],
            "v": [3, 2, 1],
        },
        "complexity": {"flops": [10]},
    }
    data = logging.sort_log_data(data)
    assert data["train_iter"]["v"] == [1, 2, 3]
    assert data["train_iter"]["epoch_ind"] == [1, 1, 2]
    assert data["train_iter"]["iter_ind"] == [1, 3, 1]
    assert data["complexity"] == {"flops": 10}


def test_setup_logging_main_process_to_file(tmp_path, restore_root_logger):
    cfg.LOG_DEST = "file"
    logging.setup_logging()
    logging.get_logger("pycls.test").info("hello %s", "there")
    for handler in std_logging.getLogger().handlers:
        handler.flush()
    text = (tmp_path / "stdout.log").read_text()
    assert re.search(r"^\[test_logging\.py: +\d+\]: hello there$", text, re.M), text


def test_setup_logging_other_ranks_only_warn(monkeypatch, capsys, restore_root_logger):
    monkeypatch.setattr(dist, "is_main_proc", lambda: False)
    monkeypatch.setattr(dist, "get_rank", lambda: 3)
    logging.setup_logging()
    logger = logging.get_logger("pycls.test")
    logger.info("quiet")
    logger.warning("loud")
    out, err = capsys.readouterr()
    assert "quiet" not in out + err
    assert re.search(r"\[rank 3\] \[test_logging\.py: +\d+\]: loud", err), err
