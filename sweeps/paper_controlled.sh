#!/usr/bin/env bash
# The no-over-optimisation control (docs/reproduction.md, section 4): the paper's six families x 6 betas x
# 3 seeds on the synthetic task (conf/experiment/paper_controlled.yaml), the
# sweep report and its figures (FIGURES=docs/figures: also copied to the tracked docs/figures/controlled_*.png).
#   bash sweeps/paper_controlled.sh        # 108 runs: ~45 min wall on 2 busy CPU cores (docs/reproduction.md)
#   bash sweeps/paper_controlled.sh hydra/launcher=joblib hydra.launcher.n_jobs=2   # extra overrides go to train.py
# The grid can be changed without editing (LOSSES is a Hydra choice sweep):
#   LOSSES=dpo,ipo BETAS=0.1,1 SEEDS=1 bash sweeps/paper_controlled.sh trainer.max_steps=20
set -euo pipefail
cd "$(dirname "$0")/.."

losses="${LOSSES:-glob([dpo,ipo,slic,exponential,truncated_quadratic,savage])}"   # the paper's six families (an opt-in subset of conf/loss)
betas="${BETAS:-0.03,0.1,0.2,0.5,1,3}"
seeds="${SEEDS:-1,2,3}"
figures="${FIGURES:-none}"   # a directory: copy the figures there (opt-in: docs/figures holds tracked files)
dir="outputs/multirun/paper_controlled/$(date +%Y-%m-%d_%H-%M-%S)"

time python src/train.py -m experiment=paper_controlled "loss=$losses" "beta=$betas" "seed=$seeds" \
    hydra.sweep.dir="$dir" "$@"
time python src/report.py "$dir"
if [ "$figures" != none ]; then
    for figure in metrics_vs_beta metrics_vs_scaled_beta gold_vs_kl; do
        cp "$dir/$figure.png" "$figures/controlled_$figure.png"
    done
fi
echo "Report: $dir/report.md"
