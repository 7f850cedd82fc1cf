"""One-call GPU check: the project's training step against TRL's DPOTrainer
on a ~0.5B-parameter Llama in bf16, and a 2-job sweep on the same GPU.

    python benchmarks/gpu_check.py --out "$OUT"            # one GPU, ~8 min, no network
    python benchmarks/gpu_check.py --device cpu --tiny     # the same code path on a CPU: tiny model, a few steps

Stages, each in a fresh process that says what it is doing:
  assets         a Llama of 0.49B parameters (Qwen2.5-0.5B's shape: hidden 896,
                 24 layers, 14 heads, 2 KV heads, MLP 4864, vocabulary 151,936,
                 tied embeddings), random weights saved in bf16; pairs in
                 HH-RLHF's format and a BPE tokenizer (benchmarks/shape.py)
  project_sdpa   the project's training (packing, length-grouped batches,
                 chunked log-probs, reference log-probs computed first), sdpa
  project_flash  the same with attn_implementation=flash_attention_2 (one
                 packed row per batch), where flash_attn is installed
  trl            TRL's DPOTrainer, best configuration (precompute_ref_log_probs,
                 no gradient checkpointing), same data, where TRL is installed
  sweep          `src/train.py -m beta=0.1,0.5` with hydra/launcher=joblib and
                 n_jobs=2: two jobs on the one GPU at once

Measured: real (non-padding) tokens/s over the steps after --warmup; model
FLOPs utilisation, 6 x parameters x tokens/s over the GPU's dense bf16 peak
(attention's FLOPs left out; the same formula for both tools); peak GPU
memory (torch.cuda.max_memory_allocated, the reference pass included); the
reference log-probs pass. A stage starts only if its minimum time fits in
what is left of --budget-s and runs under a timeout of the rest, and the table
is rewritten after every stage: a run cut short keeps the rows it finished.
Writes gpu_check.md and gpu_check.json under --out ($OUT when set).
"""

import argparse
import importlib.metadata
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import shape

ROOT = Path(__file__).resolve().parents[1]
# Qwen2.5-0.5B's shape as a Llama (random weights): 0.49B parameters, 136M of them the tied embedding.
HALF_B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
              num_key_value_heads=2, max_position_embeddings=2048, vocab_size=151936, tie_word_embeddings=True)
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
            max_position_embeddings=512, tie_word_embeddings=False)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}  # dense, per GPU
STAGES = {"assets": 60, "project_sdpa": 90, "project_flash": 90, "trl": 120, "sweep": 150}  # minimum seconds (GPU)
BETAS = "0.1,0.5"


def settings(args) -> SimpleNamespace:
    if args.tiny:
        return SimpleNamespace(model=TINY, pairs=64, batch=4, max_length=128, max_prompt_length=96, steps=4,
                               warmup=1, dtype="float32")
    return SimpleNamespace(model=HALF_B, pairs=1024, batch=16, max_length=512, max_prompt_length=384,
                           steps=args.warmup + 30, warmup=args.warmup, dtype="bfloat16")


# ---------------------------------------------------------------- stages (each in its own process)

def peak_memory_gib(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def after_warmup(step_s: list[float], step_tokens: list[int], warmup: int) -> dict:
    timed, tokens = step_s[warmup:], step_tokens[warmup:]
    return {"tokens_s": sum(tokens) / sum(timed), "step_s": statistics.median(timed)}


def stage_assets(args, s) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    start = time.perf_counter()
    assets = shape.build_assets(args.out, s.pairs, model=s.model, dtype=s.dtype, device=args.device)
    config = LlamaConfig.from_pretrained(assets / "model")
    with torch.device("meta"):
        parameters = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    return {"parameters": parameters, "seconds": time.perf_counter() - start, "device_name": name}


def project_overrides(args, s, attention: str) -> list[str]:
    from training_speed import project_overrides as benchmark_overrides

    assets = args.out / "assets"
    overrides = benchmark_overrides(assets, assets / "model", s.steps, args.out / "scratch", None, batch=s.batch,
                                    max_length=s.max_length, max_prompt_length=s.max_prompt_length, dtype=s.dtype)
    overrides.append(f"model.policy.attn_implementation={attention}")
    return overrides + (["trainer=gpu"] if args.device == "cuda" else [])


def stage_project(args, s, attention: str) -> dict:
    from training_speed import train_in_process

    summary = train_in_process(project_overrides(args, s, attention), args.out / "scratch" / attention)
    training = summary.stages["training"]
    return {**after_warmup(training["step_seconds"], training["step_real_tokens"], s.warmup),
            "real_share": training["real_tokens"] / training["batch_tokens"],
            "reference_s": summary.stages["reference"]["seconds"], "peak_gib": peak_memory_gib(args.device)}


def stage_trl(args, s) -> dict:
    from training_speed import trl_worker

    scratch = args.out / "scratch" / "trl"
    worker_args = SimpleNamespace(assets=str(args.out / "assets"), steps=s.steps, scratch=str(scratch),
                                  device=args.device)
    result = trl_worker(worker_args, precompute=True, batch=s.batch, max_length=s.max_length,
                        bf16=s.dtype == "bfloat16")
    return {**after_warmup(result["step_s"], result["step_real_tokens"], s.warmup),
            "real_share": result["real_tokens"] / result["batch_tokens"],
            "reference_s": result["reference_s"], "peak_gib": peak_memory_gib(args.device)}


def stage_sweep(args, s) -> dict:
    sweep_dir = args.out / "scratch" / "sweep"
    overrides = [o for o in project_overrides(args, s, "sdpa") if not o.startswith(("hydra.run.dir", "beta="))]
    command = [sys.executable, str(ROOT / "src" / "train.py"), "-m", *overrides, f"beta={BETAS}",
               "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep_dir}",
               "~hydra.callbacks.sweep_report"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "WANDB_SILENT": "true"})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"the sweep failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
    jobs = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/summary.json"))]
    finished = [j for j in jobs if j["status"] == "finished"]
    rates = [after_warmup(j["stages"]["training"]["step_seconds"], j["stages"]["training"]["step_real_tokens"],
                          s.warmup)["tokens_s"] for j in finished]
    return {"jobs_finished": len(finished), "wall_s": wall, "tokens_s_each": rates,
            "tokens_s": sum(rates) if len(rates) == 2 else None}


def stage(args) -> None:
    s = settings(args)
    runs = {"assets": lambda: stage_assets(args, s), "project_sdpa": lambda: stage_project(args, s, "sdpa"),
            "project_flash": lambda: stage_project(args, s, "flash_attention_2"), "trl": lambda: stage_trl(args, s),
            "sweep": lambda: stage_sweep(args, s)}
    (args.out / f"{args.stage}.json").write_text(json.dumps(runs[args.stage]()))


# ---------------------------------------------------------------- driver

def unavailable(name: str, device: str) -> str | None:
    """Why a stage cannot run here, or None."""
    if name == "project_flash" and device != "cuda":
        return "needs CUDA"
    if name == "project_flash" and importlib.util.find_spec("flash_attn") is None:
        return "flash_attn not installed"
    if name == "trl" and importlib.util.find_spec("trl") is None:
        return "TRL not installed (pip install -r benchmarks/requirements.txt)"
    return None


def environment(device: str) -> dict:
    """Versions, read without importing the packages (the driver stays light)."""
    info = {"python": sys.version.split()[0], "device": device}
    for package in ("torch", "transformers", "trl", "flash_attn"):
        try:
            info[package] = importlib.metadata.version(package.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            info[package] = "not installed"
    return info


def table(info: dict, results: dict, args, s, started: float) -> str:
    parameters = results.get("assets", {}).get("parameters")
    device = results.get("assets", {}).get("device_name", info["device"])
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next(
        (v for k, v in PEAK_BF16.items() if k in device), None)
    lines = [f"GPU check, {device} (torch {info.get('torch')}, transformers "
             f"{info.get('transformers')}, TRL {info['trl']}, flash_attn {info['flash_attn']}); model "
             f"{parameters / 1e6 if parameters else float('nan'):.1f}M parameters, {s.dtype}; {s.batch} pairs a step, "
             f"max_length {s.max_length}; steps {s.warmup + 1}-{s.steps} timed; "
             f"{time.perf_counter() - started:.0f} s of a {args.budget_s:.0f} s budget", "",
             "| stage | status | real tokens/s | vs TRL | MFU | median step (s) | real tokens in batches | "
             "peak memory (GiB) | reference log-probs (s) |", "|---|---|---|---|---|---|---|---|---|"]
    trl = results.get("trl", {}).get("tokens_s")
    for name in STAGES:
        r = results.get(name, {})
        rate = r.get("tokens_s")
        mfu = f"{6 * parameters * rate / peak:.1%}" if rate and parameters and peak else "-"
        status = r.get("status", "not run")
        if name == "sweep" and "wall_s" in r:
            each = ", ".join(f"{x:.0f}" for x in r["tokens_s_each"])
            status += f" ({r['jobs_finished']}/2 jobs, {r['wall_s']:.0f} s; each {each} tokens/s)"
        if name == "assets" and "seconds" in r:
            status += f" ({r['seconds']:.0f} s)"
        cells = [f"{rate:.0f}" if rate else "-", f"{rate / trl:.2f}x" if rate and trl else "-", mfu,
                 f"{r['step_s']:.3f}" if "step_s" in r else "-", f"{r['real_share']:.0%}" if "real_share" in r else "-",
                 f"{r['peak_gib']:.2f}" if "peak_gib" in r else "-",
                 f"{r['reference_s']:.1f}" if "reference_s" in r else "-"]
        lines.append(f"| {name} | {status} | " + " | ".join(cells) + " |")
    if not peak:
        lines.append("\nMFU: unknown peak for this device (--peak-tflops sets it).")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="a tiny model and a few steps (the CPU check)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-time budget of the whole check")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for MFU")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "outputs" / "gpu_check"))
    parser.add_argument("--stage", choices=list(STAGES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage:
        return stage(args)

    started, s = time.perf_counter(), settings(args)
    info, results = environment(args.device), {}
    print(f"GPU check: {json.dumps(info)}", flush=True)
    for name, minimum in STAGES.items():
        left = args.budget_s - (time.perf_counter() - started)
        why = unavailable(name, args.device)
        if why is None and name != "assets" and results["assets"]["status"] != "done":
            why = "no assets"
        if why is None and left < (5 if args.tiny else minimum):
            why = f"time budget ({left:.0f} s left, needs {minimum} s)"
        if why:
            results[name] = {"status": f"skipped: {why}"}
        else:
            print(f"[{time.perf_counter() - started:.0f} s] {name}: running (timeout {left:.0f} s) ...", flush=True)
            command = [sys.executable, __file__, "--stage", name, "--device", args.device, "--out", str(args.out),
                       "--warmup", str(args.warmup), *(["--tiny"] if args.tiny else [])]
            paths = [str(ROOT / "benchmarks"), str(ROOT / "src"), os.environ.get("PYTHONPATH")]  # keeps carried wheels
            env = {**os.environ, "WANDB_SILENT": "true", "TOKENIZERS_PARALLELISM": "false",
                   "PYTHONPATH": os.pathsep.join(filter(None, paths))}
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=left, env=env)
                if done.returncode == 0:
                    results[name] = {"status": "done", **json.loads((args.out / f"{name}.json").read_text())}
                else:
                    results[name] = {"status": f"failed: {done.stderr.strip().splitlines()[-1][:150]}"
                                     if done.stderr.strip() else "failed"}
                    (args.out / f"{name}.log").write_text(done.stdout[-20000:] + done.stderr[-20000:])
            except subprocess.TimeoutExpired:
                results[name] = {"status": "stopped: time budget"}
        print(f"[{time.perf_counter() - started:.0f} s] {name}: {results[name]['status']}", flush=True)
        report = table(info, results, args, s, started)
        (args.out / "gpu_check.md").write_text(report + "\n")
        (args.out / "gpu_check.json").write_text(json.dumps({"environment": info, "results": results}, indent=1))
    print("\n" + report)


if __name__ == "__main__":
    main()
