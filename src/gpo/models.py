"""Policy models and tokenizers.

Two ways in, both returning (policy, tokenizer):
  - `tiny_causal_lm`: a randomly initialised transformers model built from a
    config, with a character-level tokenizer made locally (no hub, no network),
    for CPU runs and tests;
  - `pretrained_causal_lm`: any AutoModelForCausalLM + AutoTokenizer by hub name
    or local path.
The frozen reference is made from the policy by `reference_for`: a frozen copy,
or nothing for a LoRA policy (`with_lora`), whose reference is its own base
model with the adapters disabled (GPOModule.reference_model).
"""

import copy
import string

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def char_tokenizer(alphabet: str = string.printable) -> PreTrainedTokenizerFast:
    """One token per character, BOS prepended to every encoded text (prompts)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for ch in dict.fromkeys(alphabet):  # ordered, deduplicated
        vocab.setdefault(ch, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    bos = SPECIAL_TOKENS["bos_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS)


def tiny_causal_lm(config: PretrainedConfig, alphabet: str = string.printable, seed: int = 0):
    """A small random-weight causal LM whose vocabulary is the char tokenizer's."""
    tokenizer = char_tokenizer(alphabet)
    config.vocab_size = len(tokenizer)
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    with torch.random.fork_rng():  # weights depend on `seed` only, not on the run's seed
        torch.manual_seed(seed)
        policy = AutoModelForCausalLM.from_config(config)
    return policy, tokenizer


def pretrained_causal_lm(
    name_or_path: str,
    dtype: str = "auto",
    gradient_checkpointing: bool = False,
    chat_template: str | None = None,
    **model_kwargs,
):
    """`model_kwargs` go to from_pretrained (attn_implementation, revision, ...).
    `chat_template` (Jinja) gives a model without one a template for conversational data."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:  # common for decoder-only models; pad positions are masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    policy = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **model_kwargs)
    if gradient_checkpointing:
        # Non-reentrant: works when the inputs need no grad (frozen embeddings under LoRA).
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return policy, tokenizer


def with_lora(policy: torch.nn.Module, lora_config: LoraConfig | None) -> torch.nn.Module:
    """Wrap the policy with trainable LoRA adapters (base weights frozen); None: unchanged.
    Applied after the SFT stage, so the adapters-off model is the SFT reference."""
    return policy if lora_config is None else get_peft_model(policy, lora_config)


def reference_for(policy: torch.nn.Module) -> torch.nn.Module | None:
    """A frozen copy of the policy, or None for a LoRA policy: its base model with
    adapters disabled is the reference, so no second copy of the weights is kept."""
    return None if isinstance(policy, PeftModel) else frozen_copy(policy)


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference
