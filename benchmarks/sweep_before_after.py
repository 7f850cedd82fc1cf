"""Wall time of the 18-run sweep (6 GPO families x 3 betas), this version
against an older checkout, side by side on the same machine and settings.

    git worktree add ../perf_before 22c1e75        # the version before the performance work
    python benchmarks/sweep_before_after.py --before ../perf_before          # ~15 min on 2 shared cores
    python benchmarks/sweep_before_after.py --before ../perf_before --repeats 3 --max-steps 300

Each measurement is one `python src/train.py -m <6 losses> beta=0.01,0.1,1`
process (start-up, every job, the end-of-sweep report), with the default
logger (W&B offline) and callbacks (sample evaluation), trainer.max_steps
(default 100) and num_threads=1 (the setting docs/sweeps.md gives for a shared
CPU; both versions get it). The SFT model and the reference log-probs are
cached before timing (a warm-up run per version, untimed), as for any sweep
after the first. Versions alternate within each repeat, so drifting machine
load hits both alike; medians are reported with the load average.
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
LOSSES = "dpo,ipo,slic,exponential,truncated_quadratic,savage"


def sweep_command(version: str, max_steps: int, cache: Path, sweep_dir: Path, extra: list[str]) -> list[str]:
    # The old version's conf/loss held exactly these six losses, so its glob(*) is the same sweep.
    losses = "loss=glob(*)" if version == "before" else f"loss=glob([{LOSSES}])"
    return [sys.executable, "src/train.py", "-m", losses, "beta=0.01,0.1,1", f"trainer.max_steps={max_steps}",
            "num_threads=1", f"cache_dir={cache}", f"hydra.sweep.dir={sweep_dir}", *extra]


def run(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "WANDB_SILENT": "true", "PYTHONPATH": str(cwd / "src")})
    if done.returncode != 0:
        sys.exit(f"failed in {cwd}: {' '.join(command)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def job_times(sweep_dir: Path) -> tuple[int, float]:
    jobs = [json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")]
    finished = [j for j in jobs if j.get("status", "finished") == "finished"]
    return len(finished), sum(j.get("wall_time_s") or 0.0 for j in finished)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the older version")
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "sweep_before_after")
    parser.add_argument("--after-overrides", nargs="*", default=[], help="extra overrides for this version only")
    args = parser.parse_args(argv)
    where = {"before": args.before.resolve(), "after": ROOT}
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for version, cwd in where.items():  # fill the SFT and reference caches, untimed
        extra = args.after_overrides if version == "after" else []
        run(sweep_command(version, 1, out / f"cache_{version}", out / f"warmup_{version}", extra)[:3] +
            ["beta=0.1", "trainer.max_steps=1", "num_threads=1", f"cache_dir={out / f'cache_{version}'}",
             f"hydra.sweep.dir={out / f'warmup_{version}'}", *extra], cwd)
    results = {version: [] for version in where}
    for repeat in range(args.repeats):
        for version, cwd in where.items():
            sweep_dir = out / f"r{repeat}_{version}_{time.strftime('%H%M%S')}"
            extra = args.after_overrides if version == "after" else []
            wall = run(sweep_command(version, args.max_steps, out / f"cache_{version}", sweep_dir, extra), cwd)
            jobs, job_sum = job_times(sweep_dir)
            results[version].append({"wall_s": wall, "jobs": jobs, "job_wall_s_sum": job_sum})
            print(f"[{repeat + 1}/{args.repeats}] {version}: {wall:.1f} s ({jobs} jobs, {job_sum:.1f} s in jobs)",
                  flush=True)
    load = os.getloadavg()
    median = {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in results.items()}
    print(f"\n18-run sweep, trainer.max_steps={args.max_steps}, num_threads=1, W&B offline, medians of "
          f"{args.repeats}; load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} on "
          f"{os.cpu_count()} cores\n")
    print("| version | sweep wall time (s) [runs] | sum of job times (s) | per job (s) |")
    print("|---|---|---|---|")
    for version, m in median.items():
        raw = ", ".join(f"{r['wall_s']:.0f}" for r in results[version])
        print(f"| {version} ({where[version].name}) | {m['wall_s']:.0f} [{raw}] | {m['job_wall_s_sum']:.0f} | "
              f"{m['job_wall_s_sum'] / max(m['jobs'], 1):.1f} |")
    print(f"\nSpeed-up, sweep wall time: {median['before']['wall_s'] / median['after']['wall_s']:.2f}x")
    (out / "results.json").write_text(json.dumps({"runs": results, "load": load}, indent=1))


if __name__ == "__main__":
    main()
