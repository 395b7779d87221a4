#!/usr/bin/env bash
# One training round on a lent GPU machine (see prepare_carry.py): resume .carry/run, train MINUTES at
# lr 3e-4 then a fifth of that at 1e-4, evaluate, export MODEL_ID to $OUT/weights, run the GPU checks
# (encoder frames/s at 1080p, CPU-vs-GPU decode identity) and bring the fp32 checkpoint back in parts.
# Usage (device tool, carry [".carry", ".whl"]): bash tools/gpu/round.sh cp-extreme-s16-v2 20
set -u
MODEL_ID=$1; MINUTES=$2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 || exit 1
cp -r .carry/run /tmp/run
A="--run /tmp/run --data .carry/train --steps 1000000 --batch 24 --crop 256 --log-every 500 --checkpoint-minutes 10"
python3 -m coldpress.jobs.train $A --max-minutes "$MINUTES" --lr 3e-4 > $OUT/train.log 2>&1
python3 -m coldpress.jobs.train $A --max-minutes "$(python3 -c "print($MINUTES / 5)")" --lr 1e-4 --eval .carry/evalsub \
    --model-id "$MODEL_ID" --export-to $OUT/weights >> $OUT/train.log 2>&1
python3 tools/gpu/gpu_checks.py $OUT/weights/$MODEL_ID.safetensors > $OUT/gpu_checks.json 2> $OUT/gpu_checks.err
cp /tmp/run/state.json /tmp/run/log.csv $OUT/ 2>/dev/null
split -b 15M /tmp/run/checkpoint.safetensors $OUT/ckpt.part_
ls -la $OUT $OUT/weights; grep -E "eval|reached" $OUT/train.log | tail -20; cat $OUT/gpu_checks.json
