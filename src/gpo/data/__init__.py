"""Preference data: sources of text pairs (sources/), chat rendering (chat),
gold rewards and relabelling (gold), token ids and batches (tokenization),
and the Lightning data module that ties them together (module)."""

from gpo.data.module import PreferenceDataModule
from gpo.data.tokenization import PairCollator, encode_prompt, pad_sequences, tokenize_pair

__all__ = ["PairCollator", "PreferenceDataModule", "encode_prompt", "pad_sequences", "tokenize_pair"]
