"""CSV metrics that a resumed run adds to instead of replacing (conf/logger/csv.yaml).

Lightning's CSVLogger deletes an existing metrics.csv when it starts writing
(it expects a fresh version directory per run), so a resumed run, or a resume
that failed, lost every row logged before. Here the rows already in the file
stay: new rows are appended, and a new column rewrites the file whole (a
temporary file renamed into place), earlier rows included. A resumed run
re-logs the steps between its checkpoint and the kill: those steps appear
twice, in the order they were run.
"""

import csv
import os

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from gpo.infra.files import follow_umask


class AppendingExperimentWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])

    def _check_log_dir_exists(self) -> None:
        """Lightning's deletes metrics.csv here: keep it."""

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as file:
            rows = list(csv.DictReader(file))
        tmp = f"{self.metrics_file_path}.partial"
        with open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)
        follow_umask(tmp)
        os.replace(tmp, self.metrics_file_path)


class AppendingCSVLogger(CSVLogger):
    """Lightning's CSVLogger, keeping the rows a run's directory already holds."""

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
