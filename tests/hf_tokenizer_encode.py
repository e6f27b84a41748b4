"""Helper of tests/test_tokenizer.cpp (not a ctest fixture): loads a tokenizer.json that kotoba
wrote into HF `tokenizers` and writes the ids HF gives for each text.
usage: hf_tokenizer_encode.py TOKENIZER_JSON TEXTS_JSON OUT_JSON   (TEXTS_JSON: a list of strings)"""
import json
import sys

try:
    from tokenizers import Tokenizer
except ImportError:
    sys.exit(f"hf_tokenizer_encode.py: `tokenizers` is missing from {sys.executable} "
             f"(install it with `{sys.executable} -m pip install tokenizers`, as scripts/test does)")

tok = Tokenizer.from_file(sys.argv[1])
with open(sys.argv[2], encoding="utf-8") as f:
    texts = json.load(f)
out = []
for text in texts:
    ids = tok.encode(text, add_special_tokens=False).ids
    decoded = tok.decode(ids, skip_special_tokens=False)
    out.append({"ids": ids, "decoded_equal": decoded == text})
with open(sys.argv[3] + ".tmp", "w", encoding="utf-8") as f:
    json.dump(out, f)
import os  # noqa: E402

os.replace(sys.argv[3] + ".tmp", sys.argv[3])
