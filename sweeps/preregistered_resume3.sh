#!/usr/bin/env bash
# The last part of the pre-registered sweep as it ran (kept as the record; docs/reproduction.md): seeds 6-10
# of the temperature part into the directories of seeds 1-5 (finished runs are skipped). It was stopped after
# temperature 2; preregistered_resume4.sh ran temperature 4's.
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
# Seeds 6-10 of the temperature part (1-5 done: skipped), into the same directories.
for t in 2 4; do for loss in ipo slic; do
    sub="temperature/$t/$loss/rest"
    [ "$t,$loss" = 2,ipo ] && sub=temperature/2/ipo  # started there by sweeps/preregistered.sh
    run "$sub" 1,2,3,4,5,6,7,8,9,10 "loss=$loss" "beta=${temperature[$t,$loss]}" data.source.reward_temperature="$t"
done; done
