#!/usr/bin/env bash
# One device call: train brandgen-tiny on an H200 from the carried icon pack, return the model in <=15 MiB parts.
# Run from the repository root with .whl (diffusers wheel) and .work/icons/iconpack.npz present; $OUT receives the parts.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -m brandgen.tiny.train --config brandgen/tiny/recipe.json --work-dir /tmp/work --out /tmp/model --samples /tmp/work/samples.png --eval 4 2>&1 | grep -v Warning | tee /tmp/work_log.txt
cp /tmp/work_log.txt /tmp/work/train_log.txt 2>/dev/null
cd /tmp && tar czf $OUT/work.tgz work/train_log.txt work/summary.json work/eval.json work/contact_sheet.png work/samples.png work/state.json; tar czf - model | split -b 15M - $OUT/model.tgz.
ls -la $OUT
