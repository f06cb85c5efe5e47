#!/usr/bin/env bash
# One call on the device machine (PyTorch, no diffusers, no MiniLM, nothing downloadable): train the tiny model
# from scratch on the GPU for a fixed time, and bring back the exported pipeline and the log.
#
#   python tools/gpu_train/kit.py build                    # here, once: .gpu-kit (~47 MB; repo + kit < 64 MiB)
#   device run: command "bash tools/gpu_train/run.sh", carry [".gpu-kit"], timeout_s 590
#   bash tools/gpu_train/unpack.sh FILES_AT runs/gpu       # here: runs/gpu/pipeline, train.log, run.json
#
# A probe of 250 steps measures steps/s; the run then gets as many steps as fit in BUDGET_S seconds, so its
# cosine learning-rate schedule ends where the time does (a run that overruns by 60 s is stopped and its last
# exported pipeline returned; run.json's pipeline_step says which). Settings by environment (defaults for an H200):
BUDGET_S=${BUDGET_S:-400}
UNET=${UNET:-block_out_channels=[48, 96, 192]}
BATCH=${BATCH:-256}
DEVICE=${DEVICE:-cuda}
WORKERS=${WORKERS:-8}
PY=${PY:-python3}
OUT=${OUT:?OUT: the folder whose files come back}
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
t0=$(date +%s)

"$PY" -m pip install -q --no-index --no-deps --target "$work/site" .gpu-kit/wheels/*.whl
"$PY" tools/gpu_train/kit.py restore --kit .gpu-kit --to "$work/minilm" >/dev/null
export PYTHONPATH="$PWD/src:$work/site:$PWD/.gpu-kit/shim" FAIRDIFF_MINILM_DIR="$work/minilm" PYTHONUNBUFFERED=1
(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true) | tee "$OUT/gpu.txt"

train() {  # OUT_DIR STEPS CHECKPOINT_EVERY SECONDS: stopped after SECONDS (the last exported pipeline stays)
  timeout "$4" "$PY" -m fairdiff world train-model --out "$1" --steps "$2" --checkpoint-every "$3" \
    --batch-size "$BATCH" --device "$DEVICE" --workers "$WORKERS" --unet "$UNET" > "$1.out" 2>&1 || {
    rc=$?; tail -c 3000 "$1.out"; [ "$rc" = 124 ] && [ -d "$1/pipeline" ] || exit 1; echo "stopped at the time limit"
  }
}
if [ -z "${STEPS:-}" ]; then  # STEPS=N skips the probe (a rerun whose rate is known)
  train "$work/probe" 250 1000 240
  STEPS=$("$PY" - "$work/probe/train.log" "$BUDGET_S" <<'PY'
import json, sys
log = {r["step"]: r["elapsed_s"] for r in map(json.loads, open(sys.argv[1]))}
rate = (250 - 100) / (log[250] - log[100])  # steps/s once workers and kernels are warm
print(max(100, int(rate * float(sys.argv[2])) // 100 * 100))
PY
  )
  echo "probe: $(tail -1 "$work/probe/train.log")"
fi
steps=$STEPS
echo "main run: $steps steps"
every=$(( (steps + 3) / 4 ))
train "$work/run" "$steps" "$every" $(( BUDGET_S + 60 ))  # ends inside the 590 s call
"$PY" - "$work/run/train.log" "$steps" "$every" "$BATCH" "$UNET" "$(( $(date +%s) - t0 ))" > "$OUT/run.json" <<'PY'
import json, sys
last = [json.loads(line) for line in open(sys.argv[1])][-1]
steps, every = int(sys.argv[2]), int(sys.argv[3])
exported = steps if last["step"] == steps else last["step"] // every * every  # stopped: the last checkpoint's
print(json.dumps({"steps": steps, "steps_logged": last["step"], "pipeline_step": exported,
                  "batch_size": int(sys.argv[4]), "unet": sys.argv[5], "train_s": last["elapsed_s"],
                  "final_loss": last["loss"], "call_s": int(sys.argv[6])}, indent=2))
PY
cp "$work/run/train.log" "$OUT/train.log"
tar -C "$work/run" -cf - pipeline | split -b 15m - "$OUT/pipeline.tar.part-"  # files come back <= 16 MiB each
ls -la "$OUT"
