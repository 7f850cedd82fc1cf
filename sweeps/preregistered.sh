#!/usr/bin/env bash
# The pre-registered theory test on the emergent over-optimisation testbed
# (docs/reproduction.md, "Pre-registered test"; predictions committed before
# this sweep ran). Proxy from N = 100 gold-labelled pairs, 10 seeds (each a
# different sample of the policy's pairs), beta 2^(1/4) apart around each
# family's predicted best beta (the grid spans every predictor's value):
#   1. the six GPO families at label temperature 1 (710 runs);
#   2. the hinge and IPO at label temperatures 2 and 4 (450 runs).
# Each grid: the 2^(1/4) points around the predictions plus two points each
# side sqrt(2) apart (the amendment in docs/reproduction.md).
# Trajectory evaluations and the policy export are off (the final metrics do
# not depend on them; they were ~30% of a run's time). Each part's wall time
# goes to <dir>/wall_times.txt.
#   bash sweeps/preregistered.sh                      # ~4-8 h on 2 shared CPU cores (joblib, 2 jobs)
#   PARTS=main bash sweeps/preregistered.sh           # part 1 only; PARTS=temperature: part 2 only
# Smoke test of the chain (extra arguments go to every multirun):
#   SEEDS=1 GRID=small PARTS=main bash sweeps/preregistered.sh trainer.max_steps=10
set -euo pipefail
cd "$(dirname "$0")/.."

seeds="${SEEDS:-1,2,3,4,5,6,7,8,9,10}"
parts="${PARTS:-main temperature}"
dir="${DIR:-outputs/multirun/preregistered/$(date +%Y-%m-%d_%H-%M-%S)}"
mkdir -p "$dir"
common=(experiment=proxy_overoptimisation data.source.proxy.num_pairs=100 "seed=$seeds"
        callbacks.sample_evaluation.every_n_steps=0 export.policy=false
        hydra/launcher=joblib hydra.launcher.n_jobs="${JOBS:-2}" num_threads=1 '~hydra.callbacks.sweep_report')

declare -A main=(
    [ipo]=0.05255,0.07432,0.1051,0.125,0.1487,0.1768,0.2102,0.25,0.2973,0.3536,0.4204,0.5,0.7071,1
    [dpo]=0.1768,0.25,0.3536,0.4204,0.5,0.5946,0.7071,0.8409,1,1.414,2
    [savage]=0.1768,0.25,0.3536,0.4204,0.5,0.5946,0.7071,0.8409,1,1.414,2
    [exponential]=0.0884,0.125,0.1768,0.2102,0.25,0.2973,0.3536,0.4204,0.5,0.7071,1
    [truncated_quadratic]=0.0625,0.08839,0.125,0.1487,0.1768,0.2102,0.25,0.2973,0.3536,0.4204,0.5,0.7071,1
    [slic]=0.1487,0.2102,0.2973,0.3536,0.4204,0.5,0.5946,0.7071,0.8409,1.189,1.682
)
declare -A temperature=(
    [2,ipo]=0.03715,0.05254,0.0743,0.0884,0.1051,0.125,0.1487,0.1768,0.2102,0.2973,0.4204
    [2,slic]=0.1051,0.1486,0.2102,0.25,0.2973,0.3536,0.4204,0.5,0.5946,0.8409,1.189
    [4,ipo]=0.0221,0.03125,0.0442,0.0526,0.0625,0.0743,0.0884,0.1051,0.1486,0.2102
    [4,slic]=0.0884,0.125,0.1768,0.2102,0.25,0.2973,0.3536,0.4204,0.5,0.5946,0.7071,1,1.414
)
if [ "${GRID:-}" = small ]; then  # two betas per family, for the smoke test
    for key in "${!main[@]}"; do main[$key]=$(cut -d, -f4,5 <<< "${main[$key]}"); done
    for key in "${!temperature[@]}"; do temperature[$key]=$(cut -d, -f3,4 <<< "${temperature[$key]}"); done
fi

run() {  # run <sub dir> <overrides...>
    local sub=$1 start=$SECONDS
    shift
    python src/train.py -m "${common[@]}" hydra.sweep.dir="$dir/$sub" "$@"
    echo "$sub: $(( SECONDS - start )) s" >> "$dir/wall_times.txt"
}

for part in $parts; do
    if [ "$part" = main ]; then
        for loss in ipo dpo savage exponential truncated_quadratic slic; do
            run "main/$loss" "loss=$loss" "beta=${main[$loss]}" data.source.reward_temperature=1 "$@"
        done
    elif [ "$part" = temperature ]; then
        for t in 2 4; do
            for loss in ipo slic; do
                run "temperature/$t/$loss" "loss=$loss" "beta=${temperature[$t,$loss]}" \
                    data.source.reward_temperature="$t" "$@"
            done
        done
    fi
done
echo "Sweep directory: $dir (wall times: $dir/wall_times.txt)"
echo "Reports: python src/report.py $dir/main; python src/report.py $dir --by data.source.reward_temperature"
