"""Training speed as a user sees it: each tool run the way its documentation
says, at its default settings, side by side in one run; and the same at one
thread, to compare with benchmarks/training_speed.py's one-thread figures.

    /work/venvs/trl/bin/python benchmarks/default_settings.py             # ~15 min on 2 cores
    python benchmarks/default_settings.py --repeats 5 --configs project trl

The benchmark's shape (benchmarks/shape.py builds it, untimed): a random Llama
of 4.2M parameters, 512 HH-RLHF-format pairs, batch 8 pairs, max_length 256,
fp32, DPO beta 0.1, AdamW lr 1e-4 with 10 warm-up steps, one epoch (64 steps).

  project           `python src/train.py` with the shape above and nothing
                    else set: num_threads=auto (all cores), W&B offline logger,
                    progress bar, checkpoint, sample evaluation and export at the
                    end, the reference's log-probs computed before training
  project_1thread   the same with num_threads=1
  project_spin      the project before OMP_WAIT_POLICY=PASSIVE became its default
                    (src/train.py): idle threads spin first (GOMP_SPINCOUNT=300000,
                    OpenMP's own default), as in every other tool
  trl               TRL's DPOTrainer in a script, its documented best settings
                    (precompute_ref_log_probs=True, gradient_checkpointing=False),
                    its defaults otherwise (torch's threads: one per core, its
                    progress bar, no reporting integration installed)
  trl_1thread       the same with torch.set_num_threads(1)
  trl_passive       trl with OMP_WAIT_POLICY=PASSIVE (not TRL's default: what the
                    project's default would do for it)

Measured per run, in a fresh process, configurations interleaved within each
repeat (medians over repeats): the training steps after --warmup steps (time
from one step's end to the next's: data loading, forward, backward, optimizer,
the per-step work of callbacks and progress bars), as pairs/s and real
(non-padding) tokens/s, and the whole command's wall time (start-up, data,
reference log-probs, training, and for the project the end-of-run sample
evaluation and export). OMP_NUM_THREADS is removed from the environment, as on
a machine where nobody set it (and OMP_WAIT_POLICY, GOMP_SPINCOUNT, but where a
configuration sets them).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import shape

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["project", "project_1thread", "project_spin", "trl", "trl_1thread", "trl_passive"]
DEFAULT_CONFIGS = ["project", "project_spin", "trl", "project_1thread", "trl_1thread"]
ENVIRONMENT = {"project_spin": {"GOMP_SPINCOUNT": "300000"}, "trl_passive": {"OMP_WAIT_POLICY": "PASSIVE"}}


def project_command(assets: Path, scratch: Path, steps: int, one_thread: bool) -> list[str]:
    return [sys.executable, str(ROOT / "src" / "train.py"), "model=hf", f"model.policy.name_or_path={assets / 'model'}",
            "model.policy.dtype=float32", "data=hh_rlhf", "data.source.path=json",
            f"+data.source.data_files={{train: {assets / 'hh_train.jsonl'}, test: {assets / 'hh_validation.jsonl'}}}",
            f"data.max_length={shape.MAX_LENGTH}", f"data.max_prompt_length={shape.MAX_PROMPT_LENGTH}",
            f"data.batch_size={shape.BATCH}", "loss=dpo", f"beta={shape.BETA}", f"optimizer.lr={shape.LR}",
            f"scheduler.num_warmup_steps={shape.WARMUP}", f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={steps}", f"hydra.run.dir={scratch}", f"cache_dir={scratch / 'cache'}",
            *(["num_threads=1"] if one_thread else [])]


def trl_command(assets: Path, scratch: Path, steps: int, one_thread: bool) -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks" / "training_speed.py"), "--worker", "trl_as_user",
            "--assets", str(assets), "--steps", str(steps), "--threads", "1" if one_thread else "0",
            "--device", "cpu", "--scratch", str(scratch), "--result", str(scratch / "result.json")]


def run_one(config: str, assets: Path, out: Path, steps: int) -> dict:
    with tempfile.TemporaryDirectory(dir=out) as scratch:
        scratch = Path(scratch)
        build = project_command if config.startswith("project") else trl_command
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        env.update(WANDB_SILENT="true", PYTHONPATH=str(ROOT / "src"), **ENVIRONMENT.get(config, {}))
        start = time.perf_counter()
        done = subprocess.run(build(assets, scratch, steps, config.endswith("1thread")), cwd=scratch,
                              capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"{config} failed:\n{done.stderr[-4000:]}")
        if config.startswith("project"):
            summary = json.loads((scratch / "summary.json").read_text())
            training = summary["stages"]["training"]
            result = {"step_s": training["step_seconds"], "step_real_tokens": training["step_real_tokens"],
                      "time_split": summary["time_split"]}
        else:
            result = json.loads((scratch / "result.json").read_text())
        return {"wall_s": wall, "step_s": result["step_s"], "step_real_tokens": result["step_real_tokens"],
                "time_split": result.get("time_split"), "load": os.getloadavg()[0]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=CONFIGS)
    parser.add_argument("--steps", type=int, default=512 // shape.BATCH, help="steps per run (default: one epoch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the step figures")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "default_settings")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    assets = shape.build_assets(out, 512)
    steps = args.steps
    for config in args.configs:  # untimed: file caches, datasets' caches
        run_one(config, assets, out, steps=args.warmup + 2)
    runs = {config: [] for config in args.configs}
    for repeat in range(args.repeats):
        for config in args.configs:
            r = run_one(config, assets, out, steps)
            runs[config].append(r)
            timed = r["step_s"][args.warmup:]
            print(f"[{repeat + 1}/{args.repeats}] {config}: {shape.BATCH * len(timed) / sum(timed):.1f} pairs/s, "
                  f"command {r['wall_s']:.0f} s (load {r['load']:.2f})", flush=True)
            (out / "results.json").write_text(json.dumps(runs, indent=1))  # after every run: a cut-short run keeps them
    print(table(runs, args.warmup, steps))


def table(runs: dict, warmup: int, steps: int) -> str:
    med = statistics.median
    runs = {config: rs for config, rs in runs.items() if rs}

    def rates(r):
        timed, tokens = r["step_s"][warmup:], r["step_real_tokens"][warmup:]
        return shape.BATCH * len(timed) / sum(timed), sum(tokens) / sum(timed)

    s = {c: {"pairs": med(rates(r)[0] for r in rs), "tokens": med(rates(r)[1] for r in rs),
             "step": med(med(r["step_s"][warmup:]) for r in rs), "wall": med(r["wall_s"] for r in rs),
             "loads": [r["load"] for r in rs]} for c, rs in runs.items()}
    loads = [x for m in s.values() for x in m["loads"]]
    base = {c: s.get("trl_1thread" if c.endswith("1thread") else "trl", {}).get("tokens") for c in s}
    lines = [f"Steps {warmup + 1}-{steps} of one epoch (8 pairs a step), max_length {shape.MAX_LENGTH}, fp32, cpu; "
             f"medians of {' / '.join(str(len(rs)) for rs in runs.values())} interleaved repeats; load average "
             f"(1 min) after each run {min(loads):.2f}-{max(loads):.2f} on {os.cpu_count()} cores", "",
             "| configuration | pairs/s | real tokens/s | tokens/s vs TRL at its defaults (same threads) | "
             "median step (s) | whole command (s) |", "|---|---|---|---|---|---|"]
    for c, m in s.items():
        vs = f"{m['tokens'] / base[c]:.2f}x" if base[c] else "-"
        lines.append(f"| {c} | {m['pairs']:.1f} | {m['tokens']:.0f} | {vs} | {m['step']:.3f} | {m['wall']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
