#!/usr/bin/env bash
# Set up (if needed) and run the main job on the bundled sample photographs: encode them into a
# Parquet archive, print bytes, bits per pixel and PSNR per image next to what avif-half (the
# strongest reference codec) reaches at the same bytes, restore them to PNG files and verify.
# Usage: bash scripts/demo.sh [--bpp B] [--codec NAME]   (outputs go to runs/demo/)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

BPP=0.05
CODEC_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --bpp) BPP="$2"; shift 2 ;;
        --codec) CODEC_ARGS=(--codec "$2"); shift 2 ;;
        *) echo "unknown option $1; use --bpp B and/or --codec NAME" >&2; exit 1 ;;
    esac
done

SAMPLES="$(.venv/bin/python -c 'import coldpress; print(coldpress.samples_path())')"
OUT=runs/demo
rm -rf "$OUT"
mkdir -p "$OUT"

.venv/bin/coldpress encode "$SAMPLES" "$OUT/archive" --bpp "$BPP" ${CODEC_ARGS[@]+"${CODEC_ARGS[@]}"} --report --compare avif-half
.venv/bin/coldpress restore "$OUT/archive" "$OUT/restored" --all
.venv/bin/coldpress verify "$OUT/archive"
echo "archive: $OUT/archive   restored images: $OUT/restored"
