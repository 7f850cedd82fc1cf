#!/usr/bin/env bash
# The GPO paper's controlled experiment, end to end: every family x 6 betas x
# 3 seeds on the synthetic task (conf/experiment/paper_controlled.yaml), the
# sweep report, and the figures copied into docs/figures/controlled_*.png.
#   bash sweeps/paper_controlled.sh                  # about 40-70 min on 2 shared CPU cores
#   bash sweeps/paper_controlled.sh hydra/launcher=joblib hydra.launcher.n_jobs=2   # extra overrides go to train.py
set -euo pipefail
cd "$(dirname "$0")/.."

dir="outputs/multirun/paper_controlled/$(date +%Y-%m-%d_%H-%M-%S)"
time python src/train.py -m experiment=paper_controlled 'loss=glob(*)' \
    beta=0.03,0.1,0.2,0.5,1,3 seed=1,2,3 hydra.sweep.dir="$dir" "$@"
time python src/report.py "$dir"
for figure in metrics_vs_beta metrics_vs_scaled_beta gold_vs_kl; do
    cp "$dir/$figure.png" "docs/figures/controlled_$figure.png"
done
echo "Report: $dir/report.md"
