#!/usr/bin/env bash
# Train brandgen-tiny on a lent GPU from the carried icon pack, longer than one 10-minute device call allows.
# Run from the repository root with .whl (diffusers wheel) and .work/icons/iconpack.npz carried:
#   bash scripts/train_tiny_gpu.sh [train.py options, e.g. --set train_unet.seconds=1100]
# The first call starts training in its own process session (it outlives the call while the machine is held)
# and waits up to WAIT_S seconds (default 540); call it again, within the 30 s a machine stays warm, until it
# prints "finished". Then $OUT receives the log, summary, eval, contact sheet and the model in <= 15 MiB parts.
# A fresh machine (the lease went back) starts over: nothing on the last one survives.
set -u
WORK=/tmp/work LOG=/tmp/work_log.txt PID=/tmp/train.pid PY=${PYTHON:-python3}
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
$PY -c "import diffusers" 2>/dev/null || $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || exit 1
if [ ! -f "$PID" ]; then
    nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null
    setsid nohup $PY -m brandgen.tiny.train --config brandgen/tiny/recipe.json --work-dir $WORK --out /tmp/model \
        --samples $WORK/samples.png --eval 4 "$@" >"$LOG" 2>&1 </dev/null &
    echo $! >"$PID"
    echo "started training (pid $(cat $PID))"
fi
deadline=$((SECONDS + ${WAIT_S:-540}))
while kill -0 "$(cat $PID)" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 5; done
grep -v Warning "$LOG" | tail -n 30
grep -v Warning "$LOG" >"$OUT/train_log.txt"
if kill -0 "$(cat $PID)" 2>/dev/null; then
    echo "still training: call again"
    exit 0
fi
cp "$OUT/train_log.txt" $WORK/train_log.txt
grep -q '"total_seconds"' "$LOG" || { echo "training failed (see train_log.txt)"; exit 1; }
echo finished
cd /tmp && tar czf "$OUT/work.tgz" work/train_log.txt work/summary.json work/eval.json work/contact_sheet.png \
    work/samples.png work/state.json work/text_init/pretrain.json
tar czf - model | split -b 15M - "$OUT/model.tgz."
ls -la "$OUT"
