"""Toy bandit experiment of the GPO paper: exact population GPO on a tabular bandit.

    python src/bandit.py [hydra overrides]        (config: conf/bandit.yaml)

Writes CSV files, figures and a summary table into the Hydra run directory
(gpo/bandit/experiment.py lists them); docs/bandit.md discusses them.
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gpo.bandit.experiment import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="bandit")
def main(cfg: DictConfig) -> None:
    run(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
