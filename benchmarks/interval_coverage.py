"""Coverage and bias of the report's intervals against the alternatives that
were considered, side by side on the same simulated sweeps (no training).

    python benchmarks/interval_coverage.py                 # ~2 min on one core, 2000 sweeps per cell
    python benchmarks/interval_coverage.py --replicates 500 --shapes gao_rl

Sweeps come from `gpo.report.simulation` (defaults shaped like the
over-optimisation testbed: win rate 0.5 -> 0.69 at KL 1 nat, KL a power
1.4 of 1/beta, per-run noise, additive seed effects and seed-specific peak
shifts): IPO's best beta 0.33, DPO's 1.1 (ratio 3.33), DPO's curve at
matched KL 0.01 below IPO's. Grids: the testbed's (10 betas sqrt(2) apart,
0.177 to 4) and 13 or 17 betas 2^(1/4) apart around each family's peak (the
pre-registered design, +-1.5 or +-2 octaves, centred 10% off the peak). Each cell: coverage of the nominal
95% interval among the sweeps that got one (Monte Carlo SE about 0.005 at
2000 sweeps), the share of sweeps with no interval, the mean error of the
point estimate, and the median half-width (best beta and ratio in log beta,
gap in the metric's units).

Methods (best beta; "report" marks what the report uses):
- report: cubic per seed over the peak window, Fieller set over seeds;
- quadratic: the same with a quadratic;
- pooled: the cubic with seed intercepts and one shared shape, residual variance pooled (more degrees of
  freedom; assumes a seed only shifts the curve up or down);
- Wald: the cubic's estimate +- t * sd(per-seed influence) / sqrt(S), symmetric;
- old: the previous report's, a parabola through the grid maximum and its neighbours, percentile bootstrap
  over seeds (200 resamples).
Ratio: report = MOVER, the two Fieller sets' half-widths combined with the correlation of the seeds'
influences; delta = paired per-seed influence differences, t interval (seed as cluster); Bonferroni =
the two families' 97.5% Fieller sets combined; old = the bootstrap's joint resamples.
Gap at KL 1: report = per-seed piecewise-linear reading, paired t interval; unpaired = the two families'
seed-mean curves with their standard errors combined as if independent.
Gao peak KL: report = per-seed RL-form fits, t-inversion set.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # as the other benchmarks: run from anywhere
from gpo.report.gao import fit_gao  # noqa: E402
from gpo.report.gaps import at_kl  # noqa: E402
from gpo.report.intervals import mean_interval, set_around_maximum, t_quantile  # noqa: E402
from gpo.report.peak import FINE, find_peaks, paired_difference, powers  # noqa: E402
from gpo.report.simulation import Family, Scenario, fine_grid, simulate  # noqa: E402

FAMILIES = (Family("ipo", 0.33), Family("dpo", 1.1, scale=0.5, offset=-0.01))


def old_method(x, y, level, rng, n_boot=200):
    """(estimate, replicate vertices (R, B)) of the previous report: 3-point vertex, bootstrap over seeds."""
    R, S, n = y.shape
    draws = rng.integers(0, S, size=(n_boot, S))
    weights = np.stack([np.bincount(row, minlength=S) for row in draws]).astype(float) / S
    means = np.concatenate([y.mean(axis=1)[:, None], np.einsum("bs,rsn->rbn", weights, y)], axis=1)
    i = np.argmax(means, axis=2)
    interior = (i > 0) & (i < n - 1)
    ic = np.clip(i, 1, n - 2)
    take = lambda k: np.take_along_axis(means, (ic + k)[..., None], 2)[..., 0]  # noqa: E731
    y0, y1, y2 = take(-1), take(0), take(1)
    h = x[1] - x[0]
    curv = y2 - 2 * y1 + y0
    with np.errstate(invalid="ignore", divide="ignore"):
        vertex = x[ic] - 0.5 * h * (y2 - y0) / curv
    vertex = np.where(curv < 0, np.clip(vertex, x[ic] - h, x[ic] + h), x[ic])
    vertex = np.where(interior, vertex, x[i])
    return vertex[:, 0], vertex[:, 1:], interior[:, 0]


def percentile(samples, level):
    tail = (1 - level) / 2
    return np.quantile(samples, tail, axis=1), np.quantile(samples, 1 - tail, axis=1)


def pooled(x, y, level, reference_level):
    """Cubic with seed intercepts, shared shape, pooled residual variance: estimate, low, high."""
    base = find_peaks(x, y, level, reference_level)  # for the window
    R, S, n = y.shape
    inside = (x[None, :] >= base.window[:, :1] - 1e-12) & (x[None, :] <= base.window[:, 1:] + 1e-12)
    z = x[None, :] - base.centre[:, None]
    design = np.concatenate([np.broadcast_to(np.eye(S)[None, :, None, :], (R, S, n, S)),
                             np.broadcast_to(powers(z, 3)[:, None, :, 1:], (R, S, n, 3))], axis=-1)
    w = np.broadcast_to(inside[:, None, :], (R, S, n)).astype(float)
    gram = np.einsum("rsn,rsni,rsnj->rij", w, design, design)
    gram = np.where((np.linalg.matrix_rank(gram) == S + 3)[:, None, None], gram, np.eye(S + 3))
    theta = np.linalg.solve(gram, np.einsum("rsn,rsni,rsn->ri", w, design, y)[..., None])[..., 0]
    resid = (y - np.einsum("rsni,ri->rsn", design, theta)) * w
    dof = w.sum(axis=(1, 2)) - S - 3
    cov = np.linalg.inv(gram) * ((resid**2).sum(axis=(1, 2)) / dof)[:, None, None]
    lo, hi = base.window[:, 0] - base.centre, base.window[:, 1] - base.centre
    fine = lo[:, None] + (hi - lo)[:, None] * np.linspace(0, 1, FINE)[None, :]
    c = np.concatenate([np.zeros((R, FINE, S)), powers(fine, 3, 1)[..., 1:]], axis=-1)
    slope = np.einsum("rmi,ri->rm", c, theta)
    se = np.sqrt(np.einsum("rmi,rij,rmj->rm", c, cov, c))
    value = np.einsum("rmi,ri->rm", powers(fine, 3)[..., 1:], theta[:, S:])
    roots = set_around_maximum(fine, slope, t_quantile(level, dof)[:, None] * se, value)
    ok = np.isfinite(base.estimate) & ~roots.touches & roots.found
    est = np.where(roots.found & np.isfinite(base.estimate), roots.estimate + base.centre, np.nan)
    return est, np.where(ok, roots.low + base.centre, np.nan), np.where(ok, roots.high + base.centre, np.nan)


def summary(truth, estimate, low, high):
    truth = np.broadcast_to(truth, np.shape(estimate))
    given = np.isfinite(low) & np.isfinite(high)
    cover = np.mean((low[given] <= truth[given]) & (truth[given] <= high[given])) if given.any() else np.nan
    half = np.median((high[given] - low[given]) / 2) if given.any() else np.nan
    return cover, 1 - given.mean(), np.nanmean(estimate - truth), half


def scenario_rows(scenario, n_seeds, replicates, level, seed):
    rng = np.random.default_rng(seed)
    sim = simulate(scenario, n_seeds, replicates, rng)
    ref, fam = scenario.families
    x = {f.name: np.log(scenario.betas(f.name)) for f in scenario.families}
    truth = {f.name: sim.best_log_beta(f.name) for f in scenario.families}
    y = sim.metric
    rows = {}
    peaks = {f: find_peaks(x[f], y[f], level, scenario.baseline) for f in x}
    p = peaks[fam.name]
    rows["best β: report (cubic, Fieller per seed)"] = summary(truth[fam.name], p.estimate, p.low, p.high)
    q = find_peaks(x[fam.name], y[fam.name], level, scenario.baseline, degree=2)
    rows["best β: quadratic, Fieller per seed"] = summary(truth[fam.name], q.estimate, q.low, q.high)
    rows["best β: cubic, pooled residuals"] = summary(truth[fam.name], *pooled(x[fam.name], y[fam.name], level,
                                                                               scenario.baseline))
    _, wl, wh, _ = mean_interval(p.influence(), level)
    rows["best β: cubic, Wald (delta)"] = summary(truth[fam.name], p.estimate, p.estimate - (wh - wl) / 2,
                                                  p.estimate + (wh - wl) / 2)
    boot = {}
    for f in x:
        boot[f] = old_method(x[f], y[f], level, np.random.default_rng(seed + 1))
    est, reps, interior = boot[fam.name]
    lo, hi = percentile(reps, level)
    rows["best β: old (3-point vertex, bootstrap)"] = summary(truth[fam.name], est, np.where(interior, lo, np.nan),
                                                             np.where(interior, hi, np.nan))
    log_ratio = truth[fam.name] - truth[ref.name]
    d = paired_difference(peaks[fam.name], peaks[ref.name], level)
    rows["ratio: report (MOVER: Fieller sets + seed correlation)"] = summary(log_ratio, d.estimate, d.low, d.high)
    _, dl, dh, n = mean_interval(peaks[fam.name].influence() - peaks[ref.name].influence(), level)
    delta = np.where(peaks[fam.name].bounded & peaks[ref.name].bounded, (dh - dl) / 2, np.nan)
    rows["ratio: delta method (paired seeds, t)"] = summary(log_ratio, d.estimate, d.estimate - delta,
                                                            d.estimate + delta)
    wide = {f: find_peaks(x[f], y[f], 1 - (1 - level) / 2, scenario.baseline) for f in x}
    rows["ratio: Bonferroni of two 97.5% Fieller sets"] = summary(
        log_ratio, d.estimate, wide[fam.name].low - wide[ref.name].high, wide[fam.name].high - wide[ref.name].low)
    both = boot[fam.name][2] & boot[ref.name][2]
    lo, hi = percentile(boot[fam.name][1] - boot[ref.name][1], level)
    rows["ratio: old (bootstrap)"] = summary(log_ratio, boot[fam.name][0] - boot[ref.name][0],
                                             np.where(both, lo, np.nan), np.where(both, hi, np.nan))
    gap = fam.offset - ref.offset
    seeds = at_kl(sim.kl[fam.name], y[fam.name], [1.0])[..., 0] - at_kl(sim.kl[ref.name], y[ref.name], [1.0])[..., 0]
    mean, lo, hi, _ = mean_interval(seeds, level)
    rows["gap at KL 1: report (paired seeds, t)"] = summary(gap, mean, lo, hi)
    mean_a, _, hi_a, n = mean_interval(at_kl(sim.kl[fam.name], y[fam.name], [1.0])[..., 0], level)
    mean_b, _, hi_b, _ = mean_interval(at_kl(sim.kl[ref.name], y[ref.name], [1.0])[..., 0], level)
    half = np.hypot(hi_a - mean_a, hi_b - mean_b)
    rows["gap at KL 1: unpaired seed means"] = summary(gap, mean_a - mean_b, mean_a - mean_b - half,
                                                       mean_a - mean_b + half)
    if scenario.shape == "gao_rl":
        g = fit_gao(sim.kl[fam.name], y[fam.name], "RL", level)
        rows["Gao RL-form peak KL (log)"] = summary(np.log(scenario.peak_kl), np.log(g.peak_kl), np.log(g.low),
                                                    np.log(g.high))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=2000)
    parser.add_argument("--seeds", default="3,5,10")
    parser.add_argument("--shapes", default="gao_rl,mirrored")
    parser.add_argument("--noise", default="0.007,0.012")
    parser.add_argument("--level", type=float, default=0.95)
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    overall = {}
    for shape in args.shapes.split(","):
        for noise in map(float, args.noise.split(",")):
            for each_side in (0, 6, 8):
                grids = {f.name: fine_grid(f.peak_beta * 1.1, each_side=each_side) for f in FAMILIES} \
                    if each_side else {}
                scenario = Scenario(families=FAMILIES, shape=shape, noise=noise, grids=grids)
                label = (f"{2 * each_side + 1} betas 2^(1/4) apart around the predicted peak" if each_side
                         else "10 betas √2 apart (the testbed's)")
                print(f"\n### {shape} hump, per-run noise {noise}, {label}\n")
                print("| method | " + " | ".join(f"{s} seeds: coverage / none / bias / half-width" for s in seeds)
                      + " |")
                print("|---|" + "---|" * len(seeds))
                cells = {}
                for s in seeds:
                    for name, values in scenario_rows(scenario, s, args.replicates, args.level, seed=s).items():
                        cells.setdefault(name, []).append(values)
                for name, values in cells.items():
                    print(f"| {name} | " + " | ".join(f"{c:.3f} / {z:.2f} / {b:+.3f} / {h:.3f}"
                                                      for c, z, b, h in values) + " |")
                    for s, value in zip(seeds, values):
                        overall.setdefault(name, {}).setdefault(s, []).append(value)
    print("\n### Over all the scenarios above: coverage (lowest-highest) / most sweeps without an interval / "
          "largest |bias| / median half-width (range)\n")
    print("| method | " + " | ".join(f"{s} seeds" for s in seeds) + " |")
    print("|---|" + "---|" * len(seeds))
    for name, by_seeds in overall.items():
        cells = []
        for s in seeds:
            c, z, b, h = np.array(by_seeds[s], float).T
            cells.append(f"{np.nanmin(c):.2f}-{np.nanmax(c):.2f} / {np.nanmax(z):.2f} / {np.nanmax(np.abs(b)):.3f} / "
                         f"{np.nanmin(h):.2f}-{np.nanmax(h):.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\n{args.replicates} sweeps per cell; Monte Carlo SE of a coverage near 0.95: "
          f"{np.sqrt(0.95 * 0.05 / args.replicates):.4f}. Wall time {time.perf_counter() - start:.0f} s.")


if __name__ == "__main__":
    main()
