#!/usr/bin/env bash
# Here, after tools/gpu_train/run.sh ran on the device machine: join the pipeline's parts into DEST.
#   bash tools/gpu_train/unpack.sh FILES_AT DEST     (FILES_AT: the run's files_at folder)
set -euo pipefail
src=${1:?files_at of the device run}
dest=${2:?destination folder, e.g. runs/gpu}
mkdir -p "$dest"
for f in run.json train.log log.txt gates.json; do [ -f "$src/$f" ] && cp "$src/$f" "$dest/"; done
cat "$dest/run.json"
ls "$src"/pipeline.tar.part-* >/dev/null 2>&1 || { echo "no pipeline came back: see $dest/log.txt"; exit 1; }
cat "$src"/pipeline.tar.part-* | tar -C "$dest" -xf -
[ -f "$dest/gates.json" ] && echo "gates as measured on the device: $dest/gates.json"
echo "$dest/pipeline: next, python bench/skin_modes.py posterior --model $dest/pipeline"
