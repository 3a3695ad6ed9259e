"""Run ``fastsample ARGS`` (or ``-c CODE``) in this process and SIGKILL it at the K-th EVENT.

    python tests/fault_runner.py EVENT K fastsample-args...
    python tests/fault_runner.py EVENT K -c "python code"

EVENT: ``write`` (a finished temporary file, just before its rename), ``renamed`` (just after it),
``generate`` (a sweep batch), ``evaluate`` (a search fitness evaluation), ``jvp`` (an EMS batch);
``EVENT:term`` sends SIGTERM instead of SIGKILL. K = 0 never kills. At a normal exit the number of
events seen is printed as ``EVENTS n`` on stderr.
"""

import atexit
import os
import signal
import sys

event, k, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
event, _, how = event.partition(":")
sig = signal.SIGTERM if how == "term" else signal.SIGKILL
seen = [0]
atexit.register(lambda: print(f"EVENTS {seen[0]}", file=sys.stderr))


def tick():
    seen[0] += 1
    if seen[0] == k:
        os.kill(os.getpid(), sig)


def counted(fn):
    def wrapper(*a, **kw):
        tick()
        return fn(*a, **kw)

    return wrapper


if event in ("write", "renamed"):
    real_replace = os.replace

    def replace(src, dst, **kw):
        if event == "write":
            tick()
        real_replace(src, dst, **kw)
        if event == "renamed":
            tick()

    os.replace = replace
elif event == "generate":
    from fastsample.sweep import sources

    sources.UNetSource.generate = counted(sources.UNetSource.generate)
elif event == "evaluate":
    from fastsample.search import baselines, evolution

    evolution.fitness_of = baselines.fitness_of = counted(evolution.fitness_of)
elif event == "jvp":
    from fastsample.ems import estimation

    estimation._jvp = counted(estimation._jvp)
else:
    raise SystemExit(f"unknown event {event!r}")

if args[:1] == ["-c"]:
    exec(compile(args[1], "<fault_runner -c>", "exec"))
else:
    from fastsample.cli import main

    raise SystemExit(main(args))
