#!/usr/bin/env bash
# Here, after tools/gpu_train/run.sh ran on the device machine: join the pipeline's parts into DEST.
#   bash tools/gpu_train/unpack.sh FILES_AT DEST     (FILES_AT: the run's files_at folder)
set -euo pipefail
src=${1:?files_at of the device run}
dest=${2:?destination folder, e.g. runs/gpu}
mkdir -p "$dest"
cat "$src"/pipeline.tar.part-* | tar -C "$dest" -xf -
cp "$src"/train.log "$src"/run.json "$src"/gpu.txt "$dest"/
echo "$dest/pipeline: next, python bench/skin_modes.py posterior --model $dest/pipeline"
