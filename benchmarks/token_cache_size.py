"""Size of the cached reference log-probs on disk: summed (one float per
response) against per token (one float per response token, for the axes that
read tokens: rho=ld, rho=sampo), on the default synthetic data and on
HH-RLHF-format pairs.

    python benchmarks/token_cache_size.py                 # default data + 10,000 HH-format pairs, ~5 min on 2 cores
    python benchmarks/token_cache_size.py --hh-pairs 2000

The sizes do not depend on the model's weights or width, only on the number of
pairs and of response tokens, so the reference is a small random Llama (no SFT
stage); HH-format pairs and their 4,000-token BPE tokenizer come from
benchmarks/training_speed.py (transcripts of 1-4 turns), truncated as
conf/data/hh_rlhf.yaml does (max_length 512, prompt 256). Prints a markdown
table (docs/performance.md holds it).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def measure(cfg, cache: Path) -> dict:
    """Build both cache entries for the configured data; their sizes and build times."""
    import torch
    from hydra.utils import instantiate

    from gpo.infra.cache import DiskCache
    from gpo.reference import CachedReference, InitialPolicy

    build = instantiate(cfg.model.policy, _partial_=True)
    policy, tokenizer = build()
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)
    datamodule.setup()
    datamodule.configure_packing(policy)
    initial = InitialPolicy(build, cfg.model.policy, cfg.model.sft, datamodule, DiskCache(str(cache)))
    out = {"pairs": sum(len(split) for split in datamodule.tokenized.values())}
    for tokens in (False, True):
        reference = CachedReference(initial)
        start = time.perf_counter()
        outcome = reference.setup(policy, datamodule, torch.device("cpu"), tokens=tokens)
        entry = Path(outcome.path)
        size = sum(f.stat().st_size for f in entry.iterdir() if f.name != "meta.json")
        out["token" if tokens else "summed"] = {"bytes": size, "seconds": time.perf_counter() - start}
        if tokens:
            out["response_tokens"] = int(reference.tokens.lengths.sum())
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hh-pairs", type=int, default=10_000)
    parser.add_argument("--out", default=None, help="where the HH assets and caches go (default: a temporary dir)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    out = Path(args.out or tempfile.mkdtemp(prefix="token-cache-"))
    small = ["model.sft.steps=0"]
    rows = [("default synthetic task (`python src/train.py`)", measure(compose(small), out / "cache-default"))]

    from training_speed import build_assets  # HH-format pairs and a BPE tokenizer, as the speed benchmark uses

    assets = build_assets(out, args.hh_pairs)
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(assets / "model")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(out / "small-model")
    tokenizer.save_pretrained(out / "small-model")
    files = f"{{train: {assets / 'hh_train.jsonl'}, test: {assets / 'hh_validation.jsonl'}}}"
    hh = compose([*small, "model=hf", f"model.policy.name_or_path={out / 'small-model'}", "model.policy.dtype=float32",
                  "data=hh_rlhf", "data.source.path=json", f"+data.source.data_files={files}"])
    rows.append((f"{args.hh_pairs:,} HH-RLHF-format pairs (BPE, 4,000 tokens; max_length 512)",
                 measure(hh, out / "cache-hh")))

    print("| data | pairs | response tokens | summed entry | per-token entry | per-token / summed | "
          "per-token bytes per response token |")
    print("|---|---|---|---|---|---|---|")
    for name, m in rows:
        summed, token = m["summed"]["bytes"], m["token"]["bytes"]
        print(f"| {name} | {m['pairs']:,} | {m['response_tokens']:,} | {summed / 2**10:,.0f} KiB | "
              f"{token / 2**20:,.2f} MiB | {token / summed:.1f} | {token / m['response_tokens']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
