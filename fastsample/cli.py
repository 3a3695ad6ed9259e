"""The ``fastsample`` command: ``fastsample [--debug] {sweep,fid,ems,search,steps} ...``.

Each subcommand lives with its feature and registers itself through ``add_subparser``; they are
imported only when the command line names them, so ``fastsample --help`` stays fast.

Errors are reported here, in one place: one line ``fastsample CMD: error: ...`` on stderr and exit
status 1, no traceback unless ``--debug`` is given. SIGTERM unwinds like Ctrl-C, so every temporary
file is removed on the way out.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

# subcommand -> (module, help)
COMMANDS = {
    "sweep": ("fastsample.sweep", "run a schedulers x NFE evaluation sweep from a TOML/YAML config"),
    "fid": ("fastsample.fid.cli", "Frechet distance between two image folders or .npz statistics files"),
    "ems": ("fastsample.ems", "compute DPM-Solver-v3 empirical model statistics"),
    "search": ("fastsample.usf.cli", "search an S^3 solver schedule for a model and NFE budget"),
    "steps": ("fastsample.steps.cli", "optimise the time steps of a solver for a model and NFE (step schedule)"),
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``PROG: error: MESSAGE (see PROG --help)``, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def device(text: str):
    """argparse type: a torch device that exists on this machine ('cpu', 'cuda', 'cuda:1', 'mps', ...)."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"not a device: {text!r} ({e})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA devices")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine")
    return dev


def error_line(err: BaseException) -> str:
    """One line for an error: its message, prefixed by its type unless it is an input error."""
    from ._io import UserError

    msg = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, (UserError, ValueError, OSError, KeyError, ImportError)):
        return msg
    return f"{type(err).__name__}: {msg} (rerun with --debug for the traceback)"


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="fastsample", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        module = importlib.import_module(COMMANDS[argv[0]][0])
        rc = module.main(argv[1:])  # an exit status, or what the subcommand made (e.g. a file path): success
    except SystemExit as e:  # argparse errors and --help, SIGTERM
        return e.code if isinstance(e.code, int) else int(e.code is not None)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"fastsample {argv[0]}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        print(f"fastsample {argv[0]}: error: {error_line(e)}", file=sys.stderr)
        return 1
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
