"""Where preference pairs come from: files and hub datasets (preferences), or
the embedded synthetic task with a known gold reward (synthetic)."""

from gpo.data.sources.preferences import HHRLHF, Preferences, TLDRComparisons, UltraFeedbackBinarized
from gpo.data.sources.proxy import LetterCountProxy, ProxyPreferences, RepeatPenalisedCount
from gpo.data.sources.synthetic import CappedCount, CopiedCharacters, PreferredCharacters, SyntheticPreferences

__all__ = ["HHRLHF", "CappedCount", "CopiedCharacters", "LetterCountProxy", "Preferences", "PreferredCharacters",
           "ProxyPreferences", "RepeatPenalisedCount", "SyntheticPreferences", "TLDRComparisons",
           "UltraFeedbackBinarized"]
