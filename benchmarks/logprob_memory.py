"""Peak memory of the response log-prob computation (forward + backward) on a
large-vocabulary model: full-vocabulary float32 logits (the previous path) vs
chunked log-probs (the default), padded or packed, vs TRL 1.16's fused LM head.

    python benchmarks/logprob_memory.py                    # ~2 min on a CPU
    python benchmarks/logprob_memory.py --vocab 150000 --hidden 64 --repeats 3

The model is a random-weight Llama with a 150k vocabulary (Qwen-sized) and a
small hidden size so it fits in RAM; the batch is 8 pairs with HH-RLHF-like
lengths (max 256 tokens). Each measurement runs in a fresh process: on CPU the
peak resident memory (VmHWM, reset just before the computation) minus the
resident memory before it; on a GPU, torch.cuda.max_memory_allocated minus
the memory allocated before it. Also the time of one forward + backward.
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
PATHS = {
    "full logits, padded (previous)": dict(chunk_mb=None, packing=False),
    "chunked, padded": dict(chunk_mb=256, packing=False),
    "chunked, packed (default)": dict(chunk_mb=256, packing=True),
    "TRL 1.16 fused LM head, padded": dict(trl=True, packing=False),
}


def status_kb(key: str) -> int:
    line = next(row for row in Path("/proc/self/status").read_text().splitlines() if row.startswith(key))
    return int(line.split()[1])


def worker(args) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from gpo.data.tokenization import PairCollator
    from gpo.model import LogProbs

    torch.set_num_threads(args.threads)
    path = PATHS[args.path]
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(args.device)
    generator = torch.Generator().manual_seed(1)
    rows = []
    for i in range(8):
        prompt = int(torch.randint(20, 120, (1,), generator=generator))
        ids = lambda n: torch.randint(4, args.vocab, (n,), generator=generator).tolist()  # noqa: E731
        p = ids(prompt)
        rows.append({"prompt_length": prompt, "pair_id": i,
                     **{k: (p + ids(int(torch.randint(10, 136, (1,), generator=generator))))[:256]
                        for k in ("chosen_input_ids", "rejected_input_ids")}})
    batch = {k: v.to(args.device) for k, v in PairCollator(0, packing=path["packing"])(rows).items()}

    if path.get("trl"):
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model)

        def compute():
            labels = batch["input_ids"].masked_fill(~batch["response_mask"], -100)
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                        fused_lm_head=True, use_cache=False)
            return out.log_probs.sum(-1)
    else:
        logprobs = LogProbs(chunk_mb=path["chunk_mb"])
        logprobs.uses_chunks(model)  # its one-time check, outside the measurement

        def compute():
            return logprobs.batch_logps(model, batch)

    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set (VmHWM) to now
        before = status_kb("VmRSS") * 1024
    start = time.perf_counter()
    values = compute()
    (values * torch.linspace(-1, 1, len(values), device=values.device)).sum().backward()
    if args.device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = status_kb("VmHWM") * 1024 - before
    seconds = time.perf_counter() - start
    real = int(batch["response_mask"].sum())
    return {"peak_mb": peak / 2**20, "seconds": seconds, "logps": values.detach().cpu().tolist(),
            "batch_shape": list(batch["input_ids"].shape), "response_tokens": real}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=150_000)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--worker", dest="path", choices=list(PATHS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.path:
        print(json.dumps(worker(args)))
        return
    runs = {name: [] for name in PATHS}
    for _ in range(args.repeats):
        for name in PATHS:  # interleaved
            command = [sys.executable, __file__, "--worker", name, "--vocab", str(args.vocab), "--hidden",
                       str(args.hidden), "--threads", str(args.threads), "--device", args.device]
            done = subprocess.run(command, capture_output=True, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            if done.returncode != 0:
                sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    reference = runs["full logits, padded (previous)"][0]["logps"]
    load = os.getloadavg()
    previous = statistics.median(r["peak_mb"] for r in runs["full logits, padded (previous)"])
    print(f"Vocabulary {args.vocab}, hidden size {args.hidden}, "
          f"8 pairs (batch {runs['chunked, padded'][0]['batch_shape']} padded, "
          f"{runs['chunked, packed (default)'][0]['batch_shape']} packed, "
          f"{runs['chunked, padded'][0]['response_tokens']} response tokens), "
          f"{args.device}, medians of {args.repeats}; "
          f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} on {os.cpu_count()} cores\n")
    print("| log-prob path | peak memory of forward + backward (MiB) | vs previous | time (s) | "
          "max abs difference in log-probs |")
    print("|---|---|---|---|---|")
    for name, results in runs.items():
        peak = statistics.median(r["peak_mb"] for r in results)
        diff = max(abs(a - b) for a, b in zip(results[0]["logps"], reference))
        print(f"| {name} | {peak:.0f} | {previous / peak:.1f}x lower | "
              f"{statistics.median(r['seconds'] for r in results):.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
