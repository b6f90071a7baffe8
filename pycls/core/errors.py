"""User errors: one line that names the problem and the fix (torch-free, imports no pycls)."""

import re
import sys


class PyclsError(Exception):
    """An error the user can fix (bad path, config, data, checkpoint, device)."""

    # Exit status of a CLI that ends with this error
    exit_code = 2


def first_line(error):
    """Returns the first sentence of an error's text, without a leading [source:line] tag."""
    lines = str(error).strip().splitlines()
    line = re.sub(r"^\[[^\]]*\]\s*", "", lines[0] if lines else type(error).__name__)
    return line.split(". ")[0][:200]


def write_stderr_line(message):
    """Writes one line on stderr in one write: print() writes the newline apart, and the lines
    of ranks failing together would run into each other."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
