"""The `steerpeft` command line: fit, eval, export, run, info, recipes.

`steerpeft run` is the main job (fit -> evaluate -> export -> report, see
`steerpeft.run`); the other commands do one part each (`commands`, `describe`; the
parser and its help texts in `parser`).  Recipe keys are
overridden with trailing `key.path=value` arguments.  Errors print
`error: <message>` and exit with status 2; `--debug` adds the traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from steerpeft.cli.commands import cmd_eval, cmd_export, cmd_fit, cmd_recipes, cmd_run
from steerpeft.cli.describe import cmd_info
from steerpeft.cli.parser import _split_arguments, build_parser
from steerpeft.errors import SteeringWarning, SteerpeftError

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


@contextlib.contextmanager
def _steering_warnings_shown_plainly() -> Iterator[None]:
    """Print our own warnings as `warning: ...` lines: the user needs the message, not our source line."""
    plain = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None, **extra: Any) -> None:
        if issubclass(category, SteeringWarning):
            print(f"warning: {message}", file=file or sys.stderr)
        else:
            plain(message, category, filename, lineno, file, line)

    warnings.showwarning = show  # type: ignore[assignment]
    try:
        yield
    finally:
        warnings.showwarning = plain


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
        with _steering_warnings_shown_plainly():
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
