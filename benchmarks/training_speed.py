"""Preference-training speed, side by side on the same work: this project,
TRL's DPOTrainer and a bare PyTorch loop; same model, data, batch, optimizer.

    pip install -r benchmarks/requirements.txt      # TRL, for the comparison only
    python benchmarks/training_speed.py                       # ~25 min on 2 shared CPU cores
    python benchmarks/training_speed.py --repeats 5 --configs project trl bare

What it builds first (under --out, not timed; benchmarks/shape.py): a
random-initialised Llama of about 4.2M parameters saved with save_pretrained;
a BPE tokenizer trained offline on the benchmark's own text; preference pairs
in the format of Anthropic's HH-RLHF.

Every configuration trains one epoch (all train pairs, batch 8 pairs, DPO,
beta 0.1, AdamW lr 1e-4, linear schedule with 10 warmup steps, gradient
clipping 1.0, fp32, no gradient checkpointing) in a fresh process; the
configurations are interleaved within each repeat so drifting machine load
hits them alike, and medians over repeats are reported. Measured per run:
  - epoch time: the training loop, first step start to last step end, data
    loading included; set-up and reference log-probs reported apart;
  - real tokens/s: non-padding tokens the epoch processed / epoch time
    (each framework's own count; they tokenize and truncate slightly differently);
  - peak memory: the process's peak RSS on CPU, max allocated on a GPU.

Configurations:
  project         python src/train.py defaults (packing, length grouping, chunked
                  log-probs, cached reference), through the real config and Trainer
  project_padded  the same with the previous behaviour: padded batches in random
                  order, full-vocabulary float32 logits
  project_compiled  the defaults plus model.compile=true (torch.compile, inductor)
  trl             TRL DPOTrainer, its best configuration: precompute_ref_log_probs=True
  trl_on_the_fly  TRL DPOTrainer with the reference model run on every batch
  trl_as_user     trl with TRL's defaults for the rest (progress bar, saving, reporting):
                  benchmarks/default_settings.py runs it
  bare            a bare PyTorch loop doing the project's computation (same batches,
                  packing, chunked log-probs, precomputed reference): the floor
  bare_padded     a bare loop, padded batches in random order, full logits
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shape import BATCH, BETA, LR, MAX_LENGTH, MAX_PROMPT_LENGTH, WARMUP, build_assets

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["project", "project_padded", "project_compiled", "trl", "trl_on_the_fly", "trl_as_user", "bare",
           "bare_padded"]
DEFAULT_CONFIGS = ["project", "project_padded", "trl", "bare", "bare_padded"]


# ---------------------------------------------------------------- workers (one process each)

def peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def project_overrides(assets: Path, model: Path, steps: int, scratch, threads, batch: int = BATCH,
                      max_length: int = MAX_LENGTH, max_prompt_length: int = MAX_PROMPT_LENGTH,
                      dtype: str = "float32") -> list[str]:
    """The project's defaults on the benchmark's data, timing the training steps alone (no sample
    evaluation, checkpoint or progress bar; CSV logs)."""
    return [
        "model=hf", f"model.policy.name_or_path={model}", f"model.policy.dtype={dtype}", "model.sft.steps=0",
        "data=hh_rlhf", "data.source.path=json",
        f"+data.source.data_files={{train: {assets / 'hh_train.jsonl'}, test: {assets / 'hh_validation.jsonl'}}}",
        f"data.max_length={max_length}", f"data.max_prompt_length={max_prompt_length}", f"data.batch_size={batch}",
        "data.num_proc=null", "loss=dpo", f"beta={BETA}", f"optimizer.lr={LR}", f"scheduler.num_warmup_steps={WARMUP}",
        f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", "+trainer.limit_val_batches=0",
        "logger=csv", "~callbacks.sample_evaluation", "~callbacks.progress_bar", "~callbacks.model_checkpoint",
        "+trainer.enable_checkpointing=false",
        f"num_threads={threads or 'auto'}", f"cache_dir={scratch}/cache", "hydra.run.dir=.",
    ]


def train_in_process(overrides: list[str], output_dir):
    """gpo.run.train on the composed config, as src/train.py would run it; returns the RunSummary."""
    sys.path.insert(0, str(ROOT / "src"))
    import wandb  # noqa: F401  (before Lightning, as src/train.py)
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from gpo.run import train

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return train(cfg)


def project_worker(args, variant: str) -> dict:
    assets = Path(args.assets)
    overrides = project_overrides(assets, assets / "model", args.steps, args.scratch, args.threads)
    if args.device == "cuda":
        overrides += ["trainer.accelerator=gpu", "trainer.precision=32-true"]
    if variant == "project_padded":
        overrides += ["data.packing=false", "data.group_by_length=false", "logprobs.chunk_mb=null"]
    elif variant == "project_compiled":
        overrides += ["model.compile=true"]
    start = time.perf_counter()
    summary = train_in_process(overrides, args.scratch)
    training = summary.stages["training"]
    return {"epoch_s": training["seconds"], "step_s": training["step_seconds"], "real_tokens": training["real_tokens"],
            "batch_tokens": training["batch_tokens"], "reference_s": summary.stages["reference"]["seconds"],
            "run_s": time.perf_counter() - start}


def trl_worker(args, precompute: bool, as_user: bool = False, batch: int = BATCH, max_length: int = MAX_LENGTH,
               bf16: bool = False) -> dict:
    """TRL's DPOTrainer on the benchmark's data; `as_user`: its defaults for
    everything but the benchmark's shape (progress bar, saving, reporting);
    `bf16`: weights in bfloat16 and TRL's bf16 mixed precision."""
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    assets = Path(args.assets)
    tokenizer = AutoTokenizer.from_pretrained(assets / "model")
    model = AutoModelForCausalLM.from_pretrained(assets / "model", dtype=torch.bfloat16 if bf16 else torch.float32)
    dataset = load_dataset("json", data_files=str(assets / "split_train.jsonl"), split="train")

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.start, self.ends = time.perf_counter(), []

        def on_step_end(self, *a, **k):
            self.ends.append(time.perf_counter())

    timer = Timer()
    quiet = {} if as_user else dict(save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True,
                                    dataloader_num_workers=0)
    config = DPOConfig(
        output_dir=args.scratch, per_device_train_batch_size=batch, max_steps=args.steps, learning_rate=LR,
        lr_scheduler_type="linear", warmup_steps=WARMUP, weight_decay=0.0, max_grad_norm=1.0, beta=BETA,
        loss_type=["sigmoid"], max_length=max_length, precompute_ref_log_probs=precompute,
        gradient_checkpointing=False, bf16=bf16, fp16=False, use_cpu=args.device == "cpu", logging_steps=10,
        seed=0, **quiet,
    )
    reference_s = []
    original = DPOTrainer._precompute_ref_logps

    def timed(self, *a, **k):
        begin = time.perf_counter()
        try:
            return original(self, *a, **k)
        finally:
            reference_s.append(time.perf_counter() - begin)

    DPOTrainer._precompute_ref_logps = timed
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[timer])
    counts = {"real": [], "slots": 0}
    collate = trainer.data_collator

    def counting(examples):
        batch = collate(examples)
        counts["real"].append(int(batch["attention_mask"].sum()))
        counts["slots"] += batch["input_ids"].numel()
        return batch

    trainer.data_collator = counting
    trainer.train()
    steps = [b - a for a, b in zip([timer.start, *timer.ends], timer.ends)]
    return {"epoch_s": timer.ends[-1] - timer.start, "step_s": steps, "real_tokens": sum(counts["real"]),
            "step_real_tokens": counts["real"], "batch_tokens": counts["slots"], "reference_s": sum(reference_s)}


def bare_worker(args, padded: bool) -> dict:
    """The project's computation with nothing around it: its tokenization,
    sampler, collator and log-probs, a precomputed reference, DPO, AdamW."""
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    import torch.nn.functional as F
    from datasets import load_dataset
    from torch.utils.data import DataLoader
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    from gpo.data.batching import LengthGroupedSampler, pair_lengths
    from gpo.data.sources.preferences import HHRLHF
    from gpo.data.tokenization import PairCollator, real_tokens, tokenize_pair
    from gpo.logprobs import LogProbs

    torch.manual_seed(0)
    assets = Path(args.assets)
    tokenizer = AutoTokenizer.from_pretrained(assets / "model")
    policy = AutoModelForCausalLM.from_pretrained(assets / "model", dtype=torch.float32).to(args.device)
    rows = load_dataset("json", data_files=str(assets / "hh_train.jsonl"), split="train")
    rows = rows.map(HHRLHF().extract, remove_columns=rows.column_names).remove_columns("problem")
    data = rows.map(tokenize_pair,
                    fn_kwargs=dict(tokenizer=tokenizer, max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT_LENGTH),
                    remove_columns=rows.column_names)
    data = data.add_column("pair_id", list(range(len(data))))
    logprobs = LogProbs(chunk_mb=None) if padded else LogProbs()
    collate = PairCollator(tokenizer.pad_token_id, packing=not padded)
    to = lambda batch: {k: v.to(args.device) for k, v in batch.items()}  # noqa: E731

    begin = time.perf_counter()
    policy.eval()
    with torch.no_grad():
        reference = torch.cat([torch.stack(logprobs.pair_logps(policy, to(collate(
            [data[i] for i in range(start, min(start + 64, len(data)))]))), 1).cpu()
            for start in range(0, len(data), 64)])
    reference_s = time.perf_counter() - begin
    policy.train()

    if padded:
        sampler = torch.utils.data.RandomSampler(data, generator=torch.Generator().manual_seed(0))
    else:
        sampler = LengthGroupedSampler(pair_lengths(data), BATCH, seed=0)
    loader = DataLoader(data, batch_size=BATCH, sampler=sampler, collate_fn=collate)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=LR, weight_decay=0.0)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=WARMUP, num_training_steps=args.steps)
    start, ends, real, slots = time.perf_counter(), [], 0, 0
    for step, batch in enumerate(loader):
        if step == args.steps:
            break
        real, slots = real + real_tokens(batch), slots + batch["input_ids"].numel()
        batch = to(batch)
        chosen, rejected = logprobs.pair_logps(policy, batch)
        ref = reference.to(args.device)[batch["pair_id"]]
        loss = -F.logsigmoid(BETA * ((chosen - ref[:, 0]) - (rejected - ref[:, 1]))).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # as the frameworks do when they log: wait for the step to finish
        ends.append(time.perf_counter())
    steps = [b - a for a, b in zip([start, *ends], ends)]
    return {"epoch_s": ends[-1] - start, "step_s": steps, "real_tokens": real, "batch_tokens": slots,
            "reference_s": reference_s}


def worker(args) -> None:
    import torch

    if args.threads:  # 0: torch's default, one per core
        torch.set_num_threads(args.threads)
    if args.config.startswith("project"):
        result = project_worker(args, args.config)
    elif args.config.startswith("trl"):
        result = trl_worker(args, precompute=args.config != "trl_on_the_fly", as_user=args.config == "trl_as_user")
    else:
        result = bare_worker(args, padded=args.config == "bare_padded")
    result["peak_memory_mb"] = peak_memory_mb(args.device)
    Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------- driver

def run_one(config: str, args, steps: int) -> dict:
    with tempfile.TemporaryDirectory(dir=args.out) as scratch:
        result = Path(scratch) / "result.json"
        command = [sys.executable, __file__, "--worker", config, "--assets", str(args.assets), "--steps", str(steps),
                   "--threads", str(args.threads), "--device", args.device, "--scratch", scratch,
                   "--result", str(result)]
        env = {**os.environ, "WANDB_SILENT": "true", "TOKENIZERS_PARALLELISM": "false",
               "OMP_NUM_THREADS": str(args.threads), "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
        if not args.threads:
            del env["OMP_NUM_THREADS"]
        done = subprocess.run(command, cwd=scratch, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            sys.exit(f"{config} failed:\n{done.stderr[-4000:]}")
        return json.loads(result.read_text())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=CONFIGS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=512, help="training pairs (one epoch = pairs / 8 steps)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (1: steadiest on a shared CPU; 0: each tool's default)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "training_speed")
    parser.add_argument("--worker", choices=CONFIGS, dest="config", help=argparse.SUPPRESS)
    for hidden in ("--assets", "--scratch", "--result"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out = args.out.resolve()  # workers run from the repository root
    if args.config:
        return worker(args)

    args.out.mkdir(parents=True, exist_ok=True)
    args.assets = build_assets(args.out, args.pairs)
    steps = args.pairs // BATCH  # one epoch
    for config in args.configs:  # warm-up, untimed: file caches, datasets' tokenization caches
        run_one(config, args, steps=2)
    runs = {config: [] for config in args.configs}
    for repeat in range(args.repeats):
        for config in args.configs:
            runs[config].append(run_one(config, args, steps))
            r = runs[config][-1]
            print(f"[{repeat + 1}/{args.repeats}] {config}: epoch {r['epoch_s']:.1f} s, "
                  f"{r['real_tokens'] / r['epoch_s']:.0f} real tokens/s, peak {r['peak_memory_mb']:.0f} MiB",
                  flush=True)
    load = os.getloadavg()
    (args.out / "results.json").write_text(json.dumps({"steps": steps, "runs": runs, "load": load}, indent=1))
    print(table(runs, steps, args, load))


def table(runs: dict, steps: int, args, load) -> str:
    med = statistics.median

    def summary(results):
        return {"tokens_s": med(r["real_tokens"] / r["epoch_s"] for r in results),
                "epoch_s": med(r["epoch_s"] for r in results),
                "step_s": med(med(r["step_s"]) for r in results),
                "real_share": med(r["real_tokens"] / r["batch_tokens"] for r in results),
                "reference_s": med(r["reference_s"] for r in results),
                "memory": med(r["peak_memory_mb"] for r in results),
                "spread": (min(r["epoch_s"] for r in results), max(r["epoch_s"] for r in results))}

    s = {config: summary(results) for config, results in runs.items()}
    trl = s.get("trl", {}).get("tokens_s")
    bare = s.get("bare", {}).get("tokens_s")
    lines = [
        f"{steps} steps x {BATCH} pairs (one epoch), max_length {MAX_LENGTH}, fp32, {args.device}, "
        f"{args.threads} torch thread(s); medians of {args.repeats} interleaved repeats; "
        f"load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min) on {os.cpu_count()} cores",
        "",
        "| configuration | real tokens/s | tokens/s vs TRL | time vs bare loop | epoch (s) [min-max] | "
        "median step (s) | real tokens in batches | reference log-probs (s) | peak memory (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for config, m in s.items():
        vs_trl = f"{m['tokens_s'] / trl:.2f}x" if trl else "-"
        vs_bare = f"{bare / m['tokens_s']:.2f}x" if bare and config != "bare" else "-"
        lines.append(f"| {config} | {m['tokens_s']:.0f} | {vs_trl} | {vs_bare} | {m['epoch_s']:.1f} "
                     f"[{m['spread'][0]:.1f}-{m['spread'][1]:.1f}] | {m['step_s']:.3f} | {m['real_share']:.0%} | "
                     f"{m['reference_s']:.1f} | {m['memory']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
