"""User-facing errors: one line that names the problem and the fix."""

import sys


class PyclsError(Exception):
    """An error the user can fix (bad path, config, data, checkpoint, device)."""


def run_cli(main):
    """Runs a CLI entry point; a PyclsError ends in one line on stderr and exit 2."""
    try:
        main()
    except PyclsError as e:
        print("error: {}".format(e), file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
