"""The package's layers: importing the library loads no app (the import-linter contract checks the rest)."""

import subprocess
import sys

APPS = ("fastsample.fid", "fastsample.sweep", "fastsample.search", "fastsample.ems", "fastsample.steps")
APPS += ("fastsample.cli", "fastsample.demo")
CODE = """import sys, fastsample
print(' '.join(sorted(m for m in sys.modules if m.startswith('fastsample'))))
print(fastsample.compute_ems.__module__, 'fastsample.ems' in sys.modules)
"""


def test_import_fastsample_loads_no_app_and_compute_ems_on_first_use():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout.splitlines()
    loaded = out[0].split()
    assert "fastsample.schedulers.adapter" in loaded  # the check sees the library's modules
    assert [m for m in loaded if m.startswith(APPS)] == []
    assert out[1].split() == ["fastsample.ems.estimation", "True"]
