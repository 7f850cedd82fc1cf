"""Hydra plugins of this project (Hydra finds plugins only in the hydra_plugins namespace)."""
