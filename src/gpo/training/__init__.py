"""Training: the LightningModule that composes policy, reference and loss
(module), the checkpoints a run resumes from (checkpoints), what stops a run
without losing work (preemption), the experiment a run is (identity), which
run a command continues (resume) and where a run's wall time goes (timing:
summary.json `time_split`)."""

from gpo.training.checkpoints import AtomicCheckpointIO, LastCheckpoint
from gpo.training.identity import RunRecord
from gpo.training.module import GPOModule, NonFiniteLossError
from gpo.training.preemption import CheckpointOnSignal, Interrupted

__all__ = ["AtomicCheckpointIO", "CheckpointOnSignal", "GPOModule", "Interrupted", "LastCheckpoint",
           "NonFiniteLossError", "RunRecord"]
