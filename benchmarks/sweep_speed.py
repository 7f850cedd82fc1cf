"""Wall time of the default 18-job sweep, side by side: reference cache off vs
on, and sequential vs joblib with 2 parallel jobs; plus the share of the sweep
spent computing/loading reference log-probs with the cache on.

    python benchmarks/sweep_speed.py                      # ~15-20 min on 2 shared CPU cores
    python benchmarks/sweep_speed.py --max-steps 300 --repeats 3

Each measurement is one `python src/train.py -m 'loss=glob(*)' beta=0.01,0.1,1`
run (process start-up included), with a fresh reference cache, so "cache on"
includes computing it once. The SFT model is trained (or found) before timing
and shared by all, as in any sweep after the first. Configurations are
interleaved across repeats so drifting machine load hits them alike; medians
are reported. Shorter than a default run (--max-steps, default 100 instead of
300; CSV logger instead of W&B offline, no end-of-sweep report) to fit the time.
Every job uses one torch thread (num_threads=1): on a CPU shared with other
work, torch's default of one thread per core makes each job 10-20x slower
(threads spin waiting for each other), which would drown what is measured.
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
SWEEP = ["loss=glob(*)", "beta=0.01,0.1,1"]
JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
CONFIGS = {
    # reference=frozen runs the reference model on every batch; reference=cached (the default) computes
    # its log-probs once per data set and model, on disk under cache_dir.
    "sequential, cache off": ["reference=frozen"],
    "sequential, cache on": ["reference=cached"],
    "joblib n_jobs=2, cache on": ["reference=cached", *JOBLIB],
    "joblib n_jobs=2, cache off": ["reference=frozen", *JOBLIB],  # with --all
}


def common(max_steps: int) -> list[str]:
    return ["logger=csv", "num_threads=1", f"trainer.max_steps={max_steps}", f"trainer.val_check_interval={max_steps}",
            "~callbacks.progress_bar", "~hydra.callbacks.sweep_report"]


def run_sweep(overrides: list[str], sweep_dir: Path, cache_dir: Path, shared_sft: Path) -> dict:
    cache_dir.mkdir(parents=True)
    (cache_dir / "sft").symlink_to(shared_sft)  # fresh reference cache, shared SFT model
    command = [sys.executable, "src/train.py", "-m", *SWEEP, *overrides, f"cache_dir={cache_dir}",
               f"hydra.sweep.dir={sweep_dir}"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "WANDB_SILENT": "true"})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"sweep failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    jobs = [json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")]
    finished = [j for j in jobs if j["status"] == "finished"]
    reference_s = sum(j["stages"].get("reference", {}).get("seconds", 0.0) for j in finished)
    return {
        "sweep_wall_s": wall,
        "jobs_finished": len(finished),
        "job_wall_s_sum": sum(j["wall_time_s"] for j in finished),
        "reference_s": reference_s,
        "reference_built_by": sum(j["stages"].get("reference", {}).get("status") == "built" for j in finished),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--all", action="store_true", help="also joblib with the cache off")
    parser.add_argument("--shared-sft", type=Path, help="an existing cache_dir/sft to reuse (default: train one)")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "outputs" / "benchmarks" / time.strftime("sweep_speed_%Y%m%d_%H%M%S"))
    args = parser.parse_args(argv)
    configs = {name: o for name, o in CONFIGS.items() if args.all or name != "joblib n_jobs=2, cache off"}

    shared_sft = args.shared_sft.resolve() if args.shared_sft else args.out / "shared_cache" / "sft"
    shared_sft.mkdir(parents=True, exist_ok=True)
    print(f"Training/finding the SFT model (not timed) under {shared_sft.parent} ...", flush=True)
    subprocess.run([sys.executable, "src/train.py", *common(1), "reference=frozen", "~callbacks.sample_evaluation",
                    f"cache_dir={shared_sft.parent}", f"hydra.run.dir={args.out / 'warmup'}"],
                   cwd=ROOT, check=True, capture_output=True, env={**os.environ, "WANDB_SILENT": "true"})

    results = {name: [] for name in configs}
    for repeat in range(args.repeats):
        for i, (name, overrides) in enumerate(configs.items()):
            tag = f"r{repeat}_c{i}"
            result = run_sweep([*common(args.max_steps), *overrides], args.out / tag / "sweep",
                               args.out / tag / "cache", shared_sft)
            results[name].append(result)
            print(f"[repeat {repeat + 1}/{args.repeats}] {name}: {result['sweep_wall_s']:.1f} s "
                  f"({result['jobs_finished']} jobs finished)", flush=True)

    median = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in results.items()}
    print(f"\n18-job sweep {' '.join(SWEEP)}, trainer.max_steps={args.max_steps}, "
          f"median of {args.repeats}, on {os.cpu_count()} CPU cores (shared: timings are noisy)\n")
    print("| configuration | sweep wall time (s) | sum of job times (s) | reference log-probs (s) | share of sweep |")
    print("|---|---|---|---|---|")
    for name, m in median.items():
        share = f"{m['reference_s'] / m['job_wall_s_sum']:.1%} of job time" if "cache on" in name else "n/a"
        print(f"| {name} | {m['sweep_wall_s']:.1f} | {m['job_wall_s_sum']:.1f} | {m['reference_s']:.1f} | {share} |")
    off, on = median["sequential, cache off"], median["sequential, cache on"]
    parallel = median["joblib n_jobs=2, cache on"]
    print("\nSpeed-ups (sweep wall time ratio; > 1 means faster):")
    print(f"cache on vs off (sequential): {off['sweep_wall_s'] / on['sweep_wall_s']:.2f}x")
    print(f"joblib n_jobs=2 vs sequential (cache on): {on['sweep_wall_s'] / parallel['sweep_wall_s']:.2f}x")
    if "joblib n_jobs=2, cache off" in median:
        both = off["sweep_wall_s"] / median["joblib n_jobs=2, cache off"]["sweep_wall_s"]
        print(f"joblib n_jobs=2 vs sequential (cache off): {both:.2f}x")
    (args.out / "results.json").write_text(json.dumps({"max_steps": args.max_steps, "runs": results, "median": median},
                                                      indent=2))
    print(f"\nRaw results: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
