#!/usr/bin/env bash
# The GPU run, on a GPU host whose stack was installed by ../shared/gpu/install-parts.sh (see
# ../shared/gpu/README.md): the host's own python3, packages under /tmp/site, no network.
#
#   bash bench/gpu_host.sh start [SECONDS [now]]   copy this checkout to /tmp/proj and run, in
#                                  the background, everything within SECONDS (default 1200);
#                                  "now": no TP 2 test, one repeat of SmolLM2, start-ups as
#                                  the caches are (for a short session)
#   bash bench/gpu_host.sh suite [SECONDS]   the same, but only the GPU end-to-end suite (one
#                                  GPU; about 9 minutes)
#   bash bench/gpu_host.sh status            progress, and the results so far copied to $OUT
#   bash bench/gpu_host.sh stop              end what is still running
#
# On a two-GPU host: the TP 2 test first (both GPUs), then side by side, each with its own
# compile caches ($HOME) so that clearing one lane's caches leaves the others' alone:
#   GPU 0: the benchmark of the packaged SmolLM2 (front-end bound);
#   GPU 1: the benchmark of the 8B-class model (GPU-bound), then the GPU end-to-end suite (up
#          to three engines at once, each at 0.28 of the GPU's memory).
# On a one-GPU host: the benchmark, then the suite. Every step has a deadline (timeout), all
# before SECONDS; results and logs go to /tmp/gpu-out.
set -u
OUT_DIR=/tmp/gpu-out
PROJ=/tmp/proj
export PYTHONPATH=/tmp/site:$PROJ PATH=/tmp/site/bin:$PATH HF_HUB_OFFLINE=1 \
  BENTOML_HOME=/tmp/bentoml PYTHONUNBUFFERED=1 BENTOML_DO_NOT_TRACK=true NCCL_NVLS_ENABLE=0
# The end-to-end tests that say whether the GPU path works: the README's journeys (curl,
# OpenAI SDK, bentoml.SyncHTTPClient), structured output and tools, parity with raw vllm serve,
# SIGTERM and engine death. The chat page (Playwright) and fuzz (schemathesis) suites need
# packages the host lacks.
GPU_TESTS="tests/test_e2e_gpu.py tests/test_e2e_readme.py tests/test_e2e_openai.py
  tests/test_e2e_generate.py tests/test_e2e_structured_tools.py
  tests/test_e2e_readme_openai_features.py tests/test_e2e_bad_input.py tests/test_parity.py
  tests/test_e2e_engine_death.py tests/test_e2e_guarded.py tests/test_e2e_drain.py
  tests/test_e2e_fairness.py"
PYTEST="python3 -m pytest -p no:cacheprovider"  # with pyproject.toml's addopts (--durations)

left() { echo $(( DEADLINE - $(date +%s) )); }  # seconds until the run's deadline

lane() {  # lane NAME: HOME and TorchInductor cache of its own
  export HOME=/tmp/lanes/$1 TORCHINDUCTOR_CACHE_DIR=/tmp/lanes/$1/inductor
  mkdir -p "$HOME"
}

bench() {  # bench GPU MODELS MEMORY_FRACTION [bench.gpu options]
  ( lane "bench-$2"
    CUDA_VISIBLE_DEVICES=$1 LLM_GPU_MEMORY_UTILIZATION=$3 BENCH_COMMIT=$(cat $PROJ/.commit 2>/dev/null) \
      timeout $(( $(left) - 60 )) python3 -m bench.gpu --models "$2" "${@:4}" \
      --out $OUT_DIR/gpu-$2.json >$OUT_DIR/bench-$2.log 2>&1
    echo "bench exit $?" >>$OUT_DIR/bench-$2.log )
}

suite() {  # suite GPU MEMORY_FRACTION: up to three engines share the GPU (shared server,
  # a module's own server, raw vllm serve for parity), each at MEMORY_FRACTION
  ( lane suite
    CUDA_VISIBLE_DEVICES=$1 LLM_GPU_MEMORY_UTILIZATION=$2 timeout $(( $(left) - 60 )) \
      $PYTEST $GPU_TESTS >$OUT_DIR/pytest.log 2>&1
    echo "pytest exit $?" >>$OUT_DIR/pytest.log )
}

tp2() {  # tp2 MEMORY_FRACTION: the tensor-parallel test on both GPUs
  ( lane tp2; LLM_GPU_MEMORY_UTILIZATION=$1 timeout 600 $PYTEST tests/test_e2e_gpu.py \
      -k two_gpus >$OUT_DIR/tp2.log 2>&1
    echo "tp2 exit $?" >>$OUT_DIR/tp2.log )
}

run_all() {
  cd $PROJ
  local gpus; gpus=$(nvidia-smi --list-gpus | wc -l)
  timeout 300 python3 -m vllm_bento.packaged_model >$OUT_DIR/model.log 2>&1
  if [ "$gpus" -ge 2 ]; then
    # Engines that start at the same time on one GPU count each other's allocations as their
    # own while vLLM profiles memory (a negative KV cache, seen on the H200): each GPU starts
    # one engine at a time.
    if [ -n "${SIDE_BY_SIDE:-}" ]; then  # short device time: no TP 2, one SmolLM2 repeat
      bench 0 smollm2 0.9 --repeats 1 & { bench 1 llama8b 0.9; suite 1 0.28; } & wait
    else
      tp2 0.9
      bench 0 smollm2 0.9 --cold & { bench 1 llama8b 0.9 --cold; suite 1 0.28; } & wait
    fi
    python3 -m bench.gpu --merge $OUT_DIR/gpu-smollm2.json $OUT_DIR/gpu-llama8b.json \
      --out $OUT_DIR/gpu-h200.json
  else
    bench 0 smollm2,llama8b 0.9; cp $OUT_DIR/gpu-smollm2,llama8b.json $OUT_DIR/gpu-h200.json
    suite 0 0.28
  fi
  echo done >$OUT_DIR/done
}

run_suite() {
  cd $PROJ
  timeout 300 python3 -m vllm_bento.packaged_model >$OUT_DIR/model.log 2>&1
  suite 0 0.28
  echo done >$OUT_DIR/done
}

case ${1:-status} in
  start|suite)
    rm -rf $PROJ $OUT_DIR /tmp/lanes && mkdir -p $OUT_DIR && cp -r "$(pwd)" $PROJ
    job=run; [ "$1" = suite ] && job=run-suite
    DEADLINE=$(( $(date +%s) + ${2:-1200} )) SIDE_BY_SIDE=${3:-} setsid bash "$PROJ/bench/gpu_host.sh" $job \
      </dev/null >$OUT_DIR/driver.log 2>&1 &
    echo "started; results in $OUT_DIR" ;;
  run) run_all ;;
  run-suite) run_suite ;;
  status)
    nvidia-smi --query-gpu=index,memory.used,utilization.gpu --format=csv,noheader
    for f in model tp2 bench-smollm2 bench-llama8b bench-smollm2,llama8b pytest; do
      [ -f $OUT_DIR/$f.log ] && { echo "== $f"; grep -E "ready in|c=|PASS|FAIL|ERROR|passed|failed|exit|Error" $OUT_DIR/$f.log | tail -25; }
    done
    [ -f $OUT_DIR/done ] && echo "ALL DONE"
    if [ -n "${OUT:-}" ]; then
      cp $OUT_DIR/*.json $OUT_DIR/*.log "$OUT"/ 2>/dev/null
      tar czf "$OUT/artifacts.tgz" -C $PROJ tests/artifacts bench/results/tmp 2>/dev/null
    fi ;;
  stop)  # by process group: the driver's, then each server's (tests and the benchmark start
    # every server in a session of its own, engine processes included)
    for pid in $(pgrep -f "gpu_host.sh run") $(pgrep -f "bentoml serve|vllm_cli serve"); do
      kill -- -"$pid" 2>/dev/null || kill "$pid" 2>/dev/null
    done ;;
esac
