"""The benchmarks' shape, built once and untimed: preference pairs in
Anthropic HH-RLHF's format, a BPE tokenizer trained on them offline, and a
random-initialised Llama of about 4.2M parameters (save_pretrained), with the
training settings every benchmark shares (batch 8 pairs, max_length 256,
DPO beta 0.1, AdamW lr 1e-4, 10 warm-up steps).

Pairs: chosen/rejected transcripts "\\n\\nHuman: ...\\n\\nAssistant: ...",
1-4 turns, word counts drawn log-normal (sequences of ~108 tokens on average,
up to 256), so padded batches in file order are about half padding.
"""

import json
import random
from pathlib import Path

BATCH, MAX_LENGTH, MAX_PROMPT_LENGTH, BETA, LR, WARMUP = 8, 256, 192, 0.1, 1e-4, 10
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


# ---------------------------------------------------------------- assets (untimed)

def transcripts(n: int, seed: int) -> list[dict]:
    """HH-RLHF-format pairs: shared turns, then two different last Assistant turns."""
    rng = random.Random(seed)
    syllables = [a + b for a in "bcdfghklmnprstvz" for b in "aeiou"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.choice([1, 1, 2, 2, 3]))) for _ in range(3000)]
    weights = [1 / (rank + 1) for rank in range(len(words))]  # Zipf: a few very common words

    def sentence_run(mean_words: float) -> str:
        count = max(1, int(rng.lognormvariate(0, 0.8) * mean_words))
        out, sentence = [], []
        for word in rng.choices(words, weights, k=count):
            sentence.append(word)
            if len(sentence) > rng.randint(4, 14):
                out.append(" ".join(sentence).capitalize() + rng.choice([".", ".", "?", "!"]))
                sentence = []
        if sentence:
            out.append(" ".join(sentence).capitalize() + ".")
        return " ".join(out)

    pairs = []
    for _ in range(n):
        turns = min(4, 1 + int(rng.expovariate(1.0)))
        shared = "".join(f"\n\nHuman: {sentence_run(12)}\n\nAssistant: {sentence_run(25)}"
                         for _ in range(turns - 1)) + f"\n\nHuman: {sentence_run(12)}\n\nAssistant:"
        pairs.append({"chosen": shared + " " + sentence_run(30), "rejected": shared + " " + sentence_run(30)})
    return pairs


MODEL = dict(hidden_size=256, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
             max_position_embeddings=512, tie_word_embeddings=False)


def build_assets(out: Path, pairs: int, seed: int = 0, model: dict | None = None, dtype: str = "float32",
                 device: str = "cpu") -> Path:
    """Data files, tokenizer and model under out/assets (reused if there).
    `model`: LlamaConfig settings (default MODEL; a `vocab_size` larger than
    the tokenizer's leaves the extra rows unused, as a real model's output
    head would cost); `dtype`, `device`: the weights as saved, where made."""
    assets = out / "assets"
    if (assets / "model" / "config.json").exists():
        return assets
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    assets.mkdir(parents=True, exist_ok=True)
    train, validation = transcripts(pairs, seed), transcripts(64, seed + 1)
    for name, rows in (("train", train), ("validation", validation)):
        (assets / f"hh_{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        # The same pairs split into prompt/chosen/rejected the way the project's HH-RLHF source splits them.
        split = []
        for r in rows:
            cut = r["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:")
            split.append({"prompt": r["chosen"][:cut], "chosen": r["chosen"][cut:], "rejected": r["rejected"][cut:]})
        (assets / f"split_{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in split))

    backend = Tokenizer(models.BPE(unk_token=SPECIAL["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator((r[k] for r in train for k in ("chosen", "rejected")),
                                trainers.BpeTrainer(vocab_size=4000, special_tokens=list(SPECIAL.values()),
                                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos = SPECIAL["bos_token"]
    backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                           special_tokens=[(bos, backend.token_to_id(bos))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL)
    config = LlamaConfig(**{"vocab_size": len(tokenizer), **(model or MODEL)}, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    with torch.device(device):
        weights = LlamaForCausalLM(config).to(getattr(torch, dtype))
    weights.save_pretrained(assets / "model")
    tokenizer.save_pretrained(assets / "model")
    return assets
