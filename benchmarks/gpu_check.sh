#!/usr/bin/env bash
# The GPU check: the `gpu`-marked tests, the rest of the suite (CPU tests, side by side with them), the GPU
# benchmarks, and a summary table, within one time budget.
#
#   bash benchmarks/gpu_check.sh [RESULTS_DIR]      # from the project root, on a machine with a CUDA GPU
#
# Logs and JUnit files go to RESULTS_DIR (default benchmarks/.data/gpu_check), benchmark numbers to
# benchmarks/results/gpu_*.json. PYTHON picks the interpreter (default python3).
#
# PARTS names the parts and their order (default "tests bench"): `gpu-tests`, `cpu-suite`, `tests` (both side
# by side), `predict`, `train`, `step`, `bench` (the three), `trace` (traced single invocations of predict,
# see `trace_runs`), `serve` (bench_serve.py: `unetr serve` under 1 and 4 clients against predict's batch rate;
# the serve extra's wheels must be carried: fetch-wheels.sh fastapi starlette uvicorn h11 anyio sniffio
# pynetdicom). BUDGET_S (default 570) bounds the whole call:
# each part gets its own limit (GPU_TESTS_S, CPU_SUITE_S, PREDICT_BENCH_S, TRAIN_BENCH_S, STEP_BENCH_S) or what is
# left of the budget, whichever is less, and a part with under a minute left is skipped and said so. So one
# part that hangs does not cost the others, and a device call ends with its summary. With a short lease, put
# first what matters most, e.g. PARTS="gpu-tests bench", then PARTS=cpu-suite in a second call. The
# benchmarks reuse the demo that the GPU tests trained when it is there. GPU_TESTS_K picks GPU tests by pytest's
# -k expression (e.g. "predict or warm"); PREDICT_BENCH_ARGS and TRAIN_BENCH_ARGS add the benchmarks' flags
# (e.g. --skip-agreement, --skip-demo: each leaves out minutes of work).
set -u
cd "$(dirname "$0")/.."
out=${1:-benchmarks/.data/gpu_check}
py=${PYTHON:-python3}
mkdir -p "$out" benchmarks/.data
rm -f "$out"/*.xml "$out"/*.log "$out"/*.txt "$out"/gpu_*.json  # the summary shows only what this call measured
touch "$out/.began"
began=$(date +%s)
deadline=$(( began + ${BUDGET_S:-570} ))
stamp() { echo "[gpu_check $(( $(date +%s) - began )) s] $*"; }
read -ra predict_args <<< "${PREDICT_BENCH_ARGS:-}"
read -ra train_args <<< "${TRAIN_BENCH_ARGS:-}"

# The seconds a part may take: its own limit or what is left of the budget (keeping 20 s for the summary).
limit() {
  local left=$(( deadline - $(date +%s) - 20 ))
  (( left < $1 )) && echo "$left" || echo "$1"
}
# Whether a part of this name can still start; says so when it cannot.
can_start() {
  if (( $(limit 60) < 60 )); then stamp "$1 skipped: under a minute of the budget left"; return 1; fi
}

stamp "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
$py -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'monai', monai.__version__)"
# What the image has installed: each optional MONAI extra among it slows a bare `import monai`, not unetr's.
$py -m pip list --format=freeze > "$out/packages.txt" 2>/dev/null
stamp "$(wc -l < "$out/packages.txt") packages installed (packages.txt)"

# Bytecode for the packages installed beside the project (the GPU image's preamble installs them with
# --no-compile) and for the project itself, as `pip install` leaves it: without it every `unetr` start compiles
# MONAI & co. from source again where PYTHONDONTWRITEBYTECODE is set (about 5 s per start, measured on a CPU).
site=$($py -c "import monai, os; print(os.path.dirname(os.path.dirname(monai.__file__)))")
timeout 120 $py -m compileall -q -j 0 "$site" unetr_cli > /dev/null 2>&1
stamp "bytecode compiled for $site and unetr_cli (PYTHONDONTWRITEBYTECODE=${PYTHONDONTWRITEBYTECODE:-unset})"

# The CPU side of the suite, on a share of the cores: in 4 processes of 2 threads when pytest-xdist is there
# (carry its wheel: fetch-wheels.sh pytest-xdist execnet), else in one of 6 threads. In the background.
start_cpu_suite() {
  local parallel="" threads=6
  if $py -c "import xdist" 2>/dev/null; then parallel="-n 4 --dist loadfile" threads=2; fi
  stamp "cpu suite (limit $(limit ${CPU_SUITE_S:-420}) s)"
  OMP_NUM_THREADS=$threads timeout -s INT -k 20 "$(limit ${CPU_SUITE_S:-420})" $py -m pytest $parallel -ra \
    --durations=15 -q -m "not gpu" -p no:cacheprovider --basetemp=/tmp/unetr-cpu-tests \
    --junitxml="$out/cpu_suite.xml" > "$out/cpu_suite.log" 2>&1 &
  cpu_suite=$!
}
finish_cpu_suite() {
  wait "$cpu_suite"
  stamp "cpu suite exit $?"; tail -3 "$out/cpu_suite.log"
}

gpu_tests() {
  stamp "gpu tests (limit $(limit ${GPU_TESTS_S:-300}) s)"
  OMP_NUM_THREADS=8 timeout -s INT -k 20 "$(limit ${GPU_TESTS_S:-300})" $py -m pytest -m gpu -v -rA -s \
    --durations=25 -p no:cacheprovider --basetemp=/tmp/unetr-gpu-tests \
    --junitxml="$out/gpu_tests.xml" ${GPU_TESTS_K:+-k "$GPU_TESTS_K"} > "$out/gpu_tests.log" 2>&1
  stamp "gpu tests exit $?"; tail -5 "$out/gpu_tests.log"
  # The demo the GPU tests trained is the trained model the benchmarks use.
  if [[ -f /tmp/unetr-gpu-tests/test_demo_on_cuda0/demo/run/checkpoint_latest.pt && ! -e benchmarks/.data/demo ]]; then
    ln -s /tmp/unetr-gpu-tests/test_demo_on_cuda0/demo benchmarks/.data/demo
  fi
}

benchmark() {  # NAME SCRIPT OWN_LIMIT [ARGUMENTS...]
  stamp "$1 benchmark (limit $(limit "$3") s) ${*:4}"
  timeout -k 10 "$(limit "$3")" $py "benchmarks/$2" "${@:4}" > "$out/${2%.py}.log" 2>&1
  stamp "$1 benchmark exit $?"; tail -8 "$out/${2%.py}.log"
  find benchmarks/results -name 'gpu_*.json' -newer "$out/.began" -exec cp {} "$out/" \;
}

# One `unetr predict` of the 512x512x200 benchmark scan, traced TRACE_RUNS times (default 3): which thread ran
# what and when (trace_predict.py), into $out/trace_N.json and .txt. TRACE_DEVICE (default cuda) for a dry run.
trace_runs() {
  local runs=${TRACE_RUNS:-3} inputs scan checkpoint
  stamp "traces of $runs single invocations"
  inputs=$(timeout "$(limit 120)" $py -c "import sys; sys.path.insert(0, 'benchmarks')
from common import benchmark_scan, standard_checkpoint; print(benchmark_scan(200), standard_checkpoint())") \
    || { stamp "trace skipped: no benchmark scan or checkpoint"; return; }
  read -r scan checkpoint <<< "$inputs"
  for run in $(seq "$runs"); do
    T0=$(date +%s.%N) timeout -k 5 "$(limit 90)" $py benchmarks/trace_predict.py "$out/trace_$run.json" predict \
      "$scan" -o /tmp/unetr-trace.nii.gz --checkpoint "$checkpoint" --device "${TRACE_DEVICE:-cuda}" \
      --overwrite -q 2> "$out/trace_$run.txt"
    stamp "trace $run exit $?"
  done
  tail -45 "$out/trace_$runs.txt"
}

for part in ${PARTS:-tests bench}; do
  case $part in
    tests) can_start tests && { start_cpu_suite; gpu_tests; finish_cpu_suite; } ;;
    gpu-tests) can_start gpu-tests && gpu_tests ;;
    cpu-suite) can_start cpu-suite && { start_cpu_suite; finish_cpu_suite; } ;;
    predict) can_start predict && benchmark predict bench_gpu_predict.py "${PREDICT_BENCH_S:-300}" "${predict_args[@]}" ;;
    train) can_start train && benchmark train bench_gpu_train.py "${TRAIN_BENCH_S:-240}" "${train_args[@]}" ;;
    step) can_start step && benchmark step bench_gpu_step.py "${STEP_BENCH_S:-120}" ;;
    trace) can_start trace && trace_runs ;;
    serve) can_start serve && benchmark serve bench_serve.py "${SERVE_BENCH_S:-300}" --device cuda --slices 200 \
      --scans "${SERVE_SCANS:-10}" --clients 1 4 ;;
    bench)
      can_start predict && benchmark predict bench_gpu_predict.py "${PREDICT_BENCH_S:-300}" "${predict_args[@]}"
      can_start train && benchmark train bench_gpu_train.py "${TRAIN_BENCH_S:-240}" "${train_args[@]}"
      can_start step && benchmark step bench_gpu_step.py "${STEP_BENCH_S:-120}" ;;
    *) stamp "unknown part '$part' (gpu-tests, cpu-suite, tests, predict, train, step, trace, serve, bench)" ;;
  esac
done

$py benchmarks/gpu_summary.py "$out"
stamp "done"
