"""The ``fastsample`` command: ``fastsample {sweep,fid,ems,search,steps} ...``.

Each subcommand lives with its feature and registers itself through ``add_subparser``; they are
imported only when the command line names them, so ``fastsample --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, help)
COMMANDS = {
    "sweep": ("fastsample.sweep", "run a schedulers x NFE evaluation sweep from a TOML/YAML config"),
    "fid": ("fastsample.fid.cli", "Frechet distance between two image folders or .npz statistics files"),
    "ems": ("fastsample.ems", "compute DPM-Solver-v3 empirical model statistics"),
    "search": ("fastsample.usf.cli", "search an S^3 solver schedule for a model and NFE budget"),
    "steps": ("fastsample.steps.cli", "optimise the time steps of a solver for a model and NFE (step schedule)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="fastsample", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    rc = module.main(argv[1:])  # an exit status, or what the subcommand made (e.g. a file path): success
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
