"""Sweep results into DataFrames: one row per run, and one row per
(run, evaluation step) of the training trajectories.

Local runs are read from their `summary.json` (`gpo.infra.summary.RunSummary`);
`load_wandb_runs` reads the same run table from the W&B run summaries.

Run table columns: the run fields (loss, beta, seed, status, error, ...),
one column per final metric, the family's theory fields (f0, df0, d2f0,
regularisation_scale) and one column per Hydra override key
("data.source.reward_temperature", ...; keys that name a run field, as
"beta" or "loss", are not repeated). Two object columns carry what the
theory needs: `loss_config` (dict), `preference_probabilities` (list of
[p, count], or None) and `label_features` (dict, or None: what the
projected-link predictor reads, from sources that record the features their
labels see, gpo.data.sources.proxy).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gpo.infra.summary import FILENAME, FINISHED, RunSummary
from gpo.report.metrics import STDERR_SUFFIX

THEORY_FIELDS = ["f0", "df0", "d2f0", "regularisation_scale"]
# Per-run fields that identify or describe a run rather than measure it.
RUN_FIELDS = ["loss", "beta", "seed", "status", "error", "beta_requested", "beta_scale",
              "overrides", "path", "loss_config", "preference_probabilities", "label_features", *THEORY_FIELDS]
OBJECT_FIELDS = ("loss_config", "preference_probabilities", "label_features", "overrides")


def read_summaries(directory: str | Path) -> dict[str, RunSummary]:
    """Every summary.json under `directory` (recursively), by run path relative to it."""
    directory = Path(directory)
    paths = sorted(directory.rglob(FILENAME))
    if not paths:
        raise FileNotFoundError(f"no {FILENAME} under {directory}")
    summaries = {}
    for path in paths:
        try:
            summaries[str(path.parent.relative_to(directory))] = RunSummary.read(path)
        except (ValueError, TypeError) as error:  # truncated or hand-edited: name the file, report nothing
            raise LookupError(f"{path}: not a readable {FILENAME} ({type(error).__name__}: {error}); "
                              "move it away or re-run that job") from error
    return summaries


def parse_override(override: str) -> tuple[str, object] | None:
    """'data.source.reward_temperature=2' -> (key, 2.0); '+k=v' and '++k=v' as k=v;
    deletions ('~k') and malformed entries -> None. Numbers become floats."""
    override = override.lstrip("+")
    if override.startswith("~") or "=" not in override:
        return None
    key, value = override.split("=", 1)
    try:
        return key, float(value)
    except ValueError:
        return key, value.strip("'\"")


def preference_probabilities(data: dict) -> list | None:
    """[[p, count], ...] from a summary's `data`, top level or the train split's."""
    if not isinstance(data, dict):
        return None
    found = data.get("preference_probabilities")
    if found is None and isinstance(data.get("train"), dict):
        found = data["train"].get("preference_probabilities")
    return found or None


def _number_or_none(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def runs_frame(summaries: dict[str, RunSummary]) -> pd.DataFrame:
    """One row per run (see the module docstring for the columns)."""
    records = []
    for path, s in summaries.items():
        record = {"loss": series_label(s.loss, s.method), "beta": s.beta, "seed": s.seed, "status": s.status,
                  "error": s.error, "beta_requested": s.beta_requested, "beta_scale": s.beta_scale,
                  "overrides": list(s.overrides), "path": path, "loss_config": dict(s.loss_config),
                  "preference_probabilities": preference_probabilities(s.data),
                  "label_features": s.data.get("label_features") if isinstance(s.data, dict) else None,
                  "wall_time_s": s.wall_time_s}
        record.update({k: v for k, v in s.theory.items() if k in THEORY_FIELDS})
        record.update({k: v for k, v in s.metrics.items() if _number_or_none(v)})
        for parsed in filter(None, map(parse_override, s.overrides)):
            record.setdefault(*parsed)
        records.append(record)
    return normalise(pd.DataFrame.from_records(records))


def series_label(loss: str, method: str) -> str:
    """A run's family in the report: its loss, and the method's non-default axes
    (gpo.training.names.method) when there are any, e.g. "dpo [rho=mean]": runs that differ
    in an axis are never averaged into one curve."""
    return f"{loss} [{method}]" if method else loss


def trajectories_frame(summaries: dict[str, RunSummary], runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (run, evaluation step): path, step and the eval/ metrics, joined
    with the run's identifying columns (loss, beta, seed, status and the override keys)."""
    records = [{"path": path, **{k: v for k, v in point.items() if _number_or_none(v)}}
               for path, s in summaries.items() for point in s.trajectory]
    runs = runs_frame(summaries) if runs is None else runs
    if not records:
        return pd.DataFrame(columns=["path", "loss", "beta", "seed", "status", "step"])
    points = pd.DataFrame.from_records(records)
    keep = ["path", "loss", "beta", "seed", "status"] + override_columns(runs)
    frame = points.merge(runs[keep], on="path", how="left")
    frame["step"] = pd.to_numeric(frame["step"], errors="coerce")
    front = keep + ["step"]
    return frame[front + [c for c in frame.columns if c not in front]].sort_values(
        ["loss", "beta", "seed", "step"], ignore_index=True)


def load_sweep(directory: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, trajectories) of every summary.json under `directory`."""
    summaries = read_summaries(directory)
    runs = runs_frame(summaries)
    return runs, trajectories_frame(summaries, runs)


def load_summaries(directory: str | Path) -> pd.DataFrame:
    """The run table alone."""
    return runs_frame(read_summaries(directory))


def load_wandb_runs(group: str, project: str | None = None, entity: str | None = None) -> pd.DataFrame:
    """The run table, read from the W&B run summaries of a group (no trajectories)."""
    import wandb  # only needed online

    api = wandb.Api()
    path = "/".join(p for p in (entity or api.default_entity, project) if p)
    records = []
    for run in api.runs(path, filters={"group": group}):
        summary = dict(run.summary)
        # W&B adds its own bookkeeping (_step, _runtime, ...) to every summary.
        record = {k: v for k, v in summary.items() if not k.startswith("_")
                  and (k in RUN_FIELDS or _number_or_none(v))}
        for key in ("loss", "beta", "beta_requested", "beta_scale", "seed"):
            # The trainer may have put the sweep axes in the config instead.
            if key not in record and not isinstance(run.config.get(key), dict):
                record[key] = run.config.get(key)
        if isinstance(run.config.get("loss"), dict):  # the resolved loss node
            record.setdefault("loss_config", run.config["loss"])
        record.setdefault("status", run.state)
        record.setdefault("wall_time_s", summary.get("_runtime"))
        record["path"] = run.url
        records.append(record)
    if not records:
        raise LookupError(f"no W&B runs in group {group!r} of {path!r}")
    return normalise(pd.DataFrame.from_records(records))


def normalise(runs: pd.DataFrame) -> pd.DataFrame:
    """Every run field present, numbers numeric, the scale filled from f'(0), f''(0)."""
    runs = runs.copy()
    for col in RUN_FIELDS:
        if col not in runs:
            runs[col] = None if col in OBJECT_FIELDS else np.nan
    runs["status"] = runs["status"].fillna("unknown")
    for col in ["beta", "seed", "beta_requested", *THEORY_FIELDS]:
        runs[col] = pd.to_numeric(runs[col], errors="coerce")
    # Summaries without the scale: it follows from the Taylor coefficients.
    runs["regularisation_scale"] = runs["regularisation_scale"].fillna(runs["d2f0"] / runs["df0"].abs())
    for col in value_columns(runs):
        converted = pd.to_numeric(runs[col], errors="coerce")
        if converted.notna().sum() >= runs[col].notna().sum():  # numeric (or empty): keep as numbers
            runs[col] = converted
    return runs


def check_unique(runs: pd.DataFrame) -> None:
    """LookupError naming them when two finished runs share a configuration (loss, beta, seed and
    overrides): e.g. a sweep resumed into a second directory under the one reported. Each would count
    as a seed of its own, with identical values: too many seeds and too small an error."""
    done = finished(runs)
    known = done["overrides"].map(lambda o: isinstance(o, list))
    keys = done[known].assign(config=done.loc[known, "overrides"].map(lambda o: tuple(sorted(map(str, o)))))
    twins = keys[keys.duplicated(["loss", "beta", "seed", "config"], keep=False)]
    if twins.empty:
        return
    first = twins.iloc[0]
    same = twins[(twins["loss"] == first["loss"]) & (twins["beta"] == first["beta"])
                 & (twins["seed"] == first["seed"]) & (twins["config"] == first["config"])]
    raise LookupError(f"{len(twins)} finished runs repeat another's configuration, e.g. {' and '.join(same['path'])} "
                      f"(loss {first['loss']}, beta {first['beta']:g}, seed {first['seed']:g}, the same overrides): "
                      "each would count as a seed; move one copy out of the reported directory")


def override_columns(runs: pd.DataFrame) -> list[str]:
    """Columns that came from Hydra override keys."""
    keys = {parsed[0] for overrides in runs["overrides"] if isinstance(overrides, list)
            for parsed in filter(None, map(parse_override, overrides))}
    return [c for c in runs.columns if c in keys and c not in RUN_FIELDS]


def value_columns(runs: pd.DataFrame) -> list[str]:
    """Measured quantities and override keys: every column that is not a run field."""
    return [c for c in runs.columns if c not in RUN_FIELDS]


def metric_columns(runs: pd.DataFrame) -> list[str]:
    """Numeric measurements (not their per-run errors, not override keys)."""
    overrides = set(override_columns(runs))
    return [c for c in value_columns(runs) if c not in overrides and not c.endswith(STDERR_SUFFIX)
            and pd.api.types.is_numeric_dtype(runs[c])]


def finished(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"] == FINISHED]
