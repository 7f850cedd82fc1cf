#!/usr/bin/env bash
# Every loss in conf/loss x beta in {0.01, 0.1, 1} (28 losses x 3 = 84 runs, conf/sweep/families_beta.yaml);
# the sweep report is written into the sweep directory at the end.
#   bash sweeps/families_beta.sh                                             # sequential
#   bash sweeps/families_beta.sh hydra/launcher=joblib hydra.launcher.n_jobs=2  # extra overrides go to train.py
set -euo pipefail
cd "$(dirname "$0")/.."
exec python src/train.py -m sweep=families_beta "$@"
