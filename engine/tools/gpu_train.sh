#!/usr/bin/env bash
# Train on a lent GPU machine in one call: the `device` tool's `run` (10 minutes a call, 15 a
# session with the machine's start, 64 MiB of working tree out, 8 files of 16 MiB back).
# From the repository root there:
#
#   bash engine/tools/gpu_train.sh MINUTES RECIPES    # RECIPES: a file, a line "NAME npe-train-options" a run
#   bash engine/tools/gpu_train.sh keep               # only store the pack parts this call carries
#
# Data: the parts of a pack (`npe pack --resolution 128 --max-mb 25 --out .pack/faces.npepack`)
# that this call carries in .pack/, with any that an earlier call on the same machine (still
# warm) stored in /tmp/npe-pack/ ($NPE_STORE instead of /tmp if set). The runs (at most 4)
# train side by side on the one GPU for MINUTES each, start-up and the export included
# (`npe train --minutes`). Back in $OUT: each run's weights as NAME.safetensors (half
# precision: 15 MB for the 128-px model; the loader takes them as they are) and runs.tar (each
# run's config.json, logs, options and last grid): `tar -xf runs.tar -C runs && mv
# NAME.safetensors runs/NAME/model/model.safetensors` makes each a model folder again.
set -euo pipefail
usage="usage: gpu_train.sh MINUTES RECIPES | gpu_train.sh keep"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
packs=${NPE_STORE:-/tmp}/npe-pack
runs=${NPE_STORE:-/tmp}/npe-runs
mkdir -p "$packs"
if compgen -G ".pack/*.npepack" >/dev/null; then cp .pack/*.npepack "$packs/"; fi
echo "pack parts on this machine: $(cd "$packs" && ls ./*.npepack 2>/dev/null | tr '\n' ' ')"
[ "${1:-}" = keep ] && exit 0
minutes=${1:?$usage}
recipes=${2:?$usage}
first=$(ls "$packs"/*.npepack 2>/dev/null | head -1 || true)
[ -n "$first" ] || { echo "no pack parts: carry .pack/ (npe pack ... --out .pack/faces.npepack)" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import sys; from pathlib import Path; from engine.tools.pack import unpacked_folder
print('unpacked into', unpacked_folder(Path(sys.argv[1])))" "$first"  # once, before the runs share it

names=()
while read -r name options; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  names+=("$name")
  mkdir -p "$runs/$name"
  # shellcheck disable=SC2086  # the options are words
  OMP_NUM_THREADS=4 python3 -m engine.tools.cli train --data "$first" --out "$runs/$name" --minutes "$minutes" \
    $options > "$runs/$name/train.log" 2>&1 &
done < "$recipes"
[ ${#names[@]} -ge 1 ] && [ ${#names[@]} -le 4 ] || { echo "RECIPES names 1 to 4 runs" >&2; exit 2; }
failed=0
for job in $(jobs -p); do wait "$job" || failed=1; done

out=${OUT:-$runs/out}
mkdir -p "$out"
small=()
for name in "${names[@]}"; do
  tail -c 2000 "$runs/$name/train.log" | tr '\r' '\n' | tail -4
  [ -f "$runs/$name/model/model.safetensors" ] || { echo "$name: no model"; continue; }
  python3 -c "import sys; from safetensors.torch import load_file, save_file
t = load_file(sys.argv[1]); save_file({k: v.half() if v.is_floating_point() else v for k, v in t.items()}, sys.argv[2])" \
    "$runs/$name/model/model.safetensors" "$out/$name.safetensors"
  grid=$(cd "$runs" && ls "$name"/grid-*.png 2>/dev/null | tail -1 || true)
  small+=("$name/model/config.json" "$name/log.jsonl" "$name/options-history.jsonl" "$name/train.log" $grid)
done
tar -cf "$out/runs.tar" -C "$runs" "${small[@]}"
ls -l "$out"
exit $failed
