#!/usr/bin/env bash
# The real-text model and its evidence (docs/real-text.md): the corpus from Debian packages, the
# model and its window-only baseline trained with one recipe, then `infini eval` on held-out
# documents, and the model's quantised variants. About 2.5 hours on 2 cores (the two trainings run
# side by side, one thread each, then the variants' evaluations two at a time); the evaluations
# read 4.8 MB of held-out text, about 5,000 bytes/s per thread and run.
set -euo pipefail
work=${1:-build/real-text}
mkdir -p "$work"

if ! command -v bible >/dev/null || [ ! -d /usr/share/doc/python3.11/html ] || [ ! -d /usr/share/doc/linux-doc-6.1 ]; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get install -y -q linux-doc-6.1 python3.11-doc bible-kjv
fi
python examples/real_text/corpus.py "$work/corpus"
train=$work/corpus/train
held=$work/corpus/heldout

# The same preset, seed and recipe; the model's gates start nearly closed (sigmoid(-3) = 0.047 of
# each head from the memory), the baseline's stay closed (the memory never read, so the memory
# resets change nothing for it).
infini init "$work/init-memory" --preset text --gate-init -3
infini init "$work/init-window" --preset text --window-only
pids=()
for model in memory window; do
  infini train "$work/init-$model" --out "$work/text-$model" \
    --text "$train/kernel.txt" --text "$train/python.txt" --text "$train/bible.txt" \
    --eval-text "$held/ftrace.txt" --eval-tokens 8192 --eval-every 240 \
    --steps 720 --batch-size 8 --segments 2 --lr 2e-3 --gate-lr 5e-2 --warmup 50 \
    --reset-memory-every 180 --log-every 20 --checkpoint-every 120 --threads 1 \
    > "$work/train-$model.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done  # a failed training stops the script

# Bits per byte by position: the model, its two ablations and the baseline.
infini eval "$work/text-memory" "$held"/*.txt --compare "window-only baseline=$work/text-window" \
  --threads 2 --json "$work/eval.json" --plot "$work/eval.png" | tee "$work/eval.txt"

# The variants: the same held-out documents through fp32, fp16, int8 and int4 graphs.
infini export "$work/text-memory" "$work/text.onnx"
for mode in fp16 int8 int4; do
  infini quantize "$work/text.onnx" "$work/text-$mode.onnx" --mode $mode
done
for pair in "text text-fp16" "text-int8 text-int4"; do
  pids=()
  for variant in $pair; do
    infini eval "$work/$variant.onnx" "$held"/*.txt --no-ablations --threads 1 \
      --json "$work/eval-$variant.json" > "$work/eval-$variant.txt" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
done
