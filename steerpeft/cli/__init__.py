"""The `steerpeft` command line: fit, eval, export, run, info, recipes.

`steerpeft run` is the main job (fit -> evaluate -> export -> report, see
`steerpeft.run`); the other commands do one part each (`commands`, `describe`; the
parser and its help texts in `parser`).  Recipe keys are
overridden with trailing `key.path=value` arguments.  Errors print
`error: <message>` and exit with status 2; `--debug` adds the traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence

from steerpeft.cli.commands import cmd_eval, cmd_export, cmd_fit, cmd_recipes, cmd_run
from steerpeft.cli.describe import cmd_info
from steerpeft.cli.parser import _split_arguments, build_parser
from steerpeft.errors import SteerpeftError

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS = {"run": cmd_run, "fit": cmd_fit, "eval": cmd_eval, "export": cmd_export, "info": cmd_info,
            "recipes": cmd_recipes}


def _quiet_libraries() -> None:
    """Keep transformers' progress bars and warnings out of a --quiet run."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 error, 1 run finished with a failed export)."""
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
        _split_arguments(args, extras, parser)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.quiet:
        _quiet_libraries()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (SteerpeftError, OSError) as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {_message(exc)}", file=sys.stderr)
        return 2


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, SteerpeftError) and exc.filename:
        return f"{exc.strerror or exc}: {exc.filename}"
    return str(exc)
