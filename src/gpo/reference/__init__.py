"""The reference policy: the initial policy (model + SFT stage, initial.py)
and the ways of getting log pi_ref from it (references.py, conf/reference)."""

from gpo.reference.initial import InitialPolicy
from gpo.reference.references import (
    AdapterReference,
    CachedReference,
    FrozenReference,
    NoReference,
    Reference,
    Sync,
)

__all__ = ["AdapterReference", "CachedReference", "FrozenReference", "InitialPolicy", "NoReference", "Reference",
           "Sync"]
