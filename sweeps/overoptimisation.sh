#!/usr/bin/env bash
# The GPO paper's beta claims on the over-optimisation testbed, end to end
# (docs/reproduction.md; conf/experiment/overoptimisation.yaml):
#   1. the paper's six families x 10 betas (sqrt(2) apart) x 3 seeds = 180 runs;
#   2. the label-temperature check: DPO and IPO at reward_temperature 2 and 4,
#      6 betas, one seed = 24 runs (temperature 1 is part 1);
#   3. the sweep reports (best beta with bootstrap intervals, theory ratios,
#      matched-KL ratios by temperature) and the figures, in the sweep directory.
#   bash sweeps/overoptimisation.sh                            # ~25 min on 2 CPU cores (joblib, 2 jobs)
#   FIGURES=docs/figures bash sweeps/overoptimisation.sh       # also replace the tracked docs/figures/overopt_*.png
# Smaller, for a smoke test of the chain (extra arguments go to both multiruns):
#   LOSSES=dpo,ipo BETAS=0.5,1 SEEDS=1 TEMPERATURE_BETAS=0.5,1 bash sweeps/overoptimisation.sh trainer.max_steps=20
set -euo pipefail
cd "$(dirname "$0")/.."

losses="${LOSSES:-glob([dpo,ipo,slic,exponential,truncated_quadratic,savage])}"
betas="${BETAS:-0.177,0.25,0.354,0.5,0.707,1,1.41,2,2.83,4}"
seeds="${SEEDS:-1,2,3}"
temperature_betas="${TEMPERATURE_BETAS:-0.0625,0.125,0.25,0.5,1,2}"
figures="${FIGURES:-none}"   # a directory: copy the figures there (opt-in: docs/figures holds tracked files)
dir="outputs/multirun/overoptimisation/$(date +%Y-%m-%d_%H-%M-%S)"
parallel=(hydra/launcher=joblib hydra.launcher.n_jobs="${JOBS:-2}")

start=$(date +%s)
python src/train.py -m experiment=overoptimisation "loss=$losses" "beta=$betas" "seed=$seeds" \
    data.source.reward_temperature=1 "${parallel[@]}" hydra.sweep.dir="$dir/families" \
    '~hydra.callbacks.sweep_report' "$@"
python src/train.py -m experiment=overoptimisation loss=dpo,ipo "beta=$temperature_betas" seed=1 \
    data.source.reward_temperature=2,4 "${parallel[@]}" hydra.sweep.dir="$dir/temperature" \
    '~hydra.callbacks.sweep_report' "$@"
python src/report.py "$dir/families" > /dev/null
python src/report.py "$dir" --by data.source.reward_temperature > /dev/null   # both parts, grouped by temperature
mv "$dir/report.md" "$dir/temperature_report.md"; mv "$dir/report.csv" "$dir/temperature_report.csv"
echo "Wall time: $(( $(date +%s) - start )) s for the runs and the reports"
if [ "$figures" != none ]; then
    for figure in "$dir"/families/*.png; do
        cp "$figure" "$figures/overopt_$(basename "$figure")"
    done
    cp "$dir/ratio_vs_data.source.reward_temperature.png" "$figures/overopt_ratio_vs_temperature.png"
fi
echo "Reports: $dir/families/report.md, $dir/temperature_report.md"
