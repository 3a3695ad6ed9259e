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

from ._args import error_line

# subcommand -> (module, help)
COMMANDS = {
    "sweep": ("fastsample.sweep.cli", "run a schedulers x NFE evaluation sweep from a TOML/YAML config"),
    "fid": ("fastsample.fid.cli", "Frechet distance between two image folders or .npz statistics files"),
    "ems": ("fastsample.ems.cli", "compute DPM-Solver-v3 empirical model statistics"),
    "search": ("fastsample.search.cli", "search an S^3 solver schedule for a model and NFE budget"),
    "steps": ("fastsample.steps.cli", "optimise the time steps of a solver for a model and NFE (step schedule)"),
}


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
