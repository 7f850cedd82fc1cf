"""Train a policy with a preference loss: the Hydra entry point.

    python src/train.py                                   # DPO, beta 0.1, the embedded task
    python src/train.py loss=ipo beta=0.5
    python src/train.py -m 'loss=glob(*)' beta=0.01,0.1,1

Composition lives in gpo/run.py; the config in conf/.
"""

import os
from pathlib import Path

import hydra

from gpo.run import run_job

# Launchers that start fresh job processes (submitit local/SLURM) unpickle this
# module's functions there; they inherit the environment, so this lets them import gpo.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg) -> float | None:
    return run_job(cfg)


if __name__ == "__main__":
    main()
