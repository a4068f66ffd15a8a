"""The ``lorasum`` command line: one parser, one place that maps errors to exit codes.

Exit codes: 0 success; 1 internal error (a bug: please report it with ``--debug``);
2 user error (bad file, config, adapter or flag: one line naming the file or the flag and
the problem; a flag the parser refuses is one line too, without the usage block);
130 interrupted; 128 + signal number (130 SIGINT, 143 SIGTERM) when training stopped on a
signal after saving a checkpoint (continue with ``--resume``; ``reproduce`` continues by itself).
A file-system error that reaches this level with a file name (no space, no permission, missing
file, symlink loop, folder where a file belongs) is a user error too. ``--allow-pickle`` lets
loaders read pickle weight files (:func:`lorasum.storage.allow_pickle`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import logging
import sys
import traceback

from lorasum import __version__
from lorasum.errors import UserError

__all__ = ["main", "build_parser"]

#: Subcommand modules, in the order of ``lorasum --help``; imported by :func:`build_parser`, not when this
#: package is (they import pydantic, yaml and, to list the composition methods, torch): a Ctrl-C while they
#: load is then inside :func:`main`, which reports it in one line
_COMMANDS = ("train", "compose", "similarity", "evaluate", "reproduce", "data")


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, as lorasum's other user errors are: the message
    (which names the flag, e.g. ``argument --batch-size: invalid int value: 'abc'``) and where to find
    the usage, instead of the usage block. Exits with status 2. Subcommand parsers are of this class
    too (``add_subparsers`` makes them of the parent's class)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (subcommands train, compose, similarity, eval, reproduce, report, data)."""
    parser = _Parser(
        prog="lorasum",
        description="Train one LoRA adapter per domain, compose adapters exactly, measure their geometry, "
        "and compare with fine-tuning on the merged data (arXiv 2508.11985).",
    )
    parser.add_argument("--version", action="version", version=f"lorasum {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info logs")
    common.add_argument("--allow-pickle", action="store_true",
                        help="also read pickle weight files (.bin/.pt/.pth/.ckpt); loading them can run code, "
                        "so only for files you trust")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub, common)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    if not args.debug:
        import warnings

        # deprecation notices about transformers' own internals are not the user's to act on
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers(\.|$)")
        for noisy in ("transformers", "peft", "huggingface_hub", "urllib3", "filelock"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        try:
            import transformers

            transformers.utils.logging.set_verbosity_error()
            transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars; lorasum has its own
        except Exception:  # pragma: no cover - transformers missing is reported later
            pass


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 1 internal error, 2 user error, 130 interrupted).

    All but this package's own few imports (the standard library's, ``lorasum`` and ``lorasum.errors``)
    runs inside the ``try``: building the parser (which imports the subcommands and their libraries) and
    setting up logging (which imports transformers) too, so that a Ctrl-C in the first seconds is the same
    one line (exit 130; the traceback with ``--debug``) as one later on."""
    given = sys.argv[1:] if argv is None else list(argv)
    args: argparse.Namespace | None = None
    try:
        if {"-q", "--quiet"} & set(given):
            # read by tqdm when it is imported (building the parser imports it): this also silences the
            # progress bars of libraries, such as transformers' GGUF loader
            os.environ.setdefault("TQDM_DISABLE", "1")
        parser = build_parser()
        args = parser.parse_args(given)
        _setup_logging(args)
        from lorasum.storage import allow_pickle

        with allow_pickle(getattr(args, "allow_pickle", False)):
            return int(args.func(args) or 0)
    except UserError as e:
        if _debug(args, given):
            traceback.print_exc()
        print(f"lorasum: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as Unix tools do
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        if e.errno not in _USER_ERRNOS or not e.filename:
            return _internal(e, _debug(args, given))
        if _debug(args, given):
            traceback.print_exc()
        print(f"lorasum: error: {e.filename}: {e.strerror or errno.errorcode.get(e.errno, e.errno)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        command = getattr(args, "command", None)
        if getattr(e, "complete", False):  # TrainingStopped: the signal came in the last step; the adapter is saved
            more = "" if command == "train" else "; run the same command again to continue"
            print(f"lorasum: {e}{more}", file=sys.stderr)
            return 128 + e.signum
        if getattr(e, "checkpoint", None) is not None:  # TrainingInterrupted: a checkpoint was saved
            again = "run the same command with --resume" if command == "train" else "run the same command again"
            print(f"lorasum: {e}; {again} to continue", file=sys.stderr)
            return 128 + e.signum
        if getattr(e, "signum", None) is not None:  # a signal: what was saved is said in the message
            print(f"lorasum: {e}; run the same command again to continue", file=sys.stderr)
            return 128 + e.signum
        if _debug(args, given):
            traceback.print_exc()
        print("lorasum: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not the user's fault
        return _internal(e, _debug(args, given))


def _debug(args: argparse.Namespace | None, given: list[str]) -> bool:
    """Whether to show tracebacks: ``--debug`` as parsed, or, when the error came before the arguments
    were parsed (a Ctrl-C while the parser is built), as typed."""
    return bool(args.debug) if args is not None and hasattr(args, "debug") else "--debug" in given


# OSErrors with a file name that a user causes and can fix (mapped to exit 2)
_USER_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.EACCES, errno.EPERM, errno.ENOSPC,
                errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG, errno.EFBIG}


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split("\n")).strip() or type(e).__name__


def _internal(e: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"lorasum: internal error: {type(e).__name__}: {_one_line(e)} (run with --debug for the traceback)",
          file=sys.stderr)
    return 1
