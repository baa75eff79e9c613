#!/usr/bin/env bash
# The GPU checks of the benchmarks in one go on a CUDA machine, most important first, each bounded in time,
# everything written under OUT_DIR and packed after each step into PACK (default OUT_DIR.tgz).
#
#   bash benchmarks/cuda_suite.sh OUT_DIR [BASE_CHECKOUT]
#
# BASE_CHECKOUT: an older checkout of this repository (e.g. `git archive <commit> | tar -x -C base`) whose
# train_throughput.py is run first on the same card, for a before/after pair measured in one session.
# Needs mamba-ssm importable for its rows (`make gpu-wheel` builds it into .whl/ as a pure-Python wheel: the SSD
# kernels are Triton; the suite needs nothing else beyond torch, triton and the usual numpy/pandas/pyarrow/
# matplotlib/pyyaml/safetensors/tqdm/pytest stack); PYTHON picks the interpreter (default python3);
# STEPS="throughput latency" runs only the steps named (default all, in this order: loader cuda_graphs tests_graphs
# padded_graphs cuda_graphs_torch throughput filter_compiled throughput_compiled fold_compiled throughput_base
# padded fold tests latency ssd_ieee),
# and LIMIT_<step>=SECONDS changes a step's time limit.
# Most of each step is Triton compiling mamba-ssm's kernels (~80 s a shape family, cached in TRITON_CACHE_DIR) and
# torch.compile (~70 s a model); each step's limit allows for that. The limits add up to ~57 min, far more than a
# 15-minute lease: pick two or three steps with STEPS (on an H200 `cuda_graphs` took 246 s, `padded_graphs` 235 s,
# `loader` 16 s, `fold_compiled` 326 s from cold caches).
set -u
out=${1:?usage: bash benchmarks/cuda_suite.sh OUT_DIR [BASE_CHECKOUT]}
base=${2:-}
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
mkdir -p "$out"
pack=${PACK:-$out.tgz}
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/tfmamba-triton}
path_with() { echo "$1${PYTHONPATH:+:$PYTHONPATH}"; }

run() {  # run NAME SECONDS COMMAND...: its output to OUT_DIR/NAME.log, a one-line verdict to the console
    local name=$1 started=$SECONDS limit_var=LIMIT_$1
    local limit=${!limit_var:-$2}  # LIMIT_<name>=SECONDS overrides a step's limit (a shorter lease)
    shift 2
    if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]]; then return; fi
    echo "== $name (limit ${limit}s)"
    timeout -k 5 "$limit" "$@" >"$out/$name.log" 2>&1
    local code=$?
    echo "== $name: exit $code after $((SECONDS - started)) s"
    grep -E '^\{|^wrote|Error|error|passed|failed' "$out/$name.log" | tail -n 12
    pack_results  # what is done so far survives a later step's hang
}
pack_results() { tar -czf "$pack.tmp" -C "$out" . && mv "$pack.tmp" "$pack"; }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >"$out/gpu.txt" 2>&1
$py -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >>"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"

run loader 90 env PYTHONPATH="$(path_with "$here")" $py "$here/benchmarks/loader_throughput.py" --device cuda \
    --out "$out/loader"
run cuda_graphs 280 env PYTHONPATH="$(path_with "$here")" $py "$here/benchmarks/train_throughput.py" --device cuda \
    --variants tf_cmdt --backends mamba_ssm --steps cuda_graphs --profile --out "$out/cuda_graphs"
run tests_graphs 420 env PYTHONPATH="$(path_with "$here")" $py -m pytest -q -s -p no:cacheprovider -m gpu \
    -k cuda_graphs "$here/tests/test_cuda_training.py"
run padded_graphs 240 env PYTHONPATH="$(path_with "$here")" $py "$here/benchmarks/train_throughput.py" \
    --device cuda --variants tf_cmdt --backends mamba_ssm --steps cuda_graphs compiled --lengths iemocap --frames 600 \
    --profile --out "$out/padded_graphs"
run cuda_graphs_torch 200 env PYTHONPATH="$(path_with "$here")" $py "$here/benchmarks/train_throughput.py" \
    --device cuda --variants tf_cmdt --backends torch --steps cuda_graphs --profile --out "$out/cuda_graphs_torch"
run throughput 200 env PYTHONPATH="$(path_with "$here")" $py "$here/benchmarks/train_throughput.py" --device cuda \
    --variants tf_cmdt --backends mamba_ssm torch --steps trainer graphed --out "$out/eager"
run filter_compiled 240 env PYTHONPATH="$(path_with "$here")" $py "$here/benchmarks/train_throughput.py" \
    --device cuda --variants tf_cmdt --backends torch --steps compiled compiled_graphed --unpadded-filter fft dft \
    --profile --out "$out/filter_compiled"
run throughput_compiled 270 env PYTHONPATH="$(path_with "$here")" $py "$here/benchmarks/train_throughput.py" \
    --device cuda --variants tf_cmdt --backends mamba_ssm --steps compiled_graphed --out "$out/compiled"
run fold_compiled 420 env PYTHONPATH="$(path_with "$here")" $py "$here/benchmarks/fold_gpu.py" --device cuda \
    --num-workers 0 --compile graphs off --set checkpoint_seconds=60 --out "$out/fold_compiled"
if [ -n "$base" ]; then
    run throughput_base 120 env PYTHONPATH="$(path_with "$base")" $py "$base/benchmarks/train_throughput.py" \
        --device cuda --variants tf_cmdt --backends mamba_ssm torch --repeats 5 --out "$out/base"
fi
run padded 200 env PYTHONPATH="$(path_with "$here")" $py "$here/benchmarks/train_throughput.py" --device cuda \
    --variants tf_cmdt --backends mamba_ssm torch --lengths iemocap --frames 600 --filter grouped dft --out "$out/padded"
run fold 240 env PYTHONPATH="$(path_with "$here")" $py "$here/benchmarks/fold_gpu.py" --device cuda \
    --out "$out/fold"
run tests 360 env PYTHONPATH="$(path_with "$here")" $py -m pytest -q -s -p no:cacheprovider -m gpu \
    "$here/tests/test_mamba_ssm_op.py" "$here/tests/test_ssd.py" "$here/tests/test_cuda_training.py"
run latency 120 env PYTHONPATH="$(path_with "$here")" $py "$here/benchmarks/latency.py" --device cuda \
    --lengths 1000 2000 4000 8000 --out "$out/latency"
run ssd_ieee 240 env TRITON_F32_DEFAULT=ieee TRITON_CACHE_DIR=/tmp/tfmamba-triton-ieee PYTHONPATH="$(path_with "$here")" \
    $py "$here/benchmarks/ssd.py" --device cuda --seqlens 1000 2000 --max-sequential 0 --out "$out/ieee"
pack_results && echo "packed into $pack"
