#!/usr/bin/env bash
# Resumes the pre-registered sweep (sweeps/preregistered.sh) in order of information:
# DPO's remaining runs, then seeds 1-5 of exponential, truncated quadratic, SLiC, savage,
# then seeds 6-10 of those, then the temperature part. Each (family, seed block) has its
# own sweep directory so Hydra's job numbers never name another config's directory.
# Finished jobs are skipped (resume=auto), so it can be run again after any stop.
#   bash sweeps/preregistered_resume.sh               # into outputs/multirun/preregistered/main_sweep
# Smoke test (extra arguments go to every multirun; GRID=small as in preregistered.sh):
#   DIR=/tmp/resume SEEDS=1 BLOCKS=1 GRID=small bash sweeps/preregistered_resume.sh trainer.max_steps=10
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${DIR:-outputs/multirun/preregistered/main_sweep}"
seeds="${SEEDS:-1,2,3,4,5,6,7,8,9,10}"
blocks="${BLOCKS:-1,2,3,4,5 6,7,8,9,10}"
mkdir -p "$dir"
# The grids (and GRID=small's trimming) from the pre-registered script: one source of truth.
source <(sed -n '/^declare -A main/,/^)/p;/^declare -A temperature/,/^)/p;/^if \[ "${GRID:-}" = small \]/,/^fi/p' \
    sweeps/preregistered.sh)
common=(experiment=proxy_overoptimisation data.source.proxy.num_pairs=100
        callbacks.sample_evaluation.every_n_steps=0 export.policy=false
        hydra/launcher=joblib hydra.launcher.n_jobs="${JOBS:-2}" num_threads=1 '~hydra.callbacks.sweep_report')
extra=("$@")
run() {  # run <sub dir> <seeds> <overrides...>
    local sub=$1 seeds=$2 start=$SECONDS; shift 2
    python src/train.py -m "${common[@]}" "seed=$seeds" hydra.sweep.dir="$dir/$sub" "$@" "${extra[@]}"
    echo "$sub: $(( SECONDS - start )) s" >> "$dir/wall_times.txt"
}
run main/dpo "$seeds" loss=dpo "beta=${main[dpo]}" data.source.reward_temperature=1
for block in $blocks; do
    for loss in exponential truncated_quadratic slic savage; do
        run "main/$loss/seeds_${block//,/}" "$block" "loss=$loss" "beta=${main[$loss]}" data.source.reward_temperature=1
    done
done
run temperature/2/ipo "$seeds" loss=ipo "beta=${temperature[2,ipo]}" data.source.reward_temperature=2
for t in 2 4; do for loss in ipo slic; do
    # IPO at 2 is complete after the line above: a second copy under temperature/2/ipo/rest would count
    # every run twice in the report (which refuses such twins).
    [ "$t,$loss" = 2,ipo ] && continue
    run "temperature/$t/$loss/rest" "$seeds" "loss=$loss" "beta=${temperature[$t,$loss]}" data.source.reward_temperature="$t"
done; done
echo "Sweep directory: $dir (wall times: $dir/wall_times.txt)"
