"""Evaluate a trained policy: the Hydra entry point (conf/evaluate.yaml).

    python src/evaluate.py policy=outputs/runs/<run>              # a run's checkpoint, with the run's own overrides
    python src/evaluate.py policy=outputs/runs/<run>/policy       # an exported policy (or any HF model path)
    python src/evaluate.py policy=<run> callbacks.sample_evaluation.num_prompts=2048

KL to the reference, gold reward, win rate, samples and the validation
metrics, in summary.json and a W&B run under outputs/evaluations/.
Composition lives in gpo/evaluate.py and gpo/run.py.
"""

import os
import sys
from pathlib import Path

import hydra

from gpo.evaluate import evaluate, with_run_overrides
from gpo.run import run_job

os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg) -> float | None:
    return run_job(cfg, evaluate)


if __name__ == "__main__":
    sys.argv[1:] = with_run_overrides(sys.argv[1:])
    main()
