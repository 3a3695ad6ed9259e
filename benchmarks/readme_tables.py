"""Write the README's benchmark section from benchmarks/results/*.json (every number quoted, none typed).

Replaces the text between ``<!-- benchmarks:start -->`` and ``<!-- benchmarks:end -->`` in README.md;
``--check`` exits 1 (naming the difference) when the README is not what the results files give.

    python benchmarks/readme_tables.py [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fastsample._io import atomic_write

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


def _load(name):
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _choices(block) -> dict:
    return {(d["method"], d["nfe"]): d for d in block["choices"]}


def _overlap(a, b) -> bool:
    return a["heldout_ci95"][0] <= b["heldout_ci95"][1] and b["heldout_ci95"][0] <= a["heldout_ci95"][1]


def _side_by_side(block, nfes, ours, theirs) -> str:
    """'NFE n: ratio (ours vs theirs, * = 95% intervals overlap)' for each NFE, and the counts."""
    ch = _choices(block)
    cells = []
    for n in nfes:
        a, b = ch.get((ours, n)), ch.get((theirs, n))
        if a and b:
            star = "*" if _overlap(a, b) else ""
            cells.append(f"{n}: {a['heldout'] / b['heldout']:.2f}{star}")
    counts = sorted({ch[ours, n]["count"] for n in nfes if (ours, n) in ch})
    counts_t = sorted({ch[theirs, n]["count"] for n in nfes if (theirs, n) in ch})
    return f"{', '.join(cells)} (chose from {_span(counts)} vs {_span(counts_t)} configurations)"


def _range(vals) -> str:
    return f"{min(vals):.2f}x" if f"{min(vals):.2f}" == f"{max(vals):.2f}" else f"{min(vals):.2f}-{max(vals):.2f}x"


def _span(xs) -> str:
    return f"{xs[0]}" if xs[0] == xs[-1] else f"{xs[0]}-{xs[-1]}"


def _losses(block, nfes, ours, theirs) -> list:
    ch = _choices(block)
    return [
        n for n in nfes if (ours, n) in ch and (theirs, n) in ch and ch[ours, n]["heldout"] > ch[theirs, n]["heldout"]
    ]


def deis(r) -> list[str]:
    lines = [
        f"- `deis.md` ({r['run']} run): per-sample RMSE on held-out seeds, our best DEIS configuration / Diffusers'"
        " best (each chosen on selection seeds from every variant and grid; `*`: the 95% intervals overlap) at NFE"
    ]
    for name, p in r["problems"].items():
        lost = _losses(p, r["nfe"], "all fastsample DEIS", "all Diffusers")
        lines.append(
            f"  {_side_by_side(p, r['nfe'], 'all fastsample DEIS', 'all Diffusers')} on `{name}`"
            + (f"; **we lose at NFE {', '.join(map(str, lost))}**" if lost else "")
            + ";"
        )
    st = r["step_time"]
    ours, theirs = st["fastsample DEISScheduler tab 3"]["median"], st["diffusers DEISMultistepScheduler 3"]["median"]
    lines.append(
        f"  `step()` of DEIS tAB 3 costs {ours / theirs:.2f}x Diffusers' `DEISMultistepScheduler` order 3 on a"
        " 1x4x64x64 latent (medians of interleaved repeats)."
    )
    return lines


def flow(r) -> list[str]:
    lines = [
        "- `flow.md`: per-sample RMSE on held-out seeds, our best flow solver / Diffusers' best (FlowMatch Euler /"
        " Heun, UniPC and DPM-Solver++ on flow sigmas; every grid to every method; `*`: intervals overlap) at NFE"
    ]
    for name, p in r["errors"].items():
        nfes = sorted({d["nfe"] for d in p["choices"]})
        lost = _losses(p, nfes, "all fastsample", "all Diffusers")
        lines.append(
            f"  {_side_by_side(p, nfes, 'all fastsample', 'all Diffusers')} on `{name}`"
            + (f"; **we lose at NFE {', '.join(map(str, lost))}**" if lost else "")
            + ";"
        )
    diff = max(p["flowmatch_euler_vs_our_euler_same_sigmas_max_abs"] for p in r["errors"].values())
    m = r["memory"]["results"]
    lines.append(
        f"  on the same sigmas FlowMatchEuler and our Euler agree to {diff:.0e}. FlowChef's peak memory is"
        f" {m['flowchef']['memory_ratio_to_plain']:.2f}x plain sampling"
        f" (DPS-style: {m['dps']['memory_ratio_to_plain']:.2f}x;"
        f" smallest peaks of {m['plain']['repeats']} interleaved runs each)."
    )
    return lines


def s3(r) -> list[str]:
    ch = _choices(r)
    cells = []
    for n in r["nfe"]:
        a, b = ch["S3 searched schedule (fastsample)", n], ch["all fixed solvers", n]
        cells.append(f"NFE {n}: {100 * (1 - a['heldout'] / b['heldout']):.0f}%{'*' if _overlap(a, b) else ''}")
    fixed = sorted({ch["all fixed solvers", n]["count"] for n in r["nfe"]})
    evals = sorted({ch["S3 searched schedule (fastsample)", n]["count"] for n in r["nfe"]})
    secs = sum(p["seconds"] for p in r["search_provenance"].values())
    return [
        f"- `s3.md`: searched schedules have lower held-out error than the best fixed solver (chosen on the search's"
        f" own seeds from {_span(fixed)} solver x variant x grid configurations, ours and Diffusers'): "
        + ", ".join(cells)
        + f" (searches: {_span(evals)} schedules evaluated each, {secs:.0f} s for all three)."
    ]


def fid(r) -> list[str]:
    out = []
    d = r.get("distance")
    if d and "timing" in d:
        sp = d["speedup_from_scratch_vs"]
        out.append(
            f"- `fid.md`: Frechet distance on {d['dim']}-dim statistics {sp['pytorch_fid_scipy_sqrtm']:.1f}x faster"
            f" than pytorch-fid and {sp['torchmetrics_eigvals']:.1f}x faster than torchmetrics (medians of"
            f" {d['repeat']} interleaved repeats each, CPU)"
        )
    lr = r.get("lowrank")
    if lr and "timing" in lr:
        out.append(
            f"  with {lr['samples_per_set']} samples per set (fewer than dimensions) the low-rank path is"
            f" {lr['speedup_vs_torchmetrics']:.1f}x faster than torchmetrics (medians of {lr['repeat']})"
        )
    s = r.get("streaming")
    if s and "timing" in s.get("ours", {}):
        out.append(
            f"  streaming statistics: {s['speedup_vs_torchmetrics']:.2f}x torchmetrics' speed, peak memory"
            f" {s['ours']['peak_rss_above_start_mib']:.0f} MiB vs"
            f" {s['torchmetrics']['peak_rss_above_start_mib']:.0f} MiB"
        )
    e = r.get("extraction")
    if e and "timing" in e.get("torchmetrics", {}):
        out.append(f"  feature extraction {e['speedup_vs_torchmetrics']:.2f}x torchmetrics' images/s")
    if not out:
        return []
    return [out[0] + (";" if len(out) > 1 else ".")] + [
        x + (";" if i < len(out) - 2 else ".") for i, x in enumerate(out[1:])
    ]


def demo_models(r) -> list[str]:
    m = r["models"]
    floor = r["fd_floor_train_vs_heldout"]
    return [
        f"- `demo_models.md`: the shipped models' Frechet distance is {m['ddpm']['fd'] / floor:.2f}x (DDPM) and"
        f" {m['flow']['fd'] / floor:.2f}x (flow) the train-vs-held-out floor; the classifier's held-out accuracy is"
        f" {100 * r['classifier_heldout_accuracy']:.1f}%."
    ]


def _v3_vs_diffusers(best: dict) -> tuple[list[tuple[int, float]], str]:
    """Per NFE: v3 with validated statistics on its best grid / the best Diffusers solver on its own (held-out
    means, from bench_dpmsolver_v3_heldout's rows), and the configuration counts."""
    pairs, counts = [], set()
    for n, fams in best.items():
        diff = {k: v for k, v in fams.items() if not k.startswith("DPM-Solver-v3") and k != "DEIS (ours)"}
        if V3 not in fams or not diff:
            continue
        pairs.append((int(n), fams[V3]["heldout"][0] / min(v["heldout"][0] for v in diff.values())))
        counts.add(f"{fams[V3]['count']} vs {sum(v['count'] for v in diff.values())}")
    return pairs, "/".join(sorted(counts))


def _never(cells: dict) -> str:
    worse = sum(c["validated"][0] > c["none"][0] + c["none"][1] for c in cells.values())
    return f"{worse}/{len(cells)}"


V3 = "DPM-Solver-v3 (EMS, best grid and options)"


def dpmsolver_v3_heldout(r) -> list[str]:
    lines = [
        "- `dpmsolver_v3_heldout.md` (statistics validated per grid; configurations chosen on noise seed 0, error on"
        " held-out seeds): v3 with statistics on its best grid / the best Diffusers solver on its best grid at NFE"
    ]
    for label, m in r.get("mixtures", {}).items():
        pairs, counts = _v3_vs_diffusers(m.get("best_grid") or {})
        if not pairs:
            continue
        lose = [n for n, x in pairs if x > 1]
        tail = f"; **v3 loses at NFE {', '.join(map(str, lose))}**" if lose else ""
        lines.append(
            f"  {_fmt_ratios(pairs)} (chose from {counts} configurations) on {label}; cells worse than without"
            f" statistics beyond the seed spread: {_never(m['never_worse'])}{tail};"
        )
    for kind, d in r.get("demo", {}).items():
        pairs, counts = _v3_vs_diffusers(d.get("rows") or {})
        lose = [n for n, x in pairs if x > 1]
        tail = f"; **v3 loses at NFE {', '.join(map(str, lose))}**" if lose else ""
        what = f"{_fmt_ratios(pairs)} (chose from {counts} configurations)" if pairs else "best grid not measured"
        lines.append(
            f"  demo {kind}: {what}; cells worse than without statistics beyond the seed spread:"
            f" {_never(d['never_worse'])}{tail};"
        )
    lines[-1] = lines[-1][:-1] + "."
    return lines


def _fmt_ratios(pairs) -> str:
    return ", ".join(f"{n}: {x:.2f}" for n, x in pairs)


def steps(r) -> list[str]:
    groups = {}
    for row in r["rows"]:
        groups.setdefault((row["model"], row["solver"]), []).append((row["nfe"], row["ratio"]))
    cells = []
    for (model, solver), pairs in groups.items():
        parts = []
        for lo, hi in ((4, 6), (8, 10)):
            xs = [(n, x) for n, x in pairs if lo <= n <= hi]
            if not xs:
                continue
            ns, vals = [n for n, _ in xs], [x for _, x in xs]
            where = f"NFE {ns[0]}" if len(ns) == 1 else f"NFE {min(ns)}-{max(ns)}"
            parts.append(f"{where} {_range(vals)}")
        cells.append(f"{model} {solver}: " + ", ".join(parts))
    worse = [
        f"{row['model']} {row['solver']} NFE {row['nfe']} ({row['ratio']:.2f}x)"
        for row in r["rows"]
        if row["ratio"] > 1
    ]
    s3 = r.get("s3")
    vs_s3 = ""
    if s3:
        o, t = s3["ours"], s3["s3"]
        vs_s3 = (
            f" At NFE {s3['nfe']} on the analytic VP mixture, with {o['sample_evaluations']} vs"
            f" {t['sample_evaluations']} sample evaluations, S^3 search reaches a held-out RMSE of"
            f" {t['heldout_rmse']:.3g} against {o['heldout_rmse']:.3g} for UniPC on optimised steps"
            " (S^3 also picks the solver)."
        )
    return [
        "- `steps.md`: optimised step schedules' held-out error / the same solver on its best fixed grid (chosen on"
        " the selection seeds from "
        + _span(sorted({row["fixed_count"] for row in r["rows"]}))
        + " fixed grids): "
        + "; ".join(cells)
        + (f"; **worse than the fixed grid**: {', '.join(worse)}." if worse else ".")
        + vs_s3
    ]


def metric_cost(r) -> list[str]:
    enc = "; ".join(f"{k} {v['seconds_per_1k_images']:.2g}" for k, v in r["encoders"]["encoders"].items())
    met = "; ".join(f"{k} {v['seconds_per_1k_pairs']:.2g} s" for k, v in r["metrics"].items())
    return [
        f"- `metric_cost.md`: seconds per 1,000 images ({r['machine']}, {r['threads']} threads, preprocessing"
        f" included, full-size architectures with random weights): {enc}; from 1,000 + 1,000 features: {met}."
    ]


def fd_accuracy(r) -> list[str]:
    cells = []
    for which, m in r["models"].items():
        c, ref = m["conclusions"], m["reference"]
        s = c["spearman"]
        within = [p["spearman"]["rho"] for p in c["per_nfe"].values() if p["spearman"]]
        cells.append(
            f"demo {which}: {c['fd_below_exact']} of {c['count']} few-step cells have a lower FD than the converged"
            f" ODE solution ({c['exact_fd']:.2f} at {ref['steps'][1]} steps), {c['fd_below_exact_beyond_ci']} beyond"
            f" the paired 95% interval; Spearman rank correlation of FD and RMSE {s['rho']:.2f} over all cells,"
            f" {min(within):.2f} to {max(within):.2f} within one NFE"
        )
    nfes = sorted({n for m in r["models"].values() for n in m["conclusions"]["per_nfe"]}, key=int)
    return [
        "- `fd_accuracy.md`: does a lower Frechet distance mean a more accurate sampler? Few-step configurations"
        f" (NFE {', '.join(nfes)}) against a converged solution of the same noises: " + "; ".join(cells) + "."
    ]


SECTIONS = {"deis": deis, "flow": flow, "s3": s3, "fid": fid, "dpmsolver_v3_heldout": dpmsolver_v3_heldout}
SECTIONS |= {"steps": steps}
SECTIONS |= {"metric_cost": metric_cost, "demo_models": demo_models}
SECTIONS |= {"fd_accuracy": fd_accuracy}


def section() -> str:
    lines = [START, ""]
    lines.append(
        "Written by `python benchmarks/readme_tables.py` from the results files; the protocol behind every"
        " comparison (every grid and variant to every baseline, choices on selection seeds and numbers on held-out"
        " seeds, computed counts, bootstrap intervals, interleaved timing) is in `benchmarks/README.md`."
    )
    lines.append("")
    for name, fn in SECTIONS.items():
        r = _load(name)
        if r is None:
            continue
        try:
            lines += fn(r)
        except (KeyError, AttributeError, TypeError) as e:
            raise SystemExit(
                f"benchmarks/results/{name}.json is not in the format this script reads ({e!r}); rerun its script"
            ) from e
    lines += ["", END]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when README.md differs from the results files")
    args = ap.parse_args(argv)
    readme = ROOT / "README.md"
    text = readme.read_text()
    if text.count(START) != 1 or text.count(END) != 1:
        print(f"README.md needs one {START} and one {END} line", file=sys.stderr)
        return 1
    head, rest = text.split(START)
    _, tail = rest.split(END)
    new = head + section() + tail
    if args.check:
        if new != text:
            print("README.md's benchmark section differs from benchmarks/results; run benchmarks/readme_tables.py")
            return 1
        return 0
    atomic_write(readme, new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
