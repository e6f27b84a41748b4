#!/usr/bin/env bash
# Byte-level BPE: kotoba (bench/tokenizer.cpp) against HF tokenizers (bench/tokenizer_peer.py)
# on the same English text, tokenizer.json and threads; prints both and the ratios.
# usage: bench/tokenizer.sh [--text FILE] [--vocab-size N] [--repeat R] [--threads T]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${KOTOBA_BUILD_DIR:-$repo/build}"
python="${KOTOBA_PYTHON:-$HOME/.cache/kotoba-ref/bin/python}"
threads=2 vocab=8192
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --threads) threads="${args[i + 1]}" ;;
    --vocab-size) vocab="${args[i + 1]}" ;;
  esac
done
"$python" -c "import tokenizers" 2>/dev/null || "$python" -m pip install --quiet tokenizers </dev/null
[ -x "$build/bench_tokenizer" ] || {
  cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build" --target bench_tokenizer -j 2 >/dev/null
}
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
kotoba_json="$("$build/bench_tokenizer" --out "$out" --threads "$threads" "$@" | tee /dev/stderr | tail -1)"
peer_json="$(RAYON_NUM_THREADS="$threads" "$python" "$repo/bench/tokenizer_peer.py" "$out" "$threads" "$vocab" \
  | tee /dev/stderr | tail -1)"
"$python" - "$kotoba_json" "$peer_json" <<'PY'
import json, sys
k, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"kotoba / HF: encode 1 thread {k['encode_mb_s_1thread'] / p['encode_mb_s_1thread']:.2f}x, "
      f"encode {k['threads']} threads {k['encode_mb_s_threads'] / p['encode_mb_s_threads']:.2f}x, "
      f"decode {k['decode_mb_s_1thread'] / p['decode_mb_s_1thread']:.2f}x, "
      f"training time {p['train_seconds'] / k['train_seconds']:.2f}x faster; same ids as HF: {p['same_ids']}")
PY
