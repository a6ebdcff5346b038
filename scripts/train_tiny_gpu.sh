#!/usr/bin/env bash
# Train brandgen-tiny on a lent GPU from the carried icon pack (.work/icons/iconpack.npz) and diffusers wheel (.whl).
# Run from the repository root. Every mode but `background` finishes inside one device call and returns its result
# in $OUT, so a machine lost between calls (taken back, or idle past its 30 s) costs only that call:
#   bash scripts/train_tiny_gpu.sh text
#       CLIP-style text pretraining (~100 s on an H100): $OUT/text-init.tgz; unpack it here into .work/text-init.
#   bash scripts/train_tiny_gpu.sh train [train.py options]
#       the whole recipe, from a carried .work/text-init when present (skips the text stage); stops by itself in
#       time for the 10-minute call (TIMEOUT_S, default 560) and returns log, eval, contact sheet and model parts.
#   bash scripts/train_tiny_gpu.sh background [train.py options]
#       longer runs: trains in its own process session and waits WAIT_S (default 540); call again at once until it
#       prints "finished". Each call that ends while training goes on returns a snapshot of the EMA weights
#       ($OUT/snapshot.tgz.*), so a machine lost between calls costs only that call: unpack it here into
#       .work/init-model, carry that and call again (train.py --init-model continues its UNet).
#   bash scripts/train_tiny_gpu.sh stage
#       installs the wheels and copies the carried pack to /tmp, nothing else: a later call on the same (warm) machine
#       then needs neither, so it can carry a 49 MB .work/init-model instead (pack + model are over the 64 MiB a call
#       may carry; move assets/brandgen-tiny out of the tree for these calls too).
# A carried .work/init-model (a saved model, or INIT_MODEL=DIR) is continued; otherwise a carried .work/text-init is
# the text encoder.
set -u
MODE=${1:-train}; shift || true
WORK=/tmp/work LOG=/tmp/work_log.txt PID=/tmp/train.pid PY=${PYTHON:-python3}
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
$PY -c "import diffusers" 2>/dev/null || $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null
PACK=/tmp/iconpack.npz
[ -f .work/icons/iconpack.npz ] && { cmp -s .work/icons/iconpack.npz $PACK || cp .work/icons/iconpack.npz $PACK; }
[ -f $PACK ] || { echo "no icon pack: carry .work/icons/iconpack.npz (python -m brandgen.tiny.icons build)"; exit 1; }

collect() {  # log, summary, eval, sheets and the model (in <= 15 MiB parts) into $OUT
    grep -v Warning "$LOG" >"$OUT/train_log.txt"
    cp "$OUT/train_log.txt" $WORK/train_log.txt
    grep -q '"total_seconds"' "$LOG" || { echo "training failed (see train_log.txt)"; tail -n 30 "$OUT/train_log.txt"; exit 1; }
    echo finished
    (cd /tmp && tar czf "$OUT/work.tgz" --ignore-failed-read work/train_log.txt work/summary.json work/eval.json \
        work/contact_sheet.png work/eval_control.json work/samples.png work/state.json work/text_init/pretrain.json 2>/dev/null
     tar czf - model | split -b 15M - "$OUT/model.tgz.")
    ls -la "$OUT"
}

TRAIN=($PY -m brandgen.tiny.train --config brandgen/tiny/recipe.json --work-dir $WORK --out /tmp/model
       --samples $WORK/samples.png --eval 4 --set "data.pack=\"$PACK\"")
INIT=${INIT_MODEL:-.work/init-model}  # INIT_MODEL=assets/brandgen-tiny continues the shipped model, no carry needed
if [ -f "$INIT/model_index.json" ]; then TRAIN+=(--init-model "$INIT")
elif [ -d .work/text-init ]; then TRAIN+=(--text-init .work/text-init); fi
case "$MODE" in
stage) ls -la $PACK; exit 0 ;;
text)
    $PY -m brandgen.tiny.text_pretrain --pack $PACK --out /tmp/text-init --work-dir /tmp/text-work \
        --seconds "${TEXT_S:-240}" --max-steps "${TEXT_STEPS:-4000}" --eval-every 1000 --device "${DEVICE:-cuda}" 2>&1 \
        | grep -v Warning | tee "$OUT/text_log.txt" | grep -v "step .*loss"
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "text pretraining failed (see text_log.txt)"; exit 1; }
    cd /tmp && tar czf "$OUT/text-init.tgz" text-init && ls -la "$OUT" ;;
train)
    timeout "${TIMEOUT_S:-560}" "${TRAIN[@]}" "$@" >"$LOG" 2>&1 </dev/null
    collect ;;
background)
    if [ ! -f "$PID" ]; then
        setsid nohup "${TRAIN[@]}" "$@" >"$LOG" 2>&1 </dev/null &
        echo $! >"$PID"
        echo "started training (pid $(cat $PID))"
    fi
    deadline=$((SECONDS + ${WAIT_S:-540}))
    while kill -0 "$(cat $PID)" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 5; done
    grep -v Warning "$LOG" | tail -n 30
    if kill -0 "$(cat $PID)" 2>/dev/null; then
        grep -v Warning "$LOG" >"$OUT/train_log.txt"
        rm -rf /tmp/snapshot
        if $PY -m brandgen.tiny.snapshot --work-dir $WORK --out /tmp/snapshot >/tmp/snapshot.log 2>&1; then
            tail -n 1 /tmp/snapshot.log; (cd /tmp && tar czf - snapshot | split -b 15M - "$OUT/snapshot.tgz.")
        else echo "no snapshot: $(tail -n 1 /tmp/snapshot.log)"; fi
        echo "still training: call again"
        exit 0
    fi
    collect ;;
*) echo "usage: $0 stage | text | train [options] | background [options]"; exit 2 ;;
esac
