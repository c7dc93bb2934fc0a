#!/usr/bin/env bash
# The GPU benchmark: CUDA tests, engine and seg_node numbers, in one run. See docs/GPU_PLAN.md.
#
#   bash bench/run_gpu_session.sh             # on a CUDA machine, from the repository root
#   bash bench/run_gpu_session.sh --dry-run   # the same steps on any CPU at tiny sizes (~1 min; the tests run it)
#   bash bench/run_gpu_session.sh --prepare   # for an offline GPU machine: ROS wheels into .whl/, weights into .gpu/
#
# Every step runs under `timeout`, writes its JSON as it goes, and a failing step does not stop the
# next, so whatever finished is kept. The ESSENTIAL part (CUDA tests, RegSeg engine numbers, fp16
# agreement, seg_node latency) stops after ESSENTIAL_BUDGET seconds (default 420), the OPTIONAL part
# after BUDGET seconds from the start (default 480); raise both for a fuller run.
# Environment: OUT, BUDGET, ESSENTIAL_BUDGET, PARENT_PYTHON (the Python with torch; default
# .venv/bin/python when present, else python3), VENV, SKIP_STEPS (a regular expression of step
# names to skip, e.g. to rerun only what a previous run did not finish).
#
# Results: bench/results/*.json, copied to $OUT with session.log and logs.tar.gz.
#
# Python: when .whl/ holds ROS 2 wheels (from --prepare) or VENV is set, the script makes a venv
# that keeps the parent Python's torch (`venv --without-pip` plus a .pth adding the parent's
# site-packages; `--system-site-packages` would miss it when python3 is itself a venv), installs
# the wheels there and checks `import torch, rclpy`; on failure it says so loudly and continues
# with the parent Python (the seg_node latency steps are skipped).
set -uo pipefail
cd "$(dirname "$0")/.."

WEIGHTS_NAME=regseg_exp48_decoder26_cityscapes_random_state.pt
MODE=gpu
case "${1:-}" in
    --prepare) MODE=prepare ;;
    --dry-run) MODE=dry ;;
    "") ;;
    *) echo "usage: $0 [--prepare | --dry-run]" >&2; exit 2 ;;
esac

# Where --prepare looks for weights and for the script that downloads the ROS 2 wheels.
REFERENCE_DIR=${REFERENCE_DIR:-../shared/reference}
FETCH_WHEELS=${FETCH_WHEELS:-../shared/tools/fetch-device-wheels.sh}

if [[ $MODE == prepare ]]; then
    set -e
    mkdir -p .gpu
    # Golden RegSeg weights, and trained weights for the judged fp16 agreement, when they exist.
    for w in "$REFERENCE_DIR/regseg/$WEIGHTS_NAME" "$REFERENCE_DIR"/synthetic_street/*.pt; do
        [[ -f $w ]] && cp "$w" .gpu/ && echo "weights: $w"
    done
    ls .gpu/*.pt >/dev/null 2>&1 || echo "no weights found under $REFERENCE_DIR: RegSeg runs with seeded random weights"
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        if [[ -f $FETCH_WHEELS ]]; then
            bash "$FETCH_WHEELS"
        else
            echo "no $FETCH_WHEELS: put the ROS 2 client wheels (ros-rclpy, ros-sensor-msgs, ...) for the GPU" \
                 "machine's Python into .whl/ (pip download --python-version X.Y --only-binary=:all: ...)"
        fi
    fi
    tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
    carried=$(du -cb .whl .gpu 2>/dev/null | tail -1 | cut -f1)
    total=$(( tree + carried ))
    echo "to copy: working tree $((tree / 1024)) KiB + .whl/.gpu $((carried / 1024)) KiB = $((total / 1048576)) MiB"
    exit 0
fi

if [[ $MODE == dry ]]; then
    # Everything the GPU run does, on the CPU at tiny sizes, so the script cannot rot.
    OUT=${OUT:-$(mktemp -d /tmp/gpu_session_dry.XXXXXX)}
    RESULTS=$OUT/results
    # A loaded 2-core CI machine: same steps, generous limits (each step's limit x LIMIT_SCALE).
    BUDGET=${BUDGET:-1200}; ESSENTIAL_BUDGET=${ESSENTIAL_BUDGET:-900}; LIMIT_SCALE=${LIMIT_SCALE:-4}
    BIG=64x128; SMALL=32x64
    PIPE_ARGS=(--device cpu --iterations 3 --throughput-frames 3 --naive-iterations 2 --warmup 1 --frames 2 --no-probe)
    NODE_ARGS=(--size 48x64 --rate 10 --duration 1.5 --relay-duration 1 --warmup 0.5 --sweep --startup-timeout 120
               --node-param device:=cpu --node-param precision:=fp32)
    RELAY_ARGS=(--size 48x64 --relay-duration 1 --warmup 0.5 --sweep)
    ALL_ARGS=(--models regseg)
    PREPARE_ARGS=(--device cpu --size $SMALL --model tiny --serve-frames 10)
else
    OUT=${OUT:-/tmp/gpu_session_out}
    RESULTS=bench/results
    BUDGET=${BUDGET:-480}; ESSENTIAL_BUDGET=${ESSENTIAL_BUDGET:-420}; LIMIT_SCALE=1
    BIG=1024x2048; SMALL=512x1024
    PIPE_ARGS=(--iterations 100 --throughput-frames 150)
    NODE_ARGS=(--rate 30 --duration 30 --relay-duration 10 --sweep 60 90 --sweep-duration 6
               --node-param device:=cuda --node-param precision:=fp16)
    RELAY_ARGS=(--relay-duration 10 --warmup 2 --sweep)
    ALL_ARGS=(--models all --iterations 30 --throughput-frames 40 --naive-iterations 8 --warmup 3 --frames 4)
    PREPARE_ARGS=(--device cuda --size $SMALL)
fi
MAKE_VENV=0
if [[ -n ${VENV:-} ]] || ls .whl/*.whl >/dev/null 2>&1; then MAKE_VENV=1; fi
VENV=${VENV:-/tmp/gpu_session_venv}
if [[ -z ${PARENT_PYTHON:-} ]]; then
    PARENT_PYTHON=python3; [[ -x .venv/bin/python ]] && PARENT_PYTHON=.venv/bin/python
fi
mkdir -p "$OUT" "$RESULTS" /tmp/gpu_logs
export PYTHONUNBUFFERED=1
left() { echo $(( $1 - SECONDS )); }
step() {  # step NAME MAX_SECONDS BUDGET COMMAND...: under the smaller of MAX_SECONDS and what BUDGET leaves
    local name=$1 max=$(( $2 * LIMIT_SCALE )) budget=$3; shift 3
    local rest; rest=$(left "$budget")
    local limit=$(( rest < max ? rest : max ))
    if (( limit < 15 )); then echo "=== $name: SKIPPED, ${limit}s left"; return; fi
    if [[ -n ${SKIP_STEPS:-} && $name =~ $SKIP_STEPS ]]; then echo "=== $name: SKIPPED (SKIP_STEPS)"; return; fi
    echo "=== $name (limit ${limit}s, t=${SECONDS}s): $*"
    timeout --signal=TERM --kill-after=10 "$limit" "$@"
    echo "=== $name: exit $? at t=${SECONDS}s"
}

# A venv for the carried ROS wheels that keeps the parent's torch (see the header).
make_python() {
    local parent=$PARENT_PYTHON
    PY=$parent
    if (( ! MAKE_VENV )); then
        if $parent -c 'import torch, rclpy'; then
            echo "python: $PY (torch + rclpy OK)"
        else
            echo "python: $PY cannot import torch and rclpy (see above): the node latency steps are SKIPPED"
        fi
        return
    fi
    local parent_site child_site ros_libs
    parent_site=$($parent -c 'import site; print(site.getsitepackages()[0])') || return
    rm -rf "$VENV"
    if ! $parent -m venv --without-pip "$VENV"; then
        echo "!!!!! could not create $VENV; FALLING BACK to $parent (node latency skipped)"; return
    fi
    child_site=$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')
    echo "import site; site.addsitedir('$parent_site')" > "$child_site/zz_parent_env.pth"
    # ROS wheels already in the parent (the CPU machine) keep their libraries there: the ROS
    # bootstrapper only looks under the venv's own prefix.
    ros_libs=$(find "$parent_site" -maxdepth 1 -type d -name 'ros_*.libs' 2>/dev/null | paste -sd:)
    if [[ -n $ros_libs ]]; then
        ros_libs="$($parent -c 'import sys; print(sys.prefix)')/lib:$ros_libs"
        export LD_LIBRARY_PATH="$ros_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$VENV/bin/python" -m pip install -q --no-index --no-deps .whl/*.whl \
            || echo "!!!!! installing the carried ROS wheels failed"
    fi
    if "$VENV/bin/python" -c 'import torch, rclpy' ; then
        PY=$VENV/bin/python
        echo "python: $PY (torch + rclpy OK; parent $parent)"
    else
        echo "!!!!! $VENV/bin/python cannot import torch and rclpy (see above)"
        echo "!!!!! FALLING BACK to $parent: the node latency steps are SKIPPED"
    fi
}

session() {
echo "=== environment ($MODE)"
date -u
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
$PARENT_PYTHON -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
nproc; free -g | head -2; df -h /dev/shm | tail -1
make_python
ROS_OK=0; $PY -c 'import rclpy' 2>/dev/null && ROS_OK=1

WEIGHTS=""; TRAINED=""
for w in ".gpu/$WEIGHTS_NAME" "$REFERENCE_DIR/regseg/$WEIGHTS_NAME"; do
    [[ -f $w ]] && { WEIGHTS=$w; break; }
done
for w in .gpu/synthetic_street*.pt "$REFERENCE_DIR"/synthetic_street/*.pt seg_perception/weights/synthetic_street.pt; do
    [[ -f $w ]] && { TRAINED=$w; break; }
done
echo "golden random weights: ${WEIGHTS:-NONE}; trained weights: ${TRAINED:-NONE (fp16 agreement not judged)}"
WARG=(); [[ -n $WEIGHTS ]] && WARG=(--weights "$WEIGHTS")

echo "=== ESSENTIAL part (budget ${ESSENTIAL_BUDGET}s)"
# CUDA correctness: cuda_graph vs eager, batches, recapture, frames in flight (skipped on the CPU).
step "cuda tests" 75 "$ESSENTIAL_BUDGET" $PY -m pytest -q -p no:cacheprovider test/test_bench_scripts.py -k "cuda"
# RegSeg: naive vs engine vs cuda_graph at the target size (torch_compile is optional, below).
step "pipeline regseg" 120 "$ESSENTIAL_BUDGET" $PY bench/gpu_pipeline.py --models regseg --sizes $BIG \
    --modes naive,engine,engine_cuda_graph --batch-sizes 1 4 "${PIPE_ARGS[@]}" "${WARG[@]}" \
    --out $RESULTS/gpu_pipeline_regseg.json
# fp16 agreement judged with trained weights (random weights: information only).
if [[ -n $TRAINED ]]; then
    step "fp16 agreement (trained)" 60 "$ESSENTIAL_BUDGET" $PY bench/gpu_pipeline.py --models regseg \
        --sizes $BIG --modes engine,engine_cuda_graph "${PIPE_ARGS[@]}" --weights "$TRAINED" --weights-trained \
        --out $RESULTS/gpu_pipeline_fp16_agreement.json
fi
if (( ROS_OK )); then
    # seg_node on the GPU behind 30 Hz frames, shared-memory transport; relay first; short sweep.
    step "node latency" 150 "$ESSENTIAL_BUDGET" $PY bench/node_latency.py "${NODE_ARGS[@]}" "${WARG[@]}" \
        --fastdds-profile config/fastdds_large_images.xml --log-dir /tmp/gpu_logs/node \
        --out $RESULTS/node_latency.json
else
    echo "=== node latency: SKIPPED (no rclpy next to torch; see the python check above)"
fi

echo "=== OPTIONAL part (until ${BUDGET}s)"
# torch_compile: first frames after start and after a reload, serving while a new engine compiles.
step "engine prepare (torch_compile)" 150 "$BUDGET" $PY bench/engine_prepare.py "${PREPARE_ARGS[@]}" \
    --out $RESULTS/engine_prepare.json
step "pipeline regseg cudnn.benchmark" 45 "$BUDGET" $PY bench/gpu_pipeline.py --models regseg --sizes $BIG \
    --modes engine,engine_cuda_graph --cudnn-benchmark "${PIPE_ARGS[@]}" "${WARG[@]}" \
    --out $RESULTS/gpu_pipeline_regseg_cudnn_benchmark.json
if (( ROS_OK )); then
    step "node latency, default transport" 45 "$BUDGET" $PY bench/node_latency.py --targets relay "${RELAY_ARGS[@]}" \
        --log-dir /tmp/gpu_logs/default_transport --out $RESULTS/node_latency_default_transport.json
fi
step "pipeline all models" 600 "$BUDGET" $PY bench/gpu_pipeline.py --sizes $BIG \
    --modes naive,engine,engine_cuda_graph "${PIPE_ARGS[@]}" "${ALL_ARGS[@]}" "${WARG[@]}" \
    --out $RESULTS/gpu_pipeline_all_models.json

echo "=== collect (t=${SECONDS}s)"
for f in gpu_pipeline_regseg gpu_pipeline_fp16_agreement gpu_pipeline_regseg_cudnn_benchmark engine_prepare \
         gpu_pipeline_all_models node_latency node_latency_default_transport; do
    [[ -f $RESULTS/$f.json && $RESULTS != "$OUT"/* ]] && cp "$RESULTS/$f.json" "$OUT/"
done
tar czf "$OUT/logs.tar.gz" -C /tmp gpu_logs 2>/dev/null || true
echo "=== done at t=${SECONDS}s ($MODE); results in $OUT"
}

session 2>&1 | tee "$OUT/session.log"
ls -la "$OUT"
