#!/usr/bin/env bash
# The last part of the pre-registered sweep as it ran (kept as the record; docs/reproduction.md): seeds 6-10
# of the hinge and IPO at label temperature 4, into the directories of seeds 1-5 (finished runs are skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=outputs/multirun/preregistered/main_sweep
source <(sed -n '/^declare -A main/,/^)/p;/^declare -A temperature/,/^)/p' sweeps/preregistered.sh)
common=(experiment=proxy_overoptimisation data.source.proxy.num_pairs=100
        callbacks.sample_evaluation.every_n_steps=0 export.policy=false
        hydra/launcher=joblib hydra.launcher.n_jobs=2 num_threads=1 '~hydra.callbacks.sweep_report')
run() {  # run <sub dir> <seeds> <overrides...>
    local sub=$1 seeds=$2 start=$SECONDS; shift 2
    python src/train.py -m "${common[@]}" "seed=$seeds" hydra.sweep.dir="$dir/$sub" "$@"
    echo "$sub: $(( SECONDS - start )) s" >> "$dir/wall_times.txt"
}
for loss in ipo slic; do
    run "temperature/4/$loss/rest" 1,2,3,4,5,6,7,8,9,10 "loss=$loss" "beta=${temperature[4,$loss]}" data.source.reward_temperature=4
done
