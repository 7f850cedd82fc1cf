#!/usr/bin/env bash
# (The script that ran the last parts of the pre-registered sweep, kept as the record of what ran; see docs/reproduction.md.)
# Resumes the pre-registered sweep (sweeps/preregistered.sh, after sweeps/preregistered_resume.sh had run
# its first block): seeds 6-10 of exponential, truncated quadratic, SLiC and Savage in directories of their
# own, then the temperature part with seeds 1-5 first and 6-10 after. It was stopped after seeds 1-5 and run
# again twice for the temperature part's seeds 6-10 (temperature 2, then 4); a re-run skips finished runs.
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
# Block 2 (seeds 6-10 of the main families), then the temperature part with seeds 1-5 first, then 6-10
# (the same directories: with seed the outer sweep axis, seeds 1-5 have the same job numbers in both lists).
for loss in exponential truncated_quadratic slic savage; do
    run "main/$loss/seeds_678910" 6,7,8,9,10 "loss=$loss" "beta=${main[$loss]}" data.source.reward_temperature=1
done
for seeds in 1,2,3,4,5 1,2,3,4,5,6,7,8,9,10; do
    for t in 2 4; do for loss in ipo slic; do
        sub="temperature/$t/$loss/rest"
        [ "$t,$loss" = 2,ipo ] && sub=temperature/2/ipo  # started there by sweeps/preregistered.sh
        run "$sub" "$seeds" "loss=$loss" "beta=${temperature[$t,$loss]}" data.source.reward_temperature="$t"
    done; done
done
