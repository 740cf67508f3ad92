#!/usr/bin/env bash
# The v2 default model's DiT trained on a lent GPU machine, in one call of the device tool:
#
#   run(command="bash model/train/gpu.sh", timeout_s=600)
#
# On the machine's image (PyTorch with CUDA; no livereel install, nothing to fetch) it
# makes the world-clip pool on its CPU cores, trains the DiT on CUDA in bfloat16 for
# $MINUTES minutes of optimizer steps (`livereel train dit --minutes`), and leaves the EMA
# model in $OUT: config.json, the weights in parts of 15 MiB (the tool brings back files
# of at most 16 MiB), loss.csv and state.json. Back here, join the parts with
#
#   bash model/train/gpu.sh --join FILES_AT DIR    # -> DIR/model.safetensors + config.json
#
# then `livereel eval --checkpoint DIR`, or go on on the CPU with `--init-from DIR`.
# Flags after the script's own replace the recipe's (argparse keeps the last), e.g.
# `bash model/train/gpu.sh --steps 8000 --batch 32`.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [[ "${1:-}" == "--join" ]]; then
    src=${2:?--join FILES_AT DIR}; dst=${3:?--join FILES_AT DIR}
    mkdir -p "$dst"
    cat "$src"/model.safetensors.part-* > "$dst/model.safetensors"
    cp "$src/config.json" "$dst/"
    echo "joined $(ls "$src"/model.safetensors.part-* | wc -l) parts into $dst/model.safetensors"
    exit 0
fi

OUT=${OUT:?set OUT: the folder the model is written to}
MINUTES=${MINUTES:-6}
DEVICE=${DEVICE:-cuda}
RUN=${RUN:-runs/gpu-v2}
THREADS=${THREADS:-$(nproc)}
PYTHON=${PYTHON:-python3}  # the image's python3 holds its CUDA torch
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
precision=() resume=()
[[ "$DEVICE" == cuda* ]] && precision=(--bf16)
[[ -f "$RUN/state.json" ]] && resume=(--resume)  # a second call on the same machine goes on
"$PYTHON" -c "import torch; print('torch', torch.__version__, '| device:', '$DEVICE',
    torch.cuda.get_device_name() if '$DEVICE'.startswith('cuda') else 'cpu')"

# The recipe: v1 grown to width 256 / 4 heads, with the object hint, the prior from the
# picture shown, the text encoder's auxiliary loss and the switch-heavy pool (model card).
"$PYTHON" -m streamer.cli train dit --run "$RUN" --vae checkpoints/default --init-from checkpoints/default \
    --width 256/4 --object-hint --prior-picture shown --text-aux 0.1 --text-warmup 300 \
    --object-weight 3 --first-chunk-weight 3 --switch-weight 4 --switch-share 0.5 \
    --pool 1200 --pool-frames 24 --batch 16 --lr 3e-4 --steps 6000 --sample-every 0 \
    --device "$DEVICE" "${precision[@]}" --threads "$THREADS" --minutes "$MINUTES" "${resume[@]}" "$@"

mkdir -p "$OUT"
split -b 15M -d "$RUN/result/model.safetensors" "$OUT/model.safetensors.part-"
cp "$RUN/result/config.json" "$RUN/loss.csv" "$RUN/state.json" "$OUT/"
ls -l "$OUT"
