"""Where a run's wall time goes: `time_split` in summary.json, seconds by stage.

    process_start      the process's start to the run (imports, Hydra): the
                       first run of a process only
    job_start          a later job of a multirun in the same process: the
                       previous job's last stage to this one (Hydra's job set-up)
    setup, data, sft, reference, logger, trainer   gpo.run's own stages (laps)
    training_steps     forward, backward and optimizer of every step (`FitClock`)
    validation         Lightning's validation loops (`FitClock`)
    sample_evaluation  gpo.evaluation.SampleEvaluation, all its evaluations
    fit_other          the rest of trainer.fit: loading batches, checkpoints,
                       Lightning's loop, the other callbacks
    export, teardown   the saved policy; the W&B run's end and the summary
    total              the sum: the job's wall time, start-up included

`benchmarks/testbed_time_split.py` tabulates it over the runs of a sweep.
"""

import os
import time

import pytorch_lightning as pl

from gpo.data.tokenization import real_tokens

_last_lap: float | None = None  # perf_counter at the last stage a run of this process ended


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc), None where unknown."""
    try:
        with open("/proc/self/stat") as stat:
            started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime") as uptime:
            return float(uptime.read().split()[0]) - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class StageClock:
    """Seconds per stage of a run, as laps: `lap(name)` ends the stage `name`
    where the previous lap (or the clock's creation) ended."""

    def __init__(self):
        self._last = time.perf_counter()
        if _last_lap is not None:
            self.seconds = {"job_start": self._last - _last_lap}
        else:
            age = process_age()
            self.seconds = {} if age is None else {"process_start": age}

    def lap(self, name: str) -> None:
        global _last_lap
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self._last = _last_lap = now

    def split(self, fit_parts: dict[str, float]) -> dict[str, float]:
        """The stages with `fit` broken into `fit_parts` (what callbacks
        measured inside it) and `fit_other`, and their total."""
        seconds = dict(self.seconds)
        if "fit" in seconds:
            fit = seconds.pop("fit")
            seconds.update(fit_parts)
            seconds["fit_other"] = max(0.0, fit - sum(fit_parts.values()))
        return {**seconds, "total": sum(seconds.values())}


class FitClock(pl.Callback):
    """Times inside trainer.fit: every training step from batch start to batch
    end (forward, backward, optimizer; it goes first among the callbacks, so
    the others' batch-end work, a sample evaluation, is not in it) and the
    validation loops. Also `stages["training"]`: the time from the start of
    training to each batch end (data loading included) and the real and
    padded tokens per batch, what benchmarks/training_speed.py reads."""

    def __init__(self):
        self.steps = self.validation = 0.0
        self.start, self.ends, self.tokens, self.slots = None, [], [], []

    def on_train_start(self, trainer, module):
        self.start = time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        now = time.perf_counter()
        self.steps += now - self._batch_start
        self.ends.append(now)
        self.tokens.append(real_tokens(batch))
        self.slots.append(batch["input_ids"].numel())

    def on_validation_start(self, trainer, module):
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer, module):
        self.validation += time.perf_counter() - self._validation_start

    def contribute(self, summary) -> None:
        summary.time_split.update(training_steps=self.steps, validation=self.validation)
        if self.ends:
            steps = [b - a for a, b in zip([self.start, *self.ends], self.ends)]
            summary.stages["training"] = {"seconds": self.ends[-1] - self.start, "step_seconds": steps,
                                          "step_real_tokens": self.tokens, "real_tokens": sum(self.tokens),
                                          "batch_tokens": sum(self.slots)}
