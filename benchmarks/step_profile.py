"""Where a training step's time goes at 1 and at 2 torch threads: the
project's computation (packed, length-grouped batches, log-probs from the
response positions only) against a padded, full-vocabulary one (what TRL's
DPOTrainer computes), on benchmarks/training_speed.py's shape.

    python benchmarks/step_profile.py                     # ~3 min on 2 cores
    python benchmarks/step_profile.py --steps 16 --threads 1 2

For each computation and thread count, in one process, interleaved: the
median step time over --steps batches (forward, backward, clipping, AdamW;
the batches are built beforehand, and the collator's own time is measured
apart), then one torch.profiler pass whose operator self-times are summed by
kind: matrix products, attention, the output head's log-softmax, the
optimizer, the rest. The ratio column is how much the second thread buys per
kind: large matrix products scale, per-operator overhead does not.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import shape
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

KINDS = {  # operator name fragments -> kind (first match wins)
    "matrix products": ("addmm", "aten::mm", "aten::bmm", "linear", "matmul"),
    "attention": ("scaled_dot_product", "flash_attention", "_efficient_attention", "softmax_backward", "aten::softmax"),
    "output head log-softmax": ("logsumexp", "log_softmax", "cross_entropy", "nll_loss", "gather"),
    "optimizer": ("_foreach", "adamw", "aten::lerp", "addcdiv", "addcmul", "aten::sqrt", "clip_grad", "norm"),
}


def prepare(assets: Path):
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gpo.data.sources.preferences import HHRLHF
    from gpo.data.tokenization import tokenize_pair

    tokenizer = AutoTokenizer.from_pretrained(assets / "model")
    policy = AutoModelForCausalLM.from_pretrained(assets / "model", dtype=torch.float32)
    rows = load_dataset("json", data_files=str(assets / "hh_train.jsonl"), split="train")
    rows = rows.map(HHRLHF().extract, remove_columns=rows.column_names).remove_columns("problem")
    data = rows.map(tokenize_pair, remove_columns=rows.column_names, fn_kwargs=dict(
        tokenizer=tokenizer, max_length=shape.MAX_LENGTH, max_prompt_length=shape.MAX_PROMPT_LENGTH))
    return tokenizer, policy, data.add_column("pair_id", list(range(len(data))))


def batches(data, pad_token_id: int, padded: bool, n: int):
    """n batches as each computation sees them, and the collator's median time per batch."""
    from torch.utils.data import RandomSampler

    from gpo.data.batching import LengthGroupedSampler, pair_lengths
    from gpo.data.tokenization import PairCollator

    collate = PairCollator(pad_token_id, packing=not padded)
    order = list(RandomSampler(data, generator=torch.Generator().manual_seed(0)) if padded
                 else LengthGroupedSampler(pair_lengths(data), shape.BATCH, seed=0))
    out, seconds = [], []
    for i in range(n):
        rows = [data[j] for j in order[i * shape.BATCH:(i + 1) * shape.BATCH]]
        start = time.perf_counter()
        out.append(collate(rows))
        seconds.append(time.perf_counter() - start)
    return out, statistics.median(seconds)


def kind_of(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, parts in KINDS.items() if any(p in lowered for p in parts)), "the rest")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "training_speed")
    args = parser.parse_args(argv)
    from torch.profiler import ProfilerActivity, profile

    from gpo.logprobs import LogProbs

    tokenizer, policy, data = prepare(shape.build_assets(args.out.resolve(), 512))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    computations = {"project (packed, response-only head)": (LogProbs(), False),
                    "padded, full logits (TRL's)": (LogProbs(chunk_mb=None), True)}
    prepared = {name: (logprobs, *batches(data, tokenizer.pad_token_id, padded, args.steps))
                for name, (logprobs, padded) in computations.items()}

    def step(logprobs, batch):
        chosen, rejected = logprobs.pair_logps(policy, batch)
        loss = -F.logsigmoid(shape.BETA * (chosen - rejected)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    times = {}
    for _ in range(args.repeats):
        for name, (logprobs, bs, _collate) in prepared.items():
            for threads in args.threads:
                torch.set_num_threads(threads)
                step(logprobs, bs[0])
                start = time.perf_counter()
                for batch in bs:
                    step(logprobs, batch)
                times.setdefault((name, threads), []).append((time.perf_counter() - start) / len(bs))
    kinds = {}
    for name, (logprobs, bs, _collate) in prepared.items():
        for threads in args.threads:
            torch.set_num_threads(threads)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for batch in bs:
                    step(logprobs, batch)
            split = kinds.setdefault((name, threads), {})
            for event in prof.key_averages():
                kind = kind_of(event.key)
                split[kind] = split.get(kind, 0.0) + event.self_cpu_time_total / 1e3 / len(bs)
    load = os.getloadavg()
    first, last = args.threads[0], args.threads[-1]
    print(f"\nMedian step (s) over {args.steps} batches, median of {args.repeats} interleaved repeats; load average "
          f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} on {os.cpu_count()} cores\n")
    print("| computation | collate (ms) | " + " | ".join(f"step, {t} thread(s) (s)" for t in args.threads) +
          f" | {first} -> {last} threads |")
    print("|---|---|" + "---|" * (len(args.threads) + 1))
    for name, (_l, _b, collate) in prepared.items():
        medians = [statistics.median(times[(name, t)]) for t in args.threads]
        print(f"| {name} | {collate * 1e3:.1f} | " + " | ".join(f"{m:.3f}" for m in medians) +
              f" | {medians[0] / medians[-1]:.2f}x |")
    print("\nOperator self time per step by kind (ms; torch.profiler, one pass; its overhead included)\n")
    print("| computation | kind | " + " | ".join(f"{t} thread(s)" for t in args.threads) + f" | {first} -> {last} |")
    print("|---|---|" + "---|" * (len(args.threads) + 1))
    for name in prepared:
        for kind in [*KINDS, "the rest"]:
            values = [kinds[(name, t)].get(kind, 0.0) for t in args.threads]
            ratio = f"{values[0] / values[-1]:.2f}x" if values[-1] else "-"
            print(f"| {name} | {kind} | " + " | ".join(f"{v:.0f}" for v in values) + f" | {ratio} |")


if __name__ == "__main__":
    main()
