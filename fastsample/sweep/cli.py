"""The ``fastsample sweep CONFIG`` command."""

from __future__ import annotations

import sys

from .config import _int, load_config
from .runner import _table, run_sweep


def main(argv: list[str] | None = None) -> int:
    from .._args import ArgumentParser, positive_int

    p = ArgumentParser(prog="fastsample sweep", description="Run or resume a schedulers x NFE sweep.")
    p.add_argument("config", help="sweep config (.toml, or .yaml with PyYAML)")
    p.add_argument("--output", help="results folder (default: the config's sweep.output)")
    p.add_argument("--num-samples", type=positive_int, help="override sweep.num_samples (at least 2)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--force", action="store_true", help="let save_images write into a folder holding other files")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.output)
    if args.num_samples:
        cfg.num_samples = _int(args.num_samples, "--num-samples", "command line", 2)
    cells = run_sweep(cfg, progress=not args.no_progress, force=args.force)
    print(_table(cells, cfg))
    print(f"results and plot in {cfg.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
