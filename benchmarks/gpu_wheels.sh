#!/usr/bin/env bash
# Wheels for running benchmarks/gpu_check.py on a GPU machine with no network
# whose Python already holds torch, accelerate, peft, pytorch-lightning,
# tokenizers and the scientific stack (the H200 image of docs/performance.md)
# but not the rest of requirements.txt. Downloads, for CPython 3.12 on
# x86-64 Linux, the versions this environment's pip has installed (so they
# match requirements.txt and benchmarks/requirements.txt), into .whl/:
#   bash benchmarks/gpu_wheels.sh            # here, where pip reaches the index (~38 MB)
# Then, on the GPU machine, from the repository root:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
#     && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(hydra-core omegaconf antlr4-python3-runtime hydra-joblib-launcher datasets dill multiprocess
          wandb gitpython gitdb smmap platformdirs pydantic pydantic-core annotated-types typing-inspection
          sentry-sdk transformers trl)
pins=()
for name in "${packages[@]}"; do
    version=$(python -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    [ -n "$version" ] || { echo "not installed here: $name (pip install -r requirements.txt -r benchmarks/requirements.txt)"; exit 1; }
    pins+=("$name==$version")
done
exclude=$(git rev-parse --git-path info/exclude)   # .whl/ travels to the device without being committed
mkdir -p "$(dirname "$exclude")"; grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
for pin in "${pins[@]}"; do   # a pure-Python package published as a source archive only (antlr4) is built here
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d .whl "$pin" 2>/dev/null || python -m pip wheel -q --no-deps -w .whl "$pin"
done
du -sh .whl
