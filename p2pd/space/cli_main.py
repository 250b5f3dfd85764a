"""``python -m p2pd.space.cli_main space ...``: the space commands on their own parser.

The same commands as ``p2pd space ...``, for use before (or without) the main parser
registering them; the error handling is the main command line's.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from p2pd.cli import EXIT_FAILURE, EXIT_INTERRUPTED
from p2pd.cli_space import add_space_commands
from p2pd.errors import LocalError, P2pdError
from p2pd.passphrase import hide_arguments


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", metavar="DIR", default=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(prog="p2pd", parents=[common])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_space_commands(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        hide_arguments(sys.argv)
        argv = sys.argv[1:]
    args = build_parser().parse_args(list(argv))
    args.state_dir = getattr(args, "state_dir", None)
    args.json = getattr(args, "json", False)
    try:
        return int(args.handler(args))
    except LocalError as exc:
        print(f"p2pd: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except P2pdError as exc:
        print(f"p2pd: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", EXIT_FAILURE))
    except OSError as exc:
        print(f"p2pd: error: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
