"""`thresher` entry point: discovers the verbs in thresher/cli/cmd_*.py.

Errors are handled here, once: a :class:`thresher.errors.ThresherError` (and the
builtin exceptions older code still raises for user errors) prints one line
``thresher: error: <message>`` and exits 2; anything else is a bug in thresher and
prints its traceback with a request to report it (exit 1).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import os
import pkgutil
import sys
import traceback
from typing import Optional, Sequence

import thresher
from thresher import progress
from thresher.errors import ThresherError

# Raised for user errors by code not yet converted to ThresherError (kept until all are).
_LEGACY_USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    NotADirectoryError,
    IsADirectoryError,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thresher",
        description="Score, select and compare LLM fine-tuning data.",
    )
    parser.add_argument("--version", action="version", version=f"thresher {thresher.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    pkg = importlib.import_module("thresher.cli")
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("cmd_"):
            mod = importlib.import_module(f"thresher.cli.{info.name}")
            mod.register(sub)
    return parser


def _close_progress_bars() -> None:
    """Close live progress bars (each ends its line) so a message never lands glued onto one."""
    try:
        from tqdm import tqdm  # third-party; only needed when a bar may be open
    except ImportError:  # pragma: no cover
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        with contextlib.suppress(Exception):  # a half-built bar
            bar.close()


def is_user_error(exc: BaseException) -> bool:
    """True for problems the user can fix (one line, exit 2); False for bugs (traceback, exit 1)."""
    if isinstance(exc, (ThresherError, *_LEGACY_USER_ERRORS)):
        return True
    # a missing third-party package is the user's environment; a broken import inside thresher is a bug
    return isinstance(exc, ImportError) and not str(getattr(exc, "name", None) or "").startswith("thresher")


def error_line(exc: BaseException) -> str:
    """``thresher: error: <message>`` on one line."""
    msg = " ".join(part.strip() for part in str(exc).splitlines() if part.strip()) or type(exc).__name__
    if isinstance(exc, KeyError):  # str(KeyError) is the quoted key alone
        msg = f"{type(exc).__name__}: {msg}"
    return f"thresher: error: {msg}"


def report_error(exc: BaseException) -> int:
    """Print ``exc`` the way the CLI does; returns the exit code (2 user error, 1 bug)."""
    _close_progress_bars()
    sys.stdout.flush()
    if is_user_error(exc):
        print(error_line(exc), file=sys.stderr, flush=True)
        return getattr(exc, "exit_code", 2)
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(
        f"thresher: internal error ({type(exc).__name__}); this is a bug in thresher {thresher.__version__}. "
        "Please report it with the command you ran and the traceback above.",
        file=sys.stderr,
        flush=True,
    )
    return 1


def _unknown_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list) -> None:
    """Report arguments no parser took with the verb's own usage (not the top-level one), and the
    verb's option whose name is closest to each unknown one; exits 2 as argparse does."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    verb = sub.choices.get(getattr(args, "command", None) or "") if sub is not None else None
    target = verb or parser
    known = [s for a in target._actions for s in a.option_strings]
    hints = []
    for arg in extra:
        close = difflib.get_close_matches(arg.split("=", 1)[0], known, n=1, cutoff=0.8) if arg.startswith("-") else []
        if close:
            hints.append(f"{arg.split('=', 1)[0]} -> did you mean {close[0]}?")
    hint = f" ({'; '.join(hints)})" if hints else ""
    target.error(f"unrecognized arguments: {' '.join(extra)}{hint}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        _unknown_arguments(parser, args, extra)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with progress.quiet(bool(getattr(args, "quiet", False))):  # every bar below a --quiet command
            rc = args.func(args)
    except KeyboardInterrupt:
        _close_progress_bars()
        print("thresher: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout piped into `head` and closed: not an error of thresher
        with contextlib.suppress(OSError, ValueError):  # no second error when Python flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it
    except Exception as exc:  # the one error path of the CLI
        return report_error(exc)
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
