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

# Format of every log line
_FORMAT = "[%(filename)s: %(lineno)3d]: %(message)s"

# Log file name in OUT_DIR (LOG_DEST file)
_LOG_FILE = "stdout.log"

# Tag in front of the json stats of a line
_TAG = "json_stats: "

# Key holding the type of a json stats line
_TYPE = "_type"


def setup_logging():
    """Sets up logging: INFO from the main process (LOG_DEST), warnings only from the others."""
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


def _round_float(value, prec):
    """Rounds a float to prec decimals, keeping prec significant digits for small values."""
    if not math.isfinite(value):
        return value
    places = prec
    if value != 0.0:
        places = max(prec, prec - 1 - math.floor(math.log10(abs(value))))
    return decimal.Decimal("{:.{}f}".format(value, places))


def float_to_decimal(data, prec=4):
    """Converts the floats in data (nested dicts and lists) to rounded Decimals."""
    if not prec:
        return data
    if isinstance(data, dict):
        return {k: float_to_decimal(v, prec) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [float_to_decimal(v, prec) for v in data]
    if isinstance(data, numbers.Real) and not isinstance(data, numbers.Integral):
        return _round_float(float(data), prec)
    if isinstance(data, numbers.Integral) and not isinstance(data, bool):
        return int(data)
    return data


def dump_log_data(data, data_type, prec=4):
    """Returns the 'json_stats: {...}' line for data (a dict) of the given type."""
    data = float_to_decimal(dict(data, **{_TYPE: data_type}), prec)
    data_json = simplejson.dumps(data, sort_keys=True, use_decimal=True, allow_nan=True)
    return "{}{}".format(_TAG, data_json)


def _parse_line(line):
    """Returns the json stats dict of a log line, or None when the line has none."""
    if _TAG not in line:
        return None
    try:
        data = simplejson.loads(line[line.find(_TAG) + len(_TAG) :], allow_nan=True)
    except simplejson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) and _TYPE in data else None


def load_log_data(log_file, data_types_to_skip=()):
    """Loads the json stats of a log file as {type: {key: [values]}} (as pycls)."""
    if not os.path.isfile(log_file):
        raise PyclsError("log file {} does not exist; check the path".format(log_file))
    with open(log_file, errors="replace") as f:
        lines = [_parse_line(line) for line in f]
    lines = [d for d in lines if d is not None and d[_TYPE] not in data_types_to_skip]
    rows = {}
    for line in lines:
        rows.setdefault(line.pop(_TYPE), []).append(line)
    data = {}
    for data_type, type_rows in rows.items():
        keys = list(dict.fromkeys(k for row in type_rows for k in row))
        data[data_type] = {k: [row.get(k) for row in type_rows] for k in keys}
    return data


def _split_ratio(values):
    """Splits 'a/b' strings into two lists of ints."""
    pairs = [v.split("/") for v in values]
    return [int(a) for a, _ in pairs], [int(b) for _, b in pairs]


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
