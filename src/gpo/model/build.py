"""Building policy models and their tokenizers.

Two ways in (conf/model), both returning (model, tokenizer):
  - `tiny_causal_lm`: a randomly initialised transformers model built from a
    config, with a character-level tokenizer made locally (no hub, no network),
    for CPU runs and tests;
  - `pretrained_causal_lm`: any AutoModelForCausalLM + AutoTokenizer by hub name
    or local path.
`with_lora` adds trainable LoRA adapters (model/lora).
"""

import os
import string

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerFast

from gpo.infra.errors import InputError

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
    tokenizer.model_max_length = config.max_position_embeddings  # saved with the export (else 1e30: "no limit")
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
    trust_remote_code: bool = False,
    **model_kwargs,
):
    """`model_kwargs` go to from_pretrained (attn_implementation, revision, ...).
    `chat_template` (Jinja) gives a model without one a template for conversational data.
    `trust_remote_code` runs Python code shipped with the checkpoint: off unless asked for."""
    check_local_model(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:  # common for decoder-only models; pad positions are masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    policy = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, trust_remote_code=trust_remote_code,
                                                  **model_kwargs)
    policy.train()  # from_pretrained returns eval mode (no dropout); a policy is built to be trained, as from_config's
    if gradient_checkpointing:
        # Non-reentrant: works when the inputs need no grad (frozen embeddings under LoRA).
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return policy, tokenizer


def looks_local(name_or_path: str) -> bool:
    """A local path rather than a hub repo id ("name" or "org/name"): it starts
    like a path (/, ./, ../, ~) or has more than one "/"."""
    return name_or_path.startswith(("/", "./", "../", "~")) or name_or_path.count("/") > 1


def check_local_model(name_or_path: str) -> None:
    """A model named by a local path must be a directory there: one line, instead of the hub
    client's "Repo id must be in the form ..." tracebacks after it was taken for a repo id."""
    path = os.path.expanduser(name_or_path)
    if looks_local(name_or_path) and not os.path.isdir(path):
        what = "is a file, not a model directory" if os.path.exists(path) else "does not exist"
        raise InputError(f"model.policy.name_or_path={name_or_path}: {what} (a local path; a hub model is "
                         "named org/name)")


def with_lora(policy: torch.nn.Module, lora_config: LoraConfig | None) -> torch.nn.Module:
    """Wrap the policy with trainable LoRA adapters (base weights frozen); None: unchanged.
    Applied after the SFT stage, so the adapters-off model is the SFT reference."""
    return policy if lora_config is None else get_peft_model(policy, lora_config)


def compile_policy(policy: torch.nn.Module, mode: str | None = None) -> torch.nn.Module:
    """torch.compile the policy's decoder in place (model.compile=true): the
    module keeps its type, parameters and state_dict keys, so checkpoints,
    LoRA and the chunked output head are unchanged. Dynamic shapes, because
    batch widths vary from step to step (packing, length grouping)."""
    policy.get_decoder().compile(dynamic=True, mode=mode)
    return policy
