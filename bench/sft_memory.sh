#!/usr/bin/env bash
# LoRA against full fine-tuning: peak memory (RSS) and step time of `kotoba sft` on GPT-2 124M,
# full, LoRA (r 8 on c_attn) and QLoRA (the same adapters on an NF4 base, --quantize nf4), against
# PyTorch (+ PEFT for LoRA; bitsandbytes, QLoRA's peer, needs a newer torch than the reference
# venv's, so QLoRA is kotoba's alone) on the same model, batch, sequence length and threads, each
# in its own process. Every example is longer than --seq, so
# each micro-batch is exactly batch x seq tokens on both sides.
#
#   bench/sft_memory.sh [--threads 2] [--batch 4] [--seq 256] [--steps 6] [--modes full,lora,qlora]
#
# Environment: KOTOBA_BUILD_DIR (default build/), KOTOBA_PYTHON (default ~/.cache/kotoba-ref/bin/python,
# with transformers and peft).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${KOTOBA_BUILD_DIR:-$repo/build}"
python="${KOTOBA_PYTHON:-$HOME/.cache/kotoba-ref/bin/python}"
threads=2 batch=4 seq=256 steps=6 modes=full,lora,qlora
while [[ $# -gt 0 ]]; do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --seq) seq="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --modes) modes="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "sft_memory.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[[ -x "$build/kotoba" ]] || cmake --build "$build" --target kotoba_cli -j 2 >/dev/null
work="$build/bench-sft"
mkdir -p "$work"
[[ -f "$work/model/config.json" ]] || "$python" "$repo/bench/sft_peer.py" make "$work/model"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; load" \
  "$(cut -d' ' -f1-3 /proc/loadavg); threads $threads, batch $batch x $seq tokens, $steps steps" >&2
results="$(mktemp)"
trap 'rm -f "$results"' EXIT
for mode in ${modes//,/ }; do
  lora=()
  [[ $mode != full ]] && lora=(--lora-r 8 --lora-alpha 16 --lora-dropout 0 --lora-targets c_attn)
  [[ $mode == qlora ]] && lora+=(--quantize nf4)
  out="$work/run-$mode"
  rm -rf "$out"
  /usr/bin/time -f '%M' -o "$work/rss-$mode" env OMP_NUM_THREADS="$threads" "$build/kotoba" sft \
    --model "$work/model" --data "$work/sft.jsonl" --out "$out" --max-length "$seq" --batch "$batch" \
    --steps "$steps" --lr 1e-5 --val-fraction 0 --checkpoint-every 0 --log-every 1 --threads "$threads" \
    --chat-template alpaca "${lora[@]}" --quiet --json >"$work/kotoba-$mode.json" 2>"$work/kotoba-$mode.log"
  # step seconds: the median of loss.csv's per-step tokens/s after the first step
  "$python" - "$out/loss.csv" "$work/rss-$mode" "$mode" "$((batch * seq))" <<'PY' | tee -a "$results" >&2
import csv, json, sys
rows = list(csv.DictReader(open(sys.argv[1])))[1:]
tps = sorted(float(r["tokens_per_second"]) for r in rows)
print(json.dumps({"side": "kotoba", "mode": sys.argv[3], "peak_rss_mb": int(open(sys.argv[2]).read().split()[-1]) / 1024,
                  "step_seconds": int(sys.argv[4]) / tps[len(tps) // 2]}))
PY
  [[ $mode == qlora ]] && continue
  OMP_NUM_THREADS="$threads" "$python" "$repo/bench/sft_peer.py" run "$work/model" "$mode" --batch "$batch" \
    --seq "$seq" --steps "$steps" --threads "$threads" | tee -a "$results" >&2
done
"$python" - "$results" <<'PY'
import json, sys
rows = {(r["side"], r["mode"]): r for r in map(json.loads, open(sys.argv[1]))}
for (side, mode), r in sorted(rows.items()):
    line = f"{side} {mode}: {r['peak_rss_mb']:.0f} MB peak RSS, {r['step_seconds']:.2f} s/step"
    full = rows.get((side, "full"))
    if full and mode != "full":
        line += f"; memory {r['peak_rss_mb'] / full['peak_rss_mb']:.2f} of full"
    print(line)
for mode in ("full", "lora"):
    if ("kotoba", mode) not in rows or ("pytorch", mode) not in rows:
        continue
    k, p = rows[("kotoba", mode)], rows[("pytorch", mode)]
    print(f"{mode}: kotoba/pytorch memory {k['peak_rss_mb'] / p['peak_rss_mb']:.2f}, "
          f"speed (pytorch s/step / kotoba s/step) {p['step_seconds'] / k['step_seconds']:.2f}")
PY
