"""Train a policy with a preference loss: the Hydra entry point.

    python src/train.py                                   # DPO, beta 0.1, the embedded task
    python src/train.py loss=ipo beta=0.5
    python src/train.py -m 'loss=glob(*)' beta=0.01,0.1,1

Composition lives in gpo/run.py; the config in conf/.
"""

import os

# Idle torch CPU threads sleep instead of spinning. OpenMP reads this once, when torch loads, hence before
# the imports. On a CPU that other work shares, a spinning thread holds the core its partner needs, and
# each of a step's thousands of parallel regions can wait a scheduler time slice. Measured with
# benchmarks/step_profile.py (docs/performance.md): with one of 2 cores busy elsewhere, two spinning threads
# ran the benchmark's step 1.59x slower than one thread, two sleeping ones 1.08x; on a quiet machine sleeping
# costs 7% (0.292 s vs 0.273 s a step). OMP_WAIT_POLICY or GOMP_SPINCOUNT set in the environment
# (GOMP_SPINCOUNT=300000: OpenMP's own default) are kept.
if "GOMP_SPINCOUNT" not in os.environ:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402 (after the environment torch reads when it loads)

import hydra  # noqa: E402

from gpo.run import run_job  # noqa: E402

# Launchers that start fresh job processes (submitit local/SLURM) unpickle this
# module's functions there; they inherit the environment, so this lets them import gpo.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg) -> float | None:
    return run_job(cfg)


if __name__ == "__main__":
    main()
