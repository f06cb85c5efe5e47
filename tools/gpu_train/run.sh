#!/usr/bin/env bash
# One call on the device machine (PyTorch, no diffusers, pydantic or MiniLM, nothing downloadable): train the tiny
# model from scratch on the GPU for a fixed time, and bring back the exported pipeline and the log.
#
#   python tools/gpu_train/kit.py build                    # here, once: .gpu-kit (~44 MB; repo + kit < 64 MiB)
#   device run: command "bash tools/gpu_train/run.sh", carry [".gpu-kit"], timeout_s 590
#   bash tools/gpu_train/unpack.sh FILES_AT runs/gpu       # here: runs/gpu/pipeline, train.log, run.json, log.txt,
#                                                          # gates.json
#
# A probe of 250 steps measures steps/s; the run then gets as many steps as fit in BUDGET_S seconds (less if the
# setup and probe ate into the call), so its cosine learning-rate schedule ends where the time does. Everything
# ends by CALL_S after the start: a run still going then is stopped, and whatever exists comes back on any exit
# (the log; the last pipeline swapped in whole, its step in run.json). Last, `fairdiff world gates` measures the
# returned pipeline on the GPU (GATES_S seconds are kept for it; ~1 min there against ~40 on 2 AVX2 cores), so the
# session sees the gate numbers before it spends CPU time on them. Settings by environment (H200 defaults):
BUDGET_S=${BUDGET_S:-400}
CALL_S=${CALL_S:-550}   # the device kills the call at timeout_s (590): packaging must be done before
GATES_S=${GATES_S:-90}
GATES_SCALE=${GATES_SCALE:-1}
UNET=${UNET:-block_out_channels=[48, 96, 192]}   # <= ~15 M parameters: the pipeline must come back in 4 parts
BATCH=${BATCH:-256}
DEVICE=${DEVICE:-cuda}
WORKERS=${WORKERS:-8}
PY=${PY:-python3}
KIT=${KIT:-.gpu-kit}   # what kit.py build wrote (its compiled wheels for $PY's CPython: the device's 3.12)
OUT=${OUT:?OUT: the folder whose files come back}
set -euo pipefail
cd "$(dirname "$0")/../.."
KIT=$(cd "$KIT" && pwd)
work=$(mktemp -d)
t0=$(date +%s)
deadline=$(( t0 + CALL_S ))
steps=0

package() {  # on every exit: at most 8 files of <= 16 MiB, 64 MiB in all, come back
  set +e
  for f in "$work"/gpu.out "$work"/probe.out "$work"/run.out "$work"/gates.out; do [ -f "$f" ] && { echo "== $f"; tail -c 100000 "$f"; }; done > "$OUT/log.txt"
  [ -f "$work/run/train.log" ] && cp "$work/run/train.log" "$OUT/train.log"
  returned=false
  if [ -d "$work/run/pipeline" ]; then
    tar -C "$work/run" -cf "$work/pipeline.tar" pipeline
    if [ "$(stat -c %s "$work/pipeline.tar")" -le $(( 60 * 1024 * 1024 )) ]; then
      split -b 15m "$work/pipeline.tar" "$OUT/pipeline.tar.part-" && returned=true
    fi
  fi
  "$PY" - "$work/run" "$steps" "$BATCH" "$UNET" "$(( $(date +%s) - t0 ))" "$returned" > "$OUT/run.json" <<'PY'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
log = [json.loads(line) for line in open(run / "train.log")] if (run / "train.log").exists() else []
exported = json.loads((run / "exported.json").read_text())["step"] if (run / "exported.json").exists() else None
print(json.dumps({"steps": int(sys.argv[2]), "pipeline_step": exported, "pipeline_returned": sys.argv[6] == "true",
                  "last_log": log[-1] if log else None, "batch_size": int(sys.argv[3]), "unet": sys.argv[4],
                  "call_s": int(sys.argv[5])}, indent=2))
PY
  ls -la "$OUT"
}
trap package EXIT

"$PY" tools/gpu_train/kit.py wheels --kit "$KIT" --to "$work/wheels" >/dev/null
"$PY" -m pip install -q --no-index --no-deps --target "$work/site" "$work"/wheels/*.whl
"$PY" tools/gpu_train/kit.py restore --kit "$KIT" --to "$work/minilm" >/dev/null
export PYTHONPATH="$PWD/src:$work/site:$KIT/shim" FAIRDIFF_MINILM_DIR="$work/minilm" PYTHONUNBUFFERED=1
(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true) | tee "$work/gpu.out"

train() {  # NAME STEPS CHECKPOINT_EVERY SECONDS: stopped after SECONDS (the last whole pipeline stays)
  local rc=0
  timeout "$4" "$PY" -m fairdiff world train-model --out "$work/$1" --steps "$2" --checkpoint-every "$3" \
    --batch-size "$BATCH" --device "$DEVICE" --workers "$WORKERS" --unet "$UNET" > "$work/$1.out" 2>&1 || rc=$?
  [ "$rc" = 0 ] && return 0
  tail -c 2000 "$work/$1.out"
  [ "$rc" = 124 ] && [ -d "$work/$1/pipeline" ] && { echo "$1: stopped at the time limit"; return 0; }
  exit 1
}
if [ -z "${STEPS:-}" ]; then  # STEPS=N skips the probe (a rerun whose rate is known)
  train probe 250 1000 240
  left=$(( deadline - $(date +%s) - 90 - GATES_S ))  # start-up, checkpoints, gates and packaging
  STEPS=$("$PY" - "$work/probe/train.log" "$BUDGET_S" "$left" <<'PY'
import json, sys
log = {r["step"]: r["elapsed_s"] for r in map(json.loads, open(sys.argv[1]))}
rate = (250 - 100) / (log[250] - log[100])  # steps/s once workers and kernels are warm
print(max(100, int(rate * min(float(sys.argv[2]), float(sys.argv[3]))) // 100 * 100))
PY
  )
  echo "probe: $(tail -1 "$work/probe/train.log")"
fi
steps=$STEPS
every=$(( steps / 4 / 50 * 50 ))  # a multiple of the log's 50 steps
every=$(( every < 50 ? 50 : every ))
echo "main run: $steps steps, checkpoints every $every"
limit=$(( deadline - $(date +%s) - 20 - GATES_S ))
[ "$limit" -gt 30 ] || { echo "no time left for the main run"; exit 1; }
train run "$steps" "$every" "$limit"

# the gates on the pipeline that comes back (a failure here still returns the pipeline: the trap packs it)
limit=$(( deadline - $(date +%s) - 10 ))
if [ "$limit" -gt 20 ]; then
  timeout "$limit" "$PY" -m fairdiff world gates --model "$work/run/pipeline" --device "$DEVICE" \
    --scale "$GATES_SCALE" --batch-size 512 --out "$OUT/gates.json" > "$work/gates.out" 2>&1 \
    || echo "gates: exit $? (see log.txt)"
  tail -n 40 "$work/gates.out"
fi
