"""Where a training step's time goes at 1 and 2 torch threads, and what the
idle threads' waiting costs: the project's computation (packed,
length-grouped batches, log-probs from the response positions only) and a
padded, full-vocabulary one (what TRL's DPOTrainer computes), on
benchmarks/shape.py's shape.

    python benchmarks/step_profile.py                     # ~5 min on 2 quiet cores
    python benchmarks/step_profile.py --steps 16 --repeats 3

1. Wall and CPU time per step, each configuration in a fresh process (the
   OpenMP wait policy is read when torch loads), interleaved, medians over
   --repeats: 1 thread; 2 threads whose idle threads spin first
   (GOMP_SPINCOUNT=300000, OpenMP's default, what torch users get); 2 threads
   that sleep at once (OMP_WAIT_POLICY=PASSIVE, src/train.py's default).
   CPU time above wall time is a second thread working, or spinning.
2. One torch.profiler pass per computation at 1 and 2 threads (passive),
   operator self-times summed by kind: what the second thread speeds up.
The batches are built beforehand (the collator's median time is printed apart).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import shape

ROOT = Path(__file__).resolve().parents[1]
KINDS = {  # operator name fragments -> kind (first match wins)
    "matrix products": ("addmm", "aten::mm", "aten::bmm", "linear", "matmul"),
    "attention": ("scaled_dot_product", "flash_attention", "_efficient_attention", "softmax"),
    "output head log-softmax": ("logsumexp", "log_softmax", "cross_entropy", "nll_loss", "gather"),
    "optimizer and clipping": ("_foreach", "adamw", "aten::lerp", "addcdiv", "addcmul", "aten::sqrt", "norm"),
}
WAITING = {"1 thread": (1, {}), "2 threads, spinning (OpenMP default)": (2, {"GOMP_SPINCOUNT": "300000"}),
           "2 threads, passive (project default)": (2, {"OMP_WAIT_POLICY": "PASSIVE"})}
COMPUTATIONS = {"project (packed, response-only head)": False, "padded, full logits (TRL's)": True}


def setup(out: Path, steps: int, padded: bool):
    """The model, an optimizer, `steps` batches as the computation sees them, the collator's median time."""
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    from datasets import load_dataset
    from torch.utils.data import RandomSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gpo.data.batching import LengthGroupedSampler, pair_lengths
    from gpo.data.sources.preferences import HHRLHF
    from gpo.data.tokenization import PairCollator, tokenize_pair
    from gpo.logprobs import LogProbs

    assets = shape.build_assets(out, 512)
    tokenizer = AutoTokenizer.from_pretrained(assets / "model")
    policy = AutoModelForCausalLM.from_pretrained(assets / "model", dtype=torch.float32)
    rows = load_dataset("json", data_files=str(assets / "hh_train.jsonl"), split="train")
    rows = rows.map(HHRLHF().extract, remove_columns=rows.column_names).remove_columns("problem")
    data = rows.map(tokenize_pair, remove_columns=rows.column_names, fn_kwargs=dict(
        tokenizer=tokenizer, max_length=shape.MAX_LENGTH, max_prompt_length=shape.MAX_PROMPT_LENGTH))
    data = data.add_column("pair_id", list(range(len(data))))
    collate = PairCollator(tokenizer.pad_token_id, packing=not padded)
    order = list(RandomSampler(data, generator=torch.Generator().manual_seed(0)) if padded
                 else LengthGroupedSampler(pair_lengths(data), shape.BATCH, seed=0))
    batches, seconds = [], []
    for i in range(steps):
        rows = [data[j] for j in order[i * shape.BATCH:(i + 1) * shape.BATCH]]
        start = time.perf_counter()
        batches.append(collate(rows))
        seconds.append(time.perf_counter() - start)
    logprobs = LogProbs(chunk_mb=None) if padded else LogProbs()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-5)

    def step(batch):
        chosen, rejected = logprobs.pair_logps(policy, batch)
        loss = -torch.nn.functional.logsigmoid(shape.BETA * (chosen - rejected)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step, batches, statistics.median(seconds)


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    step, batches, collate_s = setup(args.out, args.steps, args.padded)
    step(batches[0])
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        step(batch)
    n = len(batches)
    print(json.dumps({"wall_s": (time.perf_counter() - wall) / n, "cpu_s": (time.process_time() - cpu) / n,
                      "collate_s": collate_s, "load": os.getloadavg()[0]}))


def kind_of(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, parts in KINDS.items() if any(p in lowered for p in parts)), "the rest")


def profile_by_kind(out: Path, steps: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    kinds = {}
    for name, padded in COMPUTATIONS.items():
        step, batches, _ = setup(out, steps, padded)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            step(batches[0])
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for batch in batches:
                    step(batch)
            split = kinds.setdefault((name, threads), {})
            for event in prof.key_averages():
                kind = kind_of(event.key)
                split[kind] = split.get(kind, 0.0) + event.self_cpu_time_total / 1e3 / len(batches)
    return kinds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "training_speed")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--padded", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    if args.worker:
        return worker(args)

    times = {}
    for _ in range(args.repeats):
        for computation, padded in COMPUTATIONS.items():
            for waiting, (threads, env) in WAITING.items():
                base = {k: v for k, v in os.environ.items()
                        if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
                command = [sys.executable, __file__, "--worker", "--threads", str(threads), "--steps",
                           str(args.steps), "--out", str(args.out), *(["--padded"] if padded else [])]
                done = subprocess.run(command, capture_output=True, text=True, env={**base, **env}, check=True)
                times.setdefault((computation, waiting), []).append(json.loads(done.stdout.splitlines()[-1]))
    med = statistics.median
    loads = [r["load"] for rs in times.values() for r in rs]
    print(f"\nPer step, {args.steps} batches of {shape.BATCH} pairs, medians of {args.repeats} interleaved repeats; "
          f"load average (1 min) after each run {min(loads):.2f}-{max(loads):.2f} on {os.cpu_count()} cores\n")
    print("| computation | threads | wall (s) | CPU (s) | vs 1 thread | collate (ms) |")
    print("|---|---|---|---|---|---|")
    for (computation, waiting), rs in times.items():
        one = med(r["wall_s"] for r in times[(computation, "1 thread")])
        wall = med(r["wall_s"] for r in rs)
        print(f"| {computation} | {waiting} | {wall:.3f} | {med(r['cpu_s'] for r in rs):.3f} | "
              f"{one / wall:.2f}x | {med(r['collate_s'] for r in rs) * 1e3:.1f} |")

    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # before torch loads in this process, as src/train.py
    kinds = profile_by_kind(args.out, args.steps)
    print("\nOperator self time per step by kind (ms; torch.profiler, one pass, passive waiting; its overhead "
          "included)\n")
    print("| computation | kind | 1 thread | 2 threads | 1 -> 2 |")
    print("|---|---|---|---|---|")
    for computation in COMPUTATIONS:
        for kind in [*KINDS, "the rest"]:
            one, two = (kinds[(computation, t)].get(kind, 0.0) for t in (1, 2))
            print(f"| {computation} | {kind} | {one:.0f} | {two:.0f} | {one / two:.2f}x |" if two else
                  f"| {computation} | {kind} | {one:.0f} | {two:.0f} | - |")


if __name__ == "__main__":
    main()
