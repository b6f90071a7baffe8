"""User-facing errors: one line that names the problem and the fix."""

import sys

# Packages the project needs, with what to run when one is missing
_INSTALL_HINT = "pip install -r requirements.txt (or run the README's set-up command)"


class PyclsError(Exception):
    """An error the user can fix (bad path, config, data, checkpoint, device)."""


def run_cli(main):
    """Runs a CLI entry point; a user error ends in one line on stderr and exit 2."""
    try:
        main()
    except PyclsError as e:
        _fail("error: {}".format(e), 2)
    except ModuleNotFoundError as e:
        if not e.name or e.name.split(".")[0] == "pycls":
            _fail("error: the pycls package is not importable; pip install -e . first", 2)
        _fail("error: python package {} is missing; {}".format(e.name, _INSTALL_HINT), 2)
    except KeyboardInterrupt:
        _fail("error: interrupted", 130)


def _fail(message, code):
    """Prints one line on stderr and exits with the code."""
    print(message, file=sys.stderr, flush=True)
    sys.exit(code)
