"""Logging (as pycls): plain text lines plus json_stats lines that scripts parse."""

import decimal
import logging
import math
import numbers
import os
import sys

import simplejson

from pycls.core.config import cfg
from pycls.core.errors import PyclsError

# Format of every log line, the log file in OUT_DIR (LOG_DEST file), the tag of a json stats
# line and its key that holds the line's type
_FORMAT = "[%(filename)s: %(lineno)3d]: %(message)s"
_LOG_FILE = "stdout.log"
_TAG, _TYPE = "json_stats: ", "_type"


def setup_logging():
    """Sets up logging: INFO from the main process (LOG_DEST), warnings only from the others."""
    # Imported here: log readers (final_result.py, plot_log.py) run without torch
    import pycls.core.distributed as dist

    if dist.is_main_proc():
        level, fmt = logging.INFO, _FORMAT
        if cfg.LOG_DEST == "stdout":
            handler = logging.StreamHandler(sys.stdout)
        else:
            handler = logging.FileHandler(os.path.join(cfg.OUT_DIR, _LOG_FILE))
    else:
        level, fmt = logging.WARNING, "[rank {}] ".format(dist.get_rank()) + _FORMAT
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def get_logger(name):
    """Returns a logger with the given name."""
    return logging.getLogger(name)


def float_to_decimal(data, prec=4):
    """Rounds the floats in data (nested dicts, lists) to prec decimals, or prec digits."""
    if not prec:
        return data
    if isinstance(data, dict):
        return {k: float_to_decimal(v, prec) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [float_to_decimal(v, prec) for v in data]
    if isinstance(data, bool) or not isinstance(data, numbers.Real):
        return data
    if isinstance(data, numbers.Integral):
        return int(data)
    value = float(data)
    if not math.isfinite(value):
        return value
    places = max(prec, prec - 1 - math.floor(math.log10(abs(value)))) if value else prec
    return decimal.Decimal("{:.{}f}".format(value, places))


def dump_log_data(data, data_type, prec=4):
    """Returns the 'json_stats: {...}' line for data (a dict) of the given type."""
    data = float_to_decimal(dict(data, **{_TYPE: data_type}), prec)
    return _TAG + simplejson.dumps(data, sort_keys=True, use_decimal=True, allow_nan=True)


def _parse_line(line):
    """Returns the json stats dict of a log line, or None when the line has none."""
    try:
        data = simplejson.loads(line.split(_TAG, 1)[1], allow_nan=True)
    except (IndexError, simplejson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and _TYPE in data else None


def load_log_data(log_file, data_types_to_skip=()):
    """Loads the json stats of a log file as {type: {key: [values]}} (as pycls)."""
    if not os.path.isfile(log_file):
        raise PyclsError("log file {} does not exist; check the path".format(log_file))
    rows = {}
    with open(log_file, errors="replace") as f:
        for line in map(_parse_line, f):
            if line is not None and line[_TYPE] not in data_types_to_skip:
                rows.setdefault(line.pop(_TYPE), []).append(line)
    keys = {t: dict.fromkeys(k for row in r for k in row) for t, r in rows.items()}
    return {t: {k: [row.get(k) for row in r] for k in keys[t]} for t, r in rows.items()}


def _split_ratio(values):
    """Splits 'a/b' strings into two lists of ints."""
    return [list(map(int, column)) for column in zip(*(v.split("/") for v in values))]


def sort_log_data(data):
    """Sorts the loaded log data by epoch (and iter), adding epoch_ind/max and iter_ind/max."""
    for t in data:
        if "epoch" not in data[t]:
            data[t] = {k: v[0] if len(v) == 1 else v for k, v in data[t].items()}
            continue
        data[t]["epoch_ind"], data[t]["epoch_max"] = _split_ratio(data[t]["epoch"])
        order = data[t]["epoch_ind"]
        if "iter" in data[t]:
            data[t]["iter_ind"], data[t]["iter_max"] = _split_ratio(data[t]["iter"])
            itr = zip(order, data[t]["iter_ind"], data[t]["iter_max"])
            order = [e + (i - 1) / m for e, i, m in itr]
        index = sorted(range(len(order)), key=lambda i: order[i])
        for k in data[t]:
            data[t][k] = [data[t][k][i] for i in index]
    return data
