"""The policy model: building it (build: the tiny test model, any pretrained
causal LM, LoRA), running it (runtime: device, eval mode, packing support),
its response log-probs (logprobs) and saving it in the Hugging Face format (export)."""

from gpo.model.build import char_tokenizer, compile_policy, pretrained_causal_lm, tiny_causal_lm, with_lora
from gpo.model.export import export_policy
from gpo.model.logprobs import LogProbs
from gpo.model.runtime import device_for, eval_mode, packing_support

__all__ = ["LogProbs", "char_tokenizer", "compile_policy", "device_for", "eval_mode", "export_policy",
           "packing_support", "pretrained_causal_lm", "tiny_causal_lm", "with_lora"]
