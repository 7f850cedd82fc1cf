#!/usr/bin/env bash
# Losses that claim robustness to over-optimisation, on the over-optimisation testbed
# (docs/reproduction.md, section "chi-PO and RPO"): chi-PO and RPO against DPO on the
# reproduction's beta grid, 3 seeds = 90 runs (~10 min on 2 CPU cores), then the report.
#   bash sweeps/overoptimisation_losses.sh
#   LOSSES=dpo,chipo BETAS=0.5,1 SEEDS=1 bash sweeps/overoptimisation_losses.sh trainer.max_steps=20   # smoke test
set -euo pipefail
cd "$(dirname "$0")/.."

losses="${LOSSES:-dpo,chipo,rpo}"
betas="${BETAS:-0.177,0.25,0.354,0.5,0.707,1,1.41,2,2.83,4}"
seeds="${SEEDS:-1,2,3}"
dir="outputs/multirun/overoptimisation_losses/$(date +%Y-%m-%d_%H-%M-%S)"

start=$(date +%s)
python src/train.py -m experiment=overoptimisation "loss=$losses" "beta=$betas" "seed=$seeds" \
    hydra/launcher=joblib hydra.launcher.n_jobs="${JOBS:-2}" hydra.sweep.dir="$dir" \
    '~hydra.callbacks.sweep_report' "$@"
python src/report.py "$dir" --reference dpo > /dev/null
echo "Wall time: $(( $(date +%s) - start )) s"
echo "Report: $dir/report.md"
