#!/usr/bin/env bash
# The GPU check, in one go (about 7 minutes on one H100/H200): the `gpu`-marked tests, the rest of the suite
# (CPU tests, side by side with them), then the GPU benchmarks, and a summary table.
#
#   bash benchmarks/gpu_check.sh [RESULTS_DIR]      # from the project root, on a machine with a CUDA GPU
#
# Logs and JUnit files go to RESULTS_DIR (default benchmarks/.data/gpu_check), benchmark numbers to
# benchmarks/results/gpu_*.json. PYTHON picks the interpreter (default python3). Each part has its own time
# limit (GPU_TESTS_S, CPU_SUITE_S, PREDICT_BENCH_S, TRAIN_BENCH_S seconds), so one part that hangs does not
# cost the others. PARTS="tests" or PARTS="bench" runs one half (default both), for two shorter calls where one
# call may not take the sum of the limits; the benchmarks reuse the demo the GPU tests trained when it is there.
set -u
cd "$(dirname "$0")/.."
out=${1:-benchmarks/.data/gpu_check}
py=${PYTHON:-python3}
mkdir -p "$out" benchmarks/.data
began=$(date +%s)
stamp() { echo "[gpu_check $(( $(date +%s) - began )) s] $*"; }

stamp "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
$py -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'monai', monai.__version__)"

# Bytecode for the packages installed beside the project (the GPU image's preamble installs them with
# --no-compile) and for the project itself, as `pip install` leaves it: without it every `unetr` start compiles
# MONAI & co. from source again where PYTHONDONTWRITEBYTECODE is set (about 5 s per start, measured on a CPU).
site=$($py -c "import monai, os; print(os.path.dirname(os.path.dirname(monai.__file__)))")
timeout 120 $py -m compileall -q -j 0 "$site" unetr_cli > /dev/null 2>&1
stamp "bytecode compiled for $site and unetr_cli (PYTHONDONTWRITEBYTECODE=${PYTHONDONTWRITEBYTECODE:-unset})"

parts=${PARTS:-tests bench}
if [[ $parts == *tests* ]]; then
# The CPU side of the suite, on a share of the cores, while the GPU tests run: in 4 processes of 2 threads when
# pytest-xdist is there (carry its wheel: fetch-wheels.sh pytest-xdist execnet), else in one of 6 threads.
if $py -c "import xdist" 2>/dev/null; then parallel="-n 4 --dist loadfile" threads=2; else parallel="" threads=6; fi
OMP_NUM_THREADS=$threads timeout -s INT -k 20 ${CPU_SUITE_S:-420} $py -m pytest $parallel -ra --durations=15 -q -m "not gpu" -p no:cacheprovider --basetemp=/tmp/unetr-cpu-tests \
  --junitxml="$out/cpu_suite.xml" > "$out/cpu_suite.log" 2>&1 &
cpu_suite=$!

stamp "gpu tests"
OMP_NUM_THREADS=8 timeout -s INT -k 20 ${GPU_TESTS_S:-300} $py -m pytest -m gpu -v -rA -s --durations=25 -p no:cacheprovider --basetemp=/tmp/unetr-gpu-tests \
  --junitxml="$out/gpu_tests.xml" > "$out/gpu_tests.log" 2>&1
stamp "gpu tests exit $?"; tail -5 "$out/gpu_tests.log"
# The demo the GPU tests trained is the trained model the benchmarks use.
if [[ -f /tmp/unetr-gpu-tests/test_demo_on_cuda0/demo/run/checkpoint_latest.pt && ! -e benchmarks/.data/demo ]]; then
  ln -s /tmp/unetr-gpu-tests/test_demo_on_cuda0/demo benchmarks/.data/demo
fi

wait $cpu_suite
stamp "cpu suite exit $?"; tail -3 "$out/cpu_suite.log"
fi

if [[ $parts == *bench* ]]; then
stamp "predict benchmark"
timeout -k 10 ${PREDICT_BENCH_S:-300} $py benchmarks/bench_gpu_predict.py > "$out/bench_gpu_predict.log" 2>&1
stamp "predict benchmark exit $?"; tail -8 "$out/bench_gpu_predict.log"
cp benchmarks/results/gpu_*.json "$out/" 2>/dev/null

stamp "train benchmark"
timeout -k 10 ${TRAIN_BENCH_S:-240} $py benchmarks/bench_gpu_train.py > "$out/bench_gpu_train.log" 2>&1
stamp "train benchmark exit $?"; tail -8 "$out/bench_gpu_train.log"
cp benchmarks/results/gpu_*.json "$out/" 2>/dev/null
fi

$py benchmarks/gpu_summary.py "$out"
stamp "done"
