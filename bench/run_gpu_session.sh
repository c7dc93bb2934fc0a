#!/usr/bin/env bash
# Issue 5 (GPU performance) in ONE device call of at most ~9.5 minutes. See docs/GPU_PLAN.md.
#
# 1. Here, once (needs the package index; fetches the ROS wheels into .whl/ and copies the golden
#    RegSeg weights into .gpu/, both ignored by git; checks the 64 MiB carry limit):
#        bash bench/run_gpu_session.sh --prepare
# 2. The device call (the run tool), from the repository root:
#        command: bash bench/run_gpu_session.sh      carry: [".whl", ".gpu"]      timeout_s: 600
# 3. Results come back in $OUT: gpu_pipeline_regseg.json, gpu_pipeline_regseg_cudnn_benchmark.json,
#    gpu_pipeline_all_models.json, node_latency.json, node_latency_default_transport.json,
#    session.log, logs.tar.gz. Copy the JSON files into bench/results/ and commit them.
#
# Every step runs under `timeout` against one budget (BUDGET seconds, default 560), writes its JSON
# as it goes, and a failing step does not stop the next, so whatever finished comes back.
set -uo pipefail
cd "$(dirname "$0")/.."

WEIGHTS_NAME=regseg_exp48_decoder26_cityscapes_random_state.pt

if [[ "${1:-}" == "--prepare" ]]; then
    set -e
    mkdir -p .git/info .gpu
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    cp "../shared/reference/regseg/$WEIGHTS_NAME" .gpu/
    if ! ls .whl/*.whl >/dev/null 2>&1; then bash ../shared/tools/fetch-device-wheels.sh; fi
    tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
    carried=$(du -cb .whl .gpu | tail -1 | cut -f1)
    total=$(( tree + carried ))
    echo "working tree $((tree / 1024)) KiB + carried $((carried / 1024)) KiB = $((total / 1048576)) MiB (limit 64 MiB)"
    (( total < 64 * 1048576 )) || { echo "too large to travel"; exit 1; }
    exit 0
fi

OUT=${OUT:-/tmp/gpu_session_out}
BUDGET=${BUDGET:-560}
mkdir -p "$OUT" bench/results /tmp/gpu_logs
export PYTHONUNBUFFERED=1
left() { echo $(( BUDGET - SECONDS )); }
step() {  # step NAME MAX_SECONDS COMMAND...: run under the smaller of MAX_SECONDS and what is left
    local name=$1 max=$2; shift 2
    local limit=$(( $(left) < max ? $(left) : max ))
    if (( limit < 20 )); then echo "=== $name: SKIPPED, ${limit}s left"; return; fi
    echo "=== $name (limit ${limit}s, t=${SECONDS}s): $*"
    timeout --signal=TERM --kill-after=10 "$limit" "$@"
    echo "=== $name: exit $? at t=${SECONDS}s"
}

session() {
echo "=== environment"
date -u
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
python3 -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name(0))"
nproc; free -g | head -2; df -h /dev/shm | tail -1

PY=python3
if ls .whl/*.whl >/dev/null 2>&1 && python3 -m venv --system-site-packages /tmp/rv \
        && /tmp/rv/bin/pip install -q --no-index --no-deps .whl/*.whl; then
    PY=/tmp/rv/bin/python
    $PY -c "import rclpy; print('rclpy OK')" || PY=python3
else
    echo "ROS wheels not installed (carry .whl): node_latency will be skipped"
fi

WEIGHTS=""
for w in ".gpu/$WEIGHTS_NAME" "../shared/reference/regseg/$WEIGHTS_NAME"; do
    [[ -f $w ]] && { WEIGHTS=$w; break; }
done
echo "weights: ${WEIGHTS:-NONE (RegSeg runs with seeded random weights; agreement figure less meaningful)}"
WARG=(); [[ -n $WEIGHTS ]] && WARG=(--weights "$WEIGHTS")

# CUDA correctness of the engine's compile modes first: cuda_graph vs eager, recapture, frames in flight.
step "cuda tests" 75 $PY -m pytest -q -p no:cacheprovider test/test_bench_scripts.py -k cuda

# RegSeg: naive vs engine vs cuda_graph vs torch_compile, 1024x2048 then 512x1024.
step "pipeline regseg" 240 $PY bench/gpu_pipeline.py --models regseg --sizes 1024x2048 512x1024 \
    "${WARG[@]}" --out bench/results/gpu_pipeline_regseg.json

# Does cuDNN autotuning (not enabled by the node) change the engine? Same run, benchmark on.
step "pipeline regseg cudnn.benchmark" 45 $PY bench/gpu_pipeline.py --models regseg --sizes 1024x2048 \
    --modes engine,engine_cuda_graph --cudnn-benchmark --no-probe "${WARG[@]}" \
    --out bench/results/gpu_pipeline_regseg_cudnn_benchmark.json

if [[ $PY == /tmp/rv/bin/python ]]; then
    # The shipped transport: default Fast DDS, best-effort input, relay only (no processing).
    step "node latency, default transport" 45 $PY bench/node_latency.py --targets relay --relay-duration 10 \
        --warmup 2 --sweep --log-dir /tmp/gpu_logs/default_transport \
        --out bench/results/node_latency_default_transport.json
    # seg_node on the GPU behind 6 MB frames at 30 Hz for 60 s, with a shared-memory transport
    # large enough for a frame; relay first for the transport-only cost; then the rate sweep.
    step "node latency" 190 $PY bench/node_latency.py --rate 30 --duration 60 --relay-duration 15 \
        --sweep 45 60 90 --sweep-duration 8 --node-param device:=cuda --node-param precision:=fp16 \
        "${WARG[@]}" --fastdds-profile config/fastdds_large_images.xml --log-dir /tmp/gpu_logs/node \
        --out bench/results/node_latency.json
fi

# Every registered model at 1024x2048 with the time that is left (heaviest last; JSON after each mode).
step "pipeline all models" 600 $PY bench/gpu_pipeline.py --models all --sizes 1024x2048 \
    --modes naive,engine,engine_cuda_graph --iterations 30 --throughput-frames 40 --naive-iterations 8 \
    --warmup 3 --frames 4 --no-probe "${WARG[@]}" --out bench/results/gpu_pipeline_all_models.json

echo "=== collect (t=${SECONDS}s)"
for f in gpu_pipeline_regseg gpu_pipeline_regseg_cudnn_benchmark gpu_pipeline_all_models \
         node_latency node_latency_default_transport; do
    [[ -f bench/results/$f.json ]] && cp "bench/results/$f.json" "$OUT/"
done
tar czf "$OUT/logs.tar.gz" -C /tmp gpu_logs 2>/dev/null || true
}

session 2>&1 | tee "$OUT/session.log"
ls -la "$OUT"
