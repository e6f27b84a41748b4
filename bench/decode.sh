#!/usr/bin/env bash
# Decode speed with the KV cache, kotoba against llama.cpp (llama-cpp-python) on the same weights,
# threads, prompt and number of new tokens, at batch 1 and 8; prints every figure and the ratios.
# The model (bench/decode_model.py: LLaMA architecture, 12 x 768, GQA, vocabulary ~32000, random
# weights, ~120 M parameters) is made once under the build tree and exported by `kotoba convert`
# to GGUF f32 and f16. kotoba decodes the model directory (f32); llama.cpp the f32 GGUF (the
# same numbers, so the ratio compares like with like) and, for reference, the f16 GGUF.
#
#   bench/decode.sh [--threads 2] [--prompt-tokens 512] [--new-tokens 128] [--batches 1,8] [--repeat 2]
#
# Environment: KOTOBA_BUILD_DIR (default build/; configured Release if new), KOTOBA_PYTHON (a python
# with transformers, tokenizers and llama_cpp; default ~/.cache/kotoba-ref/bin/python).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${KOTOBA_BUILD_DIR:-$repo/build}"
python="${KOTOBA_PYTHON:-$HOME/.cache/kotoba-ref/bin/python}"
threads=2 prompt=512 new=128 batches=1,8 repeat=2
while [[ $# -gt 0 ]]; do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --prompt-tokens) prompt="$2"; shift 2 ;;
    --new-tokens) new="$2"; shift 2 ;;
    --batches) batches="$2"; shift 2 ;;
    --repeat) repeat="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "decode.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
if [[ ! -x "$build/bench_decode" || ! -x "$build/kotoba" ]]; then
  [[ -f "$build/CMakeCache.txt" ]] || cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build" --target bench_decode kotoba_cli -j 2 >/dev/null
fi
work="$build/bench-decode"
mkdir -p "$work"
[[ -f "$work/model/config.json" ]] || "$python" "$repo/bench/decode_model.py" "$work/model"
for type in f32 f16; do
  [[ -f "$work/model-$type.gguf" ]] || "$build/kotoba" convert "$work/model" "$work/model-$type.gguf" --type "$type" >/dev/null
done
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores;" \
  "load before: $(cut -d' ' -f1-3 /proc/loadavg); threads $threads, prompt $prompt, new tokens $new" >&2
common=(--threads "$threads" --prompt-tokens "$prompt" --new-tokens "$new" --batches "$batches" --repeat "$repeat")
results="$(mktemp)"
trap 'rm -f "$results"' EXIT
OMP_NUM_THREADS="$threads" "$build/bench_decode" "$work/model" "${common[@]}" | tee -a "$results" | cut -c1-300 >&2
for type in f32 f16; do
  "$python" "$repo/bench/decode_peer.py" "$work/model-$type.gguf" "${common[@]}" |
    sed "s/\"side\": \"llama.cpp\"/\"side\": \"llama.cpp $type\"/" | tee -a "$results" | cut -c1-300 >&2
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$python" - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {(r["side"], r["batch"]): r for r in rows}
out = {"bench": "decode", "threads": rows[0]["threads"], "prompt_tokens": rows[0]["prompt_tokens"],
       "new_tokens": rows[0]["new_tokens"]}
for (side, b), r in sorted(by.items()):
    if side != "kotoba":
        continue
    k = r["decode_tokens_per_s"]
    for peer in ("llama.cpp f32", "llama.cpp f16"):
        p = by.get((peer, b))
        if p:
            print(f"batch {b}: kotoba f32 {k:.1f} tokens/s, {peer} {p['decode_tokens_per_s']:.1f} tokens/s, "
                  f"ratio kotoba / {peer} {k / p['decode_tokens_per_s']:.2f}")
            out[f"ratio_b{b}_vs_{peer.split()[1]}"] = round(k / p["decode_tokens_per_s"], 3)
    for peer in ("llama.cpp f32", "llama.cpp f16"):
        p = by.get((peer, b))
        if p:  # greedy on the same weights: the leading tokens agree until a near-tie splits them
            same = next((i for i, (x, y) in enumerate(zip(r["ids"], p["ids"])) if x != y), min(len(r["ids"]), len(p["ids"])))
            print(f"batch {b}: kotoba and {peer} agree on the first {same} of {len(r['ids'])} greedy tokens of row 0")
            out[f"same_leading_tokens_b{b}_{peer.split()[1]}"] = same
    out[f"kotoba_b{b}"] = round(k, 1)
    out[f"llama_cpp_f32_b{b}"] = round(by[("llama.cpp f32", b)]["decode_tokens_per_s"], 1)
print(json.dumps(out))
PY
