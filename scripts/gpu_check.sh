#!/usr/bin/env bash
# Every GPU check in one run, for a machine with CUDA (a lent GPU machine gives minutes, so it is one
# prepared script; each step has its own time limit and a failed step does not stop the next):
#   1. the CUDA tests: tests/test_cuda.py (harvest, training, saved SAE and clamps equal the CPU's)
#      and the sparse-vs-dense kernel tests' cuda cases;
#   2. `emosae train` of the demo preset on the GPU (tokens, seconds, FVE, L0, dead, CE-loss score);
#   3. `emosae label`, `emosae vectors --run`, `emosae stats` and `emosae clamp` on that run, on the GPU;
#   4. scripts/bench_train.py --device cuda: emosae against the bare forward (the limit), float32,
#      and 4 SAEs from one harvest against 4 separate runs.
#
#   scripts/gpu_check.sh OUTDIR [WORKDIR]
#
# emosae must be importable by $PYTHON (default python3): `make install` and PYTHON=.venv/bin/python,
# or PYTHONPATH=. with its dependencies present. OUTDIR gets steps.txt (one line per step: rc,
# seconds), gpu_check.log (every step's output) and each step's JSON. QUICK=1 DEVICE=cpu rehearses
# the whole script on a CPU in a few minutes (few tokens; the CUDA tests skip) before GPU time is spent.
set -uo pipefail
OUT=${1:?usage: scripts/gpu_check.sh OUTDIR [WORKDIR]}
WORK=${2:-$(mktemp -d)}
mkdir -p "$OUT" "$WORK" && OUT=$(cd "$OUT" && pwd) && WORK=$(cd "$WORK" && pwd)  # before the cd below
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
TRAIN_SMALL=() BENCH_SIZE=(--tokens 290000 --repeat 3)
if [ -n "${QUICK:-}" ]; then
    TRAIN_SMALL=(--set data.tokens=20000 --set train.epochs=1 --set train.ce_tokens=1024)
    BENCH_SIZE=(--tokens 20000 --tokens4 20000 --repeat 1)
fi
cd "$(dirname "$0")/.."
mkdir -p "$OUT" "$WORK"
export WANDB_MODE=offline TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
LOG=$OUT/gpu_check.log

# step NAME SECONDS CMD...: stdout to OUT/NAME.json when it is JSON, everything else to the log
step() {
    local name=$1 limit=$2 t0 rc
    shift 2
    echo "=== $name: $*" >>"$LOG"
    t0=$(date +%s)
    timeout "$limit" "$@" >"$WORK/$name.stdout" 2>>"$LOG"
    rc=$?
    if head -c1 "$WORK/$name.stdout" | grep -q '[[{]'; then
        cp "$WORK/$name.stdout" "$OUT/$name.json"
    else
        cat "$WORK/$name.stdout" >>"$LOG"
    fi
    echo "$name rc=$rc seconds=$(($(date +%s) - t0))" | tee -a "$OUT/steps.txt"
}

{ nvidia-smi -L || true; $PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'gpu', torch.cuda.is_available() and torch.cuda.get_device_name(0), 'transformers', transformers.__version__)"; } >>"$LOG" 2>&1

step tests 300 $PY -m pytest -q -p no:cacheprovider -m cuda -rs tests/test_cuda.py tests/test_train_kernels.py
tail -3 "$LOG" | grep -E "passed|failed|error|skipped" >>"$OUT/steps.txt"

RUN=$WORK/demo
step train 240 $PY -m sae.cli train --config configs/demo-cpu.yaml --run "$RUN" --set "model.device=$DEVICE" \
    --set "data.cache=$WORK/cache" "${TRAIN_SMALL[@]}"
$PY - "$RUN/metrics.json" "$OUT/train_metrics.json" <<'EOF' 2>>"$LOG"
import json, sys
m = json.load(open(sys.argv[1]))
m.pop("history", None)
json.dump(m, open(sys.argv[2], "w"), indent=1)
EOF
step label 240 $PY -m sae.cli label "$RUN" --device "$DEVICE" --json
step vectors 180 $PY -m sae.cli vectors --run "$RUN" --device "$DEVICE" --json
step stats 180 $PY -m sae.cli stats "$RUN" --device "$DEVICE"
step clamp 120 $PY -m sae.cli clamp "$RUN" --feature happy=4x --prompt "Tell me about your weekend." \
    --prompt "How do you feel about the news?" --samples 2 --max-new-tokens 30 --device "$DEVICE" --json
step bench_train 420 $PY scripts/bench_train.py --device "$DEVICE" --skip saelens,sparsify,sparsify_cut \
    --dataset labeling/data/sae_corpus.jsonl.gz "${BENCH_SIZE[@]}" --json
