"""benchmarks/bench_fd_accuracy.py: the conclusions it states from the data."""

import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_fd_accuracy as B  # noqa: E402


def test_conclusions_count_and_rank_from_the_rows():
    rng = np.random.default_rng(0)
    rows = []
    for nfe in B.NFES:
        for k in range(4):
            fd, rmse = float(rng.uniform(10, 20)), float(rng.uniform(0.01, 0.05))
            diff_hi = -0.1 if k == 0 else 1.0  # one cell per NFE below the exact FD beyond its interval
            rows.append({"label": f"c{k}", "nfe": nfe, "fd": fd, "rmse": {"mean": rmse},
                         "fd_minus_exact": {"value": 0.0, "ci95": [-1.0, diff_hi]}})  # fmt: skip
    rows.append({"label": "skipped", "nfe": B.NFES[0], "skipped": "cannot make exactly 5 model calls"})
    model = {"rows": rows, "reference": {"fd": {str(B.REFERENCE_STEPS[1]): {"fd": 15.0}}, "mean_rmse_between": 0.02}}
    c = B.conclusions(model)
    done = rows[:-1]
    assert c["count"] == len(done) and c["exact_fd"] == 15.0
    assert c["fd_below_exact"] == sum(r["fd"] < 15.0 for r in done)
    assert c["fd_below_exact_beyond_ci"] == len(B.NFES) and c["fd_above_exact_beyond_ci"] == 0
    assert c["rmse_within_reference_movement"] == sum(r["rmse"]["mean"] <= 0.02 for r in done)
    rho = scipy.stats.spearmanr([r["fd"] for r in done], [r["rmse"]["mean"] for r in done]).statistic
    assert c["spearman"]["rho"] == pytest.approx(rho) and c["spearman"]["n"] == len(done)
    for nfe in B.NFES:
        here = [r for r in done if r["nfe"] == nfe]
        p = c["per_nfe"][str(nfe)]
        best = min(here, key=lambda r: r["rmse"]["mean"])
        assert p["lowest_rmse"]["label"] == best["label"]
        assert p["lowest_rmse"]["fd_rank"] == 1 + sorted(r["fd"] for r in here).index(best["fd"])
        low = min(here, key=lambda r: r["fd"])
        assert p["lowest_fd"]["label"] == low["label"]
        assert p["lowest_fd"]["rmse_rank"] == 1 + sorted(r["rmse"]["mean"] for r in here).index(low["rmse"]["mean"])
