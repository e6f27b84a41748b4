#!/usr/bin/env bash
# Decode speed with the KV cache, kotoba against llama.cpp (llama-cpp-python) on the same weights,
# threads, prompt and number of new tokens, at batch 1 and 8; prints every figure and the ratios.
# The model (bench/decode_model.py: LLaMA architecture, 12 x 768, GQA, vocabulary ~32000, random
# weights, ~120 M parameters) is made once under the build tree and exported by `kotoba convert`
# to GGUF f32, f16, q8_0 and q4_0. kotoba decodes the model directory (f32) and its `kotoba
# quantize` copies (--formats, default int8,q8_0,q4_0,nf4; llm_int8 also takes: the blocks' Linear
# layers and the untied LM head quantised, the embeddings f32); llama.cpp the f32 GGUF (the same numbers, so the
# ratio compares like with like), the f16 one for reference, and the q8_0/q4_0 ones (every matrix
# quantised, the embeddings and output head too) beside kotoba's 8-bit and 4-bit formats.
#
#   bench/decode.sh [--threads 2] [--prompt-tokens 512] [--new-tokens 128] [--batches 1,8] [--repeat 2]
#                   [--formats int8,q8_0,q4_0,nf4]
#
# Environment: KOTOBA_BUILD_DIR (default build/; configured Release if new), KOTOBA_PYTHON (a python
# with transformers, tokenizers and llama_cpp; default ~/.cache/kotoba-ref/bin/python).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${KOTOBA_BUILD_DIR:-$repo/build}"
python="${KOTOBA_PYTHON:-$HOME/.cache/kotoba-ref/bin/python}"
threads=2 prompt=512 new=128 batches=1,8 repeat=2 formats=int8,q8_0,q4_0,nf4
while [[ $# -gt 0 ]]; do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --prompt-tokens) prompt="$2"; shift 2 ;;
    --new-tokens) new="$2"; shift 2 ;;
    --batches) batches="$2"; shift 2 ;;
    --repeat) repeat="$2"; shift 2 ;;
    --formats) formats="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
gguf_types="f32 f16"
[[ -n "$formats" ]] && gguf_types="f32 f16 q8_0 q4_0"
for type in $gguf_types; do
  [[ -f "$work/model-$type.gguf" ]] || "$build/kotoba" convert "$work/model" "$work/model-$type.gguf" --type "$type" >/dev/null
done
for fmt in ${formats//,/ }; do
  [[ -f "$work/model-$fmt/config.json" ]] || "$build/kotoba" quantize "$work/model" --to "$fmt" --out "$work/model-$fmt" >/dev/null
done
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores;" \
  "load before: $(cut -d' ' -f1-3 /proc/loadavg); threads $threads, prompt $prompt, new tokens $new" >&2
common=(--threads "$threads" --prompt-tokens "$prompt" --new-tokens "$new" --batches "$batches" --repeat "$repeat")
results="$(mktemp)"
trap 'rm -f "$results"' EXIT
OMP_NUM_THREADS="$threads" "$build/bench_decode" "$work/model" "${common[@]}" | tee -a "$results" | cut -c1-300 >&2
for fmt in ${formats//,/ }; do
  OMP_NUM_THREADS="$threads" "$build/bench_decode" "$work/model-$fmt" "${common[@]}" |
    sed "s/\"side\": *\"kotoba\"/\"side\": \"kotoba $fmt\"/" | tee -a "$results" | cut -c1-300 >&2
done
for type in $gguf_types; do
  # A peer whose repacked kernels crash (llama-cpp-python 0.3.36 on some CPUs) is run again on the
  # weights as stored, and named so in the results.
  if ! "$python" "$repo/bench/decode_peer.py" "$work/model-$type.gguf" "${common[@]}" |
      sed "s/\"side\": \"llama.cpp\"/\"side\": \"llama.cpp $type\"/" | tee -a "$results" | cut -c1-300 >&2; then
    echo "decode.sh: llama.cpp on model-$type.gguf failed (status ${PIPESTATUS[0]}); again without repacking" >&2
    if ! "$python" "$repo/bench/decode_peer.py" "$work/model-$type.gguf" "${common[@]}" --no-repack |
        sed "s/\"side\": \"llama.cpp\"/\"side\": \"llama.cpp $type no-repack\"/" | tee -a "$results" |
        cut -c1-300 >&2; then
      echo "decode.sh: llama.cpp on model-$type.gguf failed without repacking too; left out" >&2
    fi
  fi
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
    if ("llama.cpp f32", b) in by:
        out[f"llama_cpp_f32_b{b}"] = round(by[("llama.cpp f32", b)]["decode_tokens_per_s"], 1)
# Quantised: each kotoba format against kotoba f32 and llama.cpp at the same bit width.
peer_of = {"int8": "llama.cpp q8_0", "llm_int8": "llama.cpp q8_0", "q8_0": "llama.cpp q8_0",
           "q4_0": "llama.cpp q4_0", "nf4": "llama.cpp q4_0"}
for (side, b), r in sorted(by.items()):
    if not side.startswith("kotoba ") or ("kotoba", b) not in by:
        continue
    fmt, q = side.split()[1], r["decode_tokens_per_s"]
    f32 = by[("kotoba", b)]["decode_tokens_per_s"]
    line = f"batch {b}: kotoba {fmt} {q:.1f} tokens/s, {q / f32:.2f}x kotoba f32"
    out[f"kotoba_{fmt}_b{b}"] = round(q, 1)
    out[f"ratio_{fmt}_vs_f32_b{b}"] = round(q / f32, 3)
    peer = peer_of.get(fmt, "")
    p = by.get((peer, b))
    if not p and (peer + " no-repack", b) in by:  # the peer ran on its unpacked kernels
        peer += " no-repack"
        p = by[(peer, b)]
    if p:
        line += f"; {peer} {p['decode_tokens_per_s']:.1f} tokens/s, ratio {q / p['decode_tokens_per_s']:.2f}"
        out[f"ratio_{fmt}_vs_{'_'.join(peer.split()[1:])}_b{b}"] = round(q / p["decode_tokens_per_s"], 3)
    print(line)
print(json.dumps(out))
PY
