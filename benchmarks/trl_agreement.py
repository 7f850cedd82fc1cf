"""This project's axes and losses against TRL's own code, on the same inputs.

    python -m venv /tmp/trl && /tmp/trl/bin/pip install -r requirements.txt -r benchmarks/requirements.txt
    PYTHONPATH=src /tmp/trl/bin/python benchmarks/trl_agreement.py

TRL 1.16 computes its DPO and KTO losses inside DPOTrainer._compute_loss /
KTOTrainer._compute_loss, from the per-token log-probs its fused LM head
returns. Those methods run here unchanged, on a stand-in `self` (the
attributes they read) and a stand-in model that returns prescribed per-token
log-probs (and, for WPO, log sum_v p_v^2): random values, completions of
random lengths. The same values go through this project's PairLogps/TokenLogps
(ExampleLogps for KTO), rho axis, aggregate and loss. TRL returns the batch
mean, so batch means are compared: the largest relative difference over
`--batches` random batches (float64 throughout). Prints a markdown table
(docs/losses.md holds it).
"""

import argparse
import contextlib
import math
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from trl import DPOTrainer, KTOTrainer

from gpo.losses import KTO, ConservativeLogistic, ExampleLogps, Hinge, Logistic, PairLogps, TokenLogps
from gpo.losses.aggregate import AOT, Mean
from gpo.losses.axes import WPO
from gpo.losses.rho import LD, FDivergence, Sum
from gpo.losses.rho import Mean as MeanRho


class Prescribed(torch.nn.Module):
    """A 'model' whose fused-head output is prescribed per sequence: row r of a
    batch is identified by its first token (id r), its per-token log-probs are
    `table[r]` at the completion positions (0 elsewhere, as the fused head gives
    for ignored labels)."""

    is_gradient_checkpointing = False

    def __init__(self, table: torch.Tensor, square: torch.Tensor | None = None):
        super().__init__()
        self.table, self.square = table, square

    def forward(self, input_ids, labels=None, **kwargs):
        rows = input_ids[:, 0]
        shift = (labels[:, 1:] != -100).to(self.table.dtype)
        width = shift.shape[1]
        log_probs = torch.zeros_like(shift)
        square = torch.zeros_like(shift)
        for i, r in enumerate(rows.tolist()):
            positions = shift[i].nonzero()[:, 0]
            log_probs[i, positions] = self.table[r, : len(positions)]
            if self.square is not None:
                square[i, positions] = self.square[r, : len(positions)]
        zeros = torch.zeros(len(rows), width, dtype=self.table.dtype)
        return SimpleNamespace(log_probs=log_probs, log_sum_sq_probs=square, entropy=zeros, mean_logits=zeros,
                               is_top1=zeros.bool())


def stand_in(**attributes):
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x)
    return SimpleNamespace(accelerator=accelerator, aux_loss_enabled=False, _total_train_tokens=0, _tp_size=1,
                           _metrics=defaultdict(lambda: defaultdict(list)), **attributes)


def sequences(lengths: np.ndarray):
    """input_ids (first token = the row's id), attention and completion masks: 1 prompt token, then the completion."""
    n, width = len(lengths), int(lengths.max()) + 1
    positions = torch.arange(width)[None, :]
    attention = (positions <= torch.as_tensor(lengths)[:, None]).long()
    completion = attention.clone()
    completion[:, 0] = 0
    input_ids = torch.full((n, width), 7)
    input_ids[:, 0] = torch.arange(n)
    return input_ids * attention, attention, completion


def random_batch(rng, pairs: int, longest: int = 12):
    """Per-token log-probs [2 x pairs, longest] of policy and reference (chosen rows, then rejected), lengths,
    and log sum p^2 per position (<= 0, and >= the token's own log-prob)."""
    lengths = rng.integers(1, longest + 1, size=2 * pairs)
    mask = np.arange(longest)[None, :] < lengths[:, None]
    reference = -rng.uniform(0.05, 3.0, size=(2 * pairs, longest)) * mask
    policy = (reference + rng.normal(0, 0.4, size=reference.shape)) * mask
    policy = np.minimum(policy, -1e-3) * mask
    square = np.maximum(policy + rng.uniform(0.0, 1.0, size=policy.shape), policy) * mask
    square = np.minimum(square, 0.0)
    t = torch.tensor
    return SimpleNamespace(lengths=lengths, mask=t(mask), policy=t(policy), reference=t(reference), square=t(square))


def trl_dpo(batch, beta, loss_type="sigmoid", label_smoothing=0.0, ld_alpha=None, f_divergence_type="reverse_kl",
            f_alpha_divergence_coef=0.5, use_weighting=False) -> float:
    input_ids, attention, completion = sequences(batch.lengths)
    policy = Prescribed(batch.policy, batch.square)
    policy.train()
    trainer = stand_in(model=policy, ref_model=Prescribed(batch.reference), precompute_ref_logps=False,
                       args=SimpleNamespace(gradient_checkpointing_kwargs=None, discopop_tau=0.05), ld_alpha=ld_alpha,
                       f_divergence_type=f_divergence_type, f_alpha_divergence_coef=f_alpha_divergence_coef,
                       loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing,
                       use_weighting=use_weighting)
    inputs = {"input_ids": input_ids, "attention_mask": attention, "completion_mask": completion}
    return DPOTrainer._compute_loss(trainer, policy, inputs, return_outputs=False).item()


def ours_dpo(batch, beta, loss=None, rho=None, aggregate=None, weighting=None) -> float:
    sums = lambda values: values.sum(-1).chunk(2)  # noqa: E731
    lengths = torch.tensor(batch.lengths, dtype=torch.float64).chunk(2)
    logps = PairLogps(*sums(batch.policy), *sums(batch.reference), *lengths,
                      tokens=TokenLogps(batch.policy, batch.reference, batch.mask, batch.square))
    logps = (rho or Sum())(logps, {}, 0)
    if weighting is not None:
        logps = weighting(logps, {})
    return (aggregate or Mean())(loss or Logistic(), logps, beta).item()


def trl_kto(examples, beta, desirable_weight=1.0, undesirable_weight=1.0) -> float:
    n = len(examples.label)
    input_ids, attention, completion = sequences(examples.lengths)
    kl_ids, kl_attention, kl_completion = sequences(examples.kl_lengths)
    policy = Prescribed(torch.cat([examples.policy, examples.kl_policy]))
    policy.train()
    kl_ids[:, 0] += n  # the mismatched completions are rows n..2n-1 of the prescribed table
    trainer = stand_in(model=policy, ref_model=None, precompute_ref_logps=True, calculate_KL=True, loss_type="kto",
                       beta=beta, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
                       args=SimpleNamespace(gradient_checkpointing_kwargs=None))
    trainer._compute_kl_logps = lambda model, batch: KTOTrainer._compute_kl_logps(trainer, model, batch)
    inputs = {"input_ids": input_ids, "attention_mask": attention, "completion_mask": completion,
              "KL_input_ids": kl_ids, "KL_attention_mask": kl_attention, "KL_completion_mask": kl_completion,
              "label": examples.label, "ref_logps": examples.reference.sum(-1),
              "ref_KL_logps": examples.kl_reference.sum(-1)}
    return KTOTrainer._compute_loss(trainer, policy, inputs, return_outputs=False).item()


def ours_kto(examples, beta, desirable_weight=1.0, undesirable_weight=1.0) -> float:
    logps = ExampleLogps(examples.policy.sum(-1), examples.reference.sum(-1),
                         torch.tensor(examples.lengths, dtype=torch.float64), examples.label,
                         examples.kl_policy.sum(-1), examples.kl_reference.sum(-1))
    return Mean()(KTO(desirable_weight, undesirable_weight), logps, beta).item()


def random_examples(rng, n: int):
    first, second = random_batch(rng, n // 2), random_batch(rng, n // 2)
    return SimpleNamespace(policy=first.policy, reference=first.reference, lengths=first.lengths,
                           kl_policy=second.policy, kl_reference=second.reference, kl_lengths=second.lengths,
                           label=torch.as_tensor(rng.random(n) < 0.6))


# (TRL setting, this project's setting, trl(batch, beta), ours(batch, beta))
CASES = [
    ("loss_type=sigmoid", "loss=dpo",
     lambda b, beta: trl_dpo(b, beta), lambda b, beta: ours_dpo(b, beta)),
    ("loss_type=hinge", "loss=slic",
     lambda b, beta: trl_dpo(b, beta, "hinge"), lambda b, beta: ours_dpo(b, beta, Hinge())),
    ("loss_type=sigmoid_norm", "loss=dpo rho=mean",
     lambda b, beta: trl_dpo(b, beta, "sigmoid_norm"), lambda b, beta: ours_dpo(b, beta, rho=MeanRho())),
    ("ld_alpha=0.3", "loss=dpo rho=ld rho.alpha=0.3",
     lambda b, beta: trl_dpo(b, beta, ld_alpha=0.3), lambda b, beta: ours_dpo(b, beta, rho=LD(0.3))),
    ("ld_alpha=0.0", "loss=dpo rho=ld rho.alpha=0",
     lambda b, beta: trl_dpo(b, beta, ld_alpha=0.0), lambda b, beta: ours_dpo(b, beta, rho=LD(0.0))),
    ("f_divergence_type=forward_kl", "loss=dpo rho=fdiv rho.divergence=forward_kl",
     lambda b, beta: trl_dpo(b, beta, f_divergence_type="forward_kl"),
     lambda b, beta: ours_dpo(b, beta, rho=FDivergence("forward_kl"))),
    ("f_divergence_type=js_divergence", "loss=dpo rho=fdiv",
     lambda b, beta: trl_dpo(b, beta, f_divergence_type="js_divergence"),
     lambda b, beta: ours_dpo(b, beta, rho=FDivergence("js_divergence"))),
    ("f_divergence_type=alpha_divergence, f_alpha_divergence_coef=0.7 (float32: TRL's clamp has no float64 entry)",
     "loss=dpo rho=fdiv rho.divergence=alpha_divergence rho.alpha=0.3",
     lambda b, beta: trl_dpo(b, beta, f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.7),
     lambda b, beta: ours_dpo(b, beta, rho=FDivergence("alpha_divergence", 0.3))),
    ("f_divergence_type=js_divergence, loss_type=hinge", "loss=slic rho=fdiv",
     lambda b, beta: trl_dpo(b, beta, "hinge", f_divergence_type="js_divergence"),
     lambda b, beta: ours_dpo(b, beta, Hinge(), rho=FDivergence("js_divergence"))),
    ("use_weighting=True", "loss=dpo weighting=wpo",
     lambda b, beta: trl_dpo(b, beta, use_weighting=True), lambda b, beta: ours_dpo(b, beta, weighting=WPO())),
    ("loss_type=aot", "loss=dpo aggregate=aot",
     lambda b, beta: trl_dpo(b, beta, "aot"), lambda b, beta: ours_dpo(b, beta, aggregate=AOT(paired=True))),
    ("loss_type=aot, label_smoothing=0.2", "loss=cdpo loss.eps=0.2 aggregate=aot",
     lambda b, beta: trl_dpo(b, beta, "aot", label_smoothing=0.2),
     lambda b, beta: ours_dpo(b, beta, ConservativeLogistic(0.2), aggregate=AOT(paired=True))),
    ("loss_type=aot_unpaired", "loss=dpo aggregate=aot_unpaired",
     lambda b, beta: trl_dpo(b, beta, "aot_unpaired"), lambda b, beta: ours_dpo(b, beta, aggregate=AOT(paired=False))),
    ("KTOTrainer loss_type=kto", "loss=kto",
     lambda e, beta: trl_kto(e, beta), lambda e, beta: ours_kto(e, beta)),
    ("KTOTrainer, desirable_weight=1.3, undesirable_weight=0.7", "loss=kto loss.desirable_weight=1.3 "
     "loss.undesirable_weight=0.7",
     lambda e, beta: trl_kto(e, beta, 1.3, 0.7), lambda e, beta: ours_kto(e, beta, 1.3, 0.7)),
]


def precomputed_reference_per_alpha(directory: Path) -> tuple[float, float]:
    """TRL 1.16's precompute_ref_log_probs with ld_alpha, for real: a DPOTrainer on a small
    model and 16 pairs read from a JSON file (so `datasets` keeps cache files, as for any
    real data) precomputes the reference column with ld_alpha=0.1, then a second one with
    ld_alpha=0.9 on the same data and model, then a third with ld_alpha=0.9 on the same
    pairs under another datasets cache directory (so nothing can be reused). Returns the
    largest |difference| of the second's ref_chosen_logps from the first's and from the third's."""
    import json
    import random

    from datasets import load_dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import DPOConfig

    from gpo.model import char_tokenizer

    rng = random.Random(0)
    words = lambda n: "".join(rng.choice("abcdefgh") for _ in range(n))  # noqa: E731
    rows = [{"prompt": words(4) + ":", "chosen": words(rng.randint(2, 12)), "rejected": words(rng.randint(2, 12))}
            for _ in range(16)]
    (directory / "pairs.json").write_text("\n".join(json.dumps(row) for row in rows))
    tokenizer = char_tokenizer("abcdefgh:")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                         eos_token_id=tokenizer.eos_token_id)).float()

    def reference_column(ld_alpha: float, cache: str) -> torch.Tensor:
        data = load_dataset("json", data_files=str(directory / "pairs.json"), split="train",
                            cache_dir=str(directory / cache))
        config = DPOConfig(output_dir=str(directory / "out"), precompute_ref_log_probs=True, ld_alpha=ld_alpha,
                           per_device_train_batch_size=4, report_to=[], use_cpu=True, bf16=False,
                           gradient_checkpointing=False, max_length=64)
        trainer = DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)
        return torch.tensor(trainer.train_dataset["ref_chosen_logps"], dtype=torch.float64)

    first, second, fresh = (reference_column(0.1, "hf"), reference_column(0.9, "hf"),
                            reference_column(0.9, "hf-other"))
    return float((second - first).abs().max()), float((second - fresh).abs().max())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20, help="random batches per case (default 20)")
    parser.add_argument("--pairs", type=int, default=16, help="pairs (or examples) per batch (default 16)")
    parser.add_argument("--tolerance", type=float, default=1e-9,
                        help="relative difference called agreement in float64 (float32 cases: 1e-6)")
    args = parser.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    rng = np.random.default_rng(0)
    print("| TRL 1.16 | this project | batches | largest relative difference | agrees |")
    print("|---|---|---|---|---|")
    failures = 0
    for trl_setting, ours_setting, trl_fn, ours_fn in CASES:
        worst = 0.0
        single = "float32" in trl_setting
        for _ in range(args.batches):
            beta = float(rng.choice([0.05, 0.1, 0.5, 2.0]))
            data = random_examples(rng, args.pairs) if "kto" in ours_setting else random_batch(rng, args.pairs)
            if single:
                data = SimpleNamespace(**{k: v.float() if torch.is_floating_point(torch.as_tensor(v)) and
                                          isinstance(v, torch.Tensor) else v for k, v in vars(data).items()})
            theirs, mine = trl_fn(data, beta), ours_fn(data, beta)
            worst = max(worst, abs(theirs - mine) / max(abs(theirs), 1e-12))
        agrees = worst <= (1e-6 if single else args.tolerance) and math.isfinite(worst)
        failures += not agrees
        verdict = "yes" if agrees else "**no**"
        print(f"| `{trl_setting}` | `{ours_setting}` | {args.batches} | {worst:.1e} | {verdict} |")
    with tempfile.TemporaryDirectory() as directory:
        stale, wrong = precomputed_reference_per_alpha(Path(directory))
    verdict = "recomputed for the new ld_alpha" if wrong == 0 and stale > 0 else "**reused from the first run**"
    print(f"\nTRL precompute_ref_log_probs with ld_alpha=0.1, then ld_alpha=0.9 on the same data and model: the "
          f"second run's ref_chosen_logps differ from the first's by up to {stale:.3g} nats and from a fresh "
          f"computation at ld_alpha=0.9 by up to {wrong:.3g} nats: {verdict}.")
    return 1 if failures else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
