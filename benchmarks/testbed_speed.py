"""Where a testbed run's wall time goes, and a testbed sweep's wall time,
this version against an older checkout, side by side.

    git worktree add /tmp/gpo-before 5994926      # the version before this work (with time_split)
    python benchmarks/testbed_speed.py --before /tmp/gpo-before       # ~10 min on 2 shared cores
    python benchmarks/testbed_speed.py --before /tmp/gpo-before --losses dpo,ipo --seeds 1,2,3 --repeats 3

Each measurement is one multirun of the over-optimisation testbed as
sweeps/overoptimisation.sh runs it (experiment=overoptimisation, joblib with
--jobs parallel jobs, no sweep report), on a subset of its grid: --losses x
--betas x --seeds. Versions alternate within each repeat, so drifting machine
load hits both alike; medians over repeats are reported with the load average.
Caches (SFT weights, reference log-probs, and in the new version the
reference's samples) are filled by an untimed warm-up of each version, as for
any sweep after the first; what building them costs once is reported apart.

Printed: the sweep's wall time; each run's time split (summary.json
`time_split`, gpo/timing.py; medians over the runs); the share of a run
outside training steps, with and without the process start (paid once per
worker process, not per run: a 204-run sweep spreads it over ~100 runs); and
the full sweep's wall time extrapolated from the per-run cost:

    2 multiruns x 2 process starts (Hydra's, then its workers')
      + 204 runs x (per-run time without process start) / jobs        (reports not included)

The full measurement, to compare with the extrapolation (~10-25 min each):

    (cd /tmp/gpo-before && FIGURES=none bash sweeps/overoptimisation.sh)
    FIGURES=none bash sweeps/overoptimisation.sh
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL_SWEEP_RUNS = 6 * 10 * 3 + 2 * 6 * 2  # sweeps/overoptimisation.sh: families x betas x seeds + temperature check
STAGES = ["process_start", "job_start", "setup", "data", "sft", "reference", "trainer", "logger", "training_steps",
          "validation", "sample_evaluation", "fit_other", "export", "teardown"]


def sweep(cwd: Path, args, sweep_dir: Path, cache: Path, grid: list[str]) -> float:
    command = [sys.executable, "src/train.py", "-m", "experiment=overoptimisation", *grid,
               "data.source.reward_temperature=1", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}",
               "~hydra.callbacks.sweep_report", f"hydra.sweep.dir={sweep_dir}", f"cache_dir={cache}"]
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONPATH": str(cwd / "src")}
    env.pop("OMP_NUM_THREADS", None)  # the experiment sets num_threads=1 itself
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"failed in {cwd}: {' '.join(command)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def run_name(summary: dict) -> str:
    """A run's overrides without the version's own cache directory: the same run in both versions."""
    return " ".join(o for o in summary["overrides"] if not o.startswith("cache_dir="))


def runs(sweep_dir: Path) -> list[dict]:
    summaries = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/summary.json"))]
    if not all(s["status"] == "finished" for s in summaries):
        sys.exit(f"{sweep_dir}: a run failed")
    return summaries


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the older version")
    parser.add_argument("--losses", default="dpo")
    parser.add_argument("--betas", default="0.354,1,2.83")
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--jobs", type=int, default=2, help="joblib's parallel jobs, as sweeps/overoptimisation.sh")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "testbed_speed")
    args = parser.parse_args(argv)
    versions = {"before": args.before.resolve(), "after": ROOT}
    out = args.out.resolve() / time.strftime("%Y%m%d_%H%M%S")
    grid = [f"loss={args.losses}", f"beta={args.betas}", f"seed={args.seeds}"]
    one_off = {}
    for version, cwd in versions.items():  # untimed: fill the caches this grid uses
        start = time.perf_counter()
        sweep(cwd, args, out / f"warmup_{version}", out / f"cache_{version}",
              [f"loss={args.losses.split(',')[0]}", f"beta={args.betas.split(',')[0]}", f"seed={args.seeds}"])
        one_off[version] = time.perf_counter() - start
    results = {version: [] for version in versions}
    for repeat in range(args.repeats):
        for version, cwd in versions.items():
            sweep_dir = out / f"r{repeat}_{version}"
            wall = sweep(cwd, args, sweep_dir, out / f"cache_{version}", grid)
            load = os.getloadavg()
            results[version].append({"wall_s": wall, "load": load, "runs": [s.get("time_split", {})
                                                                             for s in runs(sweep_dir)],
                                     "metrics": {run_name(s): s["metrics"] for s in runs(sweep_dir)}})
            print(f"[{repeat + 1}/{args.repeats}] {version}: {wall:.1f} s for {len(results[version][-1]['runs'])} "
                  f"runs (load {load[0]:.2f})", flush=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args) | {"before": str(args.before), "out": str(out)},
                                                  "one_off_s": one_off, "results": results}, indent=1, default=str))
    print(report(results, args, one_off))
    print(agreement(results))


def report(results: dict, args, one_off: dict) -> str:
    med = statistics.median
    loads = [r["load"][0] for rs in results.values() for r in rs]
    n_runs = len(results["after"][0]["runs"])
    lines = [f"Testbed sweep subset: loss={args.losses} beta={args.betas} seed={args.seeds} ({n_runs} runs), "
             f"joblib n_jobs={args.jobs}, caches warm; medians of {args.repeats} interleaved repeats; load average "
             f"(1 min) after each sweep {min(loads):.2f}-{max(loads):.2f} on {os.cpu_count()} cores", "",
             "| version | sweep wall time (s) [each] | per run, no process start (s) | training steps (s) | "
             "outside training, no process start | outside training, with it | full sweep, extrapolated (min) |",
             "|---|---|---|---|---|---|---|"]
    split, extrapolated = {}, {}
    for version, rs in results.items():
        every = [run for r in rs for run in r["runs"]]
        # each stage's median over the runs that have it (process_start: a worker's first run only)
        split[version] = {stage: med([run[stage] for run in every if stage in run] or [0.0]) for stage in STAGES}
        per_run = med(run["total"] - run.get("process_start", 0.0) for run in every)
        steps = med(run["training_steps"] for run in every)
        starts = [run["process_start"] for run in every if "process_start" in run]
        process_start = med(starts) if starts else 0.0
        outside = med(1 - run["training_steps"] / (run["total"] - run.get("process_start", 0.0)) for run in every)
        with_start = sum(run["total"] - run["training_steps"] for run in every) / sum(run["total"] for run in every)
        extrapolated[version] = (2 * 2 * process_start + FULL_SWEEP_RUNS * per_run / args.jobs) / 60
        walls = [r["wall_s"] for r in rs]
        lines.append(f"| {version} | {med(walls):.1f} [{', '.join(f'{w:.0f}' for w in walls)}] | {per_run:.2f} | "
                     f"{steps:.2f} | {outside:.0%} | {with_start:.0%} | {extrapolated[version]:.1f} |")
    before, after = (med(r["wall_s"] for r in results[v]) for v in ("before", "after"))
    lines += ["", f"Subset sweep: {before / after:.2f}x faster; full sweep extrapolated: "
              f"{extrapolated['before'] / extrapolated['after']:.2f}x ({FULL_SWEEP_RUNS} runs, plus the reports). "
              f"Untimed warm-up (cache fill, one run per seed): before {one_off['before']:.0f} s, "
              f"after {one_off['after']:.0f} s.", "",
              "Per-run time split (s; medians over every run of every repeat that has the stage: process_start "
              "is a worker process's first run only, job_start every later one):", "",
              "| stage | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    for stage in STAGES:
        lines.append(f"| {stage} | " + " | ".join(f"{split[v][stage]:.2f}" for v in results) + " |")
    return "\n".join(lines)


def agreement(results: dict) -> str:
    """The same runs before and after: training numbers (train/, val/) equal to the last digit; the
    sample evaluation's, drawn from other RNG streams, different by sampling noise: z = difference /
    its standard error, about N(0, 1) if the two agree."""
    before, after = results["before"][0]["metrics"], results["after"][0]["metrics"]  # repeats: the same numbers
    pairs = [(before[run], after[run]) for run in before]
    trained = [k for b, _ in pairs for k in b if k.startswith(("train/", "val/")) and "device/" not in k]
    same = sum(b[k] == a[k] for b, a in pairs for k in b if k in trained)
    lines = ["", f"Training numbers (train/, val/) identical before and after: {same} of {len(trained)}", "",
             "| metric | mean before | mean after | z = difference / standard error: mean [min, max] |",
             "|---|---|---|---|"]
    for metric in ("eval/win_rate", "eval/gold_reward", "eval/kl"):
        z = [(a[metric] - b[metric]) / (a[f"{metric}_stderr"] ** 2 + b[f"{metric}_stderr"] ** 2) ** 0.5
             for b, a in pairs]
        lines.append(f"| {metric} | {statistics.mean(b[metric] for b, _ in pairs):.4f} | "
                     f"{statistics.mean(a[metric] for _, a in pairs):.4f} | "
                     f"{statistics.mean(z):+.2f} [{min(z):+.2f}, {max(z):+.2f}] ({len(z)} runs) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
