#!/usr/bin/env bash
# Train on a lent GPU machine in one call: the `device` tool's `run` (10 minutes a call, 15 a
# session with the machine's start, 64 MiB of working tree out, 8 files of 16 MiB back).
# From the repository root there:
#
#   bash engine/tools/gpu_train.sh MINUTES RUN_NAME [npe train options]
#
# Data: the parts of a pack (`npe pack --resolution 128 --max-mb 25 --out .pack/faces.npepack`)
# that this call carries in .pack/, with any that an earlier call on the same machine (still
# warm) left in /tmp/npe-pack/: carry the first part in one call (`bash engine/tools/gpu_train.sh
# keep`), the second in the next. Trains for MINUTES, start-up and the export included
# (`npe train --minutes`), then leaves in $OUT the model folder (its weights in 15 MiB pieces:
# `cat model.safetensors.?? > model.safetensors` joins them), the run's log and its last grid.
set -euo pipefail
usage="usage: gpu_train.sh MINUTES RUN_NAME [npe train options] | gpu_train.sh keep"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p /tmp/npe-pack
if compgen -G ".pack/*.npepack" >/dev/null; then cp .pack/*.npepack /tmp/npe-pack/; fi
echo "parts on this machine: $(cd /tmp/npe-pack && ls *.npepack 2>/dev/null | tr '\n' ' ')"
[ "${1:-}" = keep ] && exit 0
minutes=${1:?$usage}
name=${2:?$usage}
shift 2
first=$(ls /tmp/npe-pack/*.npepack 2>/dev/null | head -1)
[ -n "$first" ] || { echo "no pack parts: carry .pack/ (npe pack ... --out .pack/faces.npepack)" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
run=/tmp/npe-runs/$name
python3 -m engine.tools.cli train --data "$first" --out "$run" --minutes "$minutes" "$@"
out=${OUT:-$run/out}
mkdir -p "$out"
cp "$run/model/config.json" "$run/log.jsonl" "$out/"
grid=$(ls "$run"/grid-*.png 2>/dev/null | tail -1 || true)
[ -z "$grid" ] || cp "$grid" "$out/"
split -b 15M -d "$run/model/model.safetensors" "$out/model.safetensors."
ls -l "$out"
