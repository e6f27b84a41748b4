"""Writes the committed seed corpora of the fuzz targets into fuzz/corpus/<target>/: small valid
files made by the ecosystem's own writers (safetensors, tokenizers, gguf) and a few broken ones
(truncated, wrong magic, lying lengths) that must be rejected with a kotoba::Error.

usage: ~/.cache/kotoba-ref/bin/python fuzz/make_seeds.py [CORPUS_DIR]   (default: fuzz/corpus)
Deterministic: rerunning it rewrites the same files (seeded values, no timestamps).
"""
import json
import os
import struct
import sys
import tempfile

import numpy as np


def write(directory, name, data):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def safetensors_seeds(out):
    import torch
    from safetensors.torch import save

    torch.manual_seed(1)
    valid = {
        "mixed": save({
            "weight": torch.randn(4, 3),
            "half": torch.randn(5).half(),
            "brain": torch.randn(2, 2).bfloat16(),
            "double": torch.randn(3, dtype=torch.float64),
            "ids": torch.arange(6, dtype=torch.int32).reshape(2, 3),
            "long": torch.arange(3, dtype=torch.int64),
            "bytes": torch.tensor([-3, 0, 7], dtype=torch.int8),
            "scalar": torch.tensor(2.5),
            "empty": torch.zeros(0, 4),
        }, metadata={"format": "pt"}),  # one key: the writer orders keys by hash
        "single": save({"w": torch.randn(8)}),
        "no_tensors": save({}, metadata={"format": "pt"}),
        "unsupported_bool": save({"mask": torch.tensor([True, False, True])}),
        "unsupported_u8": save({"packed": torch.tensor([1, 2, 255], dtype=torch.uint8)}),
    }
    for name, data in valid.items():
        write(out, name + ".safetensors", data)

    def raw(header, data=b"", length=None):
        text = json.dumps(header).encode()
        return struct.pack("<Q", len(text) if length is None else length) + text + data

    broken = {
        "truncated": valid["mixed"][: len(valid["mixed"]) - 5],
        "short": b"\x10\x00\x00",
        "header_too_long": raw({}, length=1 << 40),
        "header_past_end": raw({}, length=64),
        "not_json": struct.pack("<Q", 5) + b"{\"a\":",
        "array_header": raw([1, 2]),
        "overlap": raw({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                        "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)),
        "size_mismatch": raw({"a": {"dtype": "F16", "shape": [3, 3], "data_offsets": [0, 16]}}, bytes(16)),
        "offsets_backwards": raw({"a": {"dtype": "I8", "shape": [0], "data_offsets": [4, 2]}}, bytes(4)),
        "huge_shape": raw({"a": {"dtype": "F64", "shape": [1 << 62, 1 << 62, 4], "data_offsets": [0, 0]}}),
        "negative_dim": raw({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4)),
        "fp8": raw({"a": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, bytes(2)),
        "bad_metadata": raw({"__metadata__": {"n": 3}}),
    }
    for name, data in broken.items():
        write(out, "broken_" + name + ".safetensors", data)


def tokenizer_seeds(out):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    text = ["Hello, world! The quick brown fox jumps over the lazy dog. 123 456",
            "naïve café — 日本語のテキスト", "def f(x):\n    return x * 2\n"] * 20

    # GPT-2 style byte-level BPE.
    gpt2 = Tokenizer(models.BPE())
    gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    gpt2.decoder = decoders.ByteLevel()
    gpt2.post_processor = processors.ByteLevel(trim_offsets=False)
    gpt2.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    write(out, "byte_level_bpe.json", gpt2.to_str().encode())

    # Llama 2 style: SentencePiece BPE with byte fallback, metaspace, BOS template.
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in ["▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "el", "lo", "▁w", "or", "ld", "▁hel", "▁wor"]:
        vocab.setdefault(piece, len(vocab))
    merges = [("▁", "h"), ("e", "l"), ("l", "o"), ("▁", "w"), ("o", "r"), ("l", "d"), ("▁h", "el"), ("▁w", "or")]
    llama = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    llama.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    llama.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                       decoders.Strip(" ", 1, 0)])
    llama.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                         special_tokens=[("<s>", 1)])
    llama.add_special_tokens(["<s>", "</s>", "<unk>"])
    write(out, "sentencepiece_bpe.json", llama.to_str().encode())

    valid = gpt2.to_str()
    broken = {
        "truncated": valid[: len(valid) // 2],
        "not_json": "tokenizer",
        "empty_object": "{}",
        "no_model": json.dumps({"version": "1.0", "added_tokens": []}),
        "wrong_model": json.dumps({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}),
        "merge_unknown": json.dumps({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a c"]}}),
        "vocab_not_object": json.dumps({"model": {"type": "BPE", "vocab": [1, 2], "merges": []}}),
        "duplicate_id": json.dumps({"model": {"type": "BPE", "vocab": {"a": 0, "b": 0}, "merges": []}}),
        "negative_id": json.dumps({"model": {"type": "BPE", "vocab": {"a": -5}, "merges": []}}),
        "bad_added": json.dumps({"added_tokens": [{"id": "x"}], "model": {"type": "BPE", "vocab": {}, "merges": []}}),
    }
    for name, data in broken.items():
        write(out, "broken_" + name + ".json", data.encode())


def gguf_seeds(out):
    import gguf

    rng = np.random.default_rng(3)
    with tempfile.TemporaryDirectory() as tmp:
        def make(name, fill):
            path = os.path.join(tmp, name)
            writer = gguf.GGUFWriter(path, "llama")
            fill(writer)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            with open(path, "rb") as f:
                return f.read()

        def llama(writer):
            writer.add_block_count(1)
            writer.add_context_length(64)
            writer.add_embedding_length(8)
            writer.add_head_count(2)
            writer.add_layer_norm_rms_eps(1e-5)
            writer.add_tokenizer_model("llama")
            writer.add_token_list(["<unk>", "<s>", "</s>", "a", "b"])
            writer.add_token_scores([0.0, 0.0, 0.0, -1.0, -2.0])
            writer.add_bool("kotoba.flag", True)
            writer.add_array("kotoba.ints", [1, 2, 3])
            writer.add_float64("kotoba.double", 0.25)
            writer.add_tensor("token_embd.weight", rng.standard_normal((5, 8)).astype(np.float32))
            writer.add_tensor("blk.0.attn_norm.weight", rng.standard_normal(8).astype(np.float16))
            writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))

        valid = {
            "llama": make("llama.gguf", llama),
            "metadata_only": make("meta.gguf", lambda w: w.add_string("general.name", "seed")),
        }
    for name, data in valid.items():
        write(out, name + ".gguf", data)

    data = valid["llama"]
    broken = {
        "truncated": data[: len(data) * 2 // 3],
        "header_only": data[:24],
        "bad_magic": b"GGUX" + data[4:],
        "version_1": data[:4] + struct.pack("<I", 1) + data[8:],
        "version_99": data[:4] + struct.pack("<I", 99) + data[8:],
        "huge_tensor_count": data[:8] + struct.pack("<Q", 1 << 60) + data[16:],
        "huge_kv_count": data[:16] + struct.pack("<Q", 1 << 60) + data[24:],
    }
    for name, blob in broken.items():
        write(out, "broken_" + name + ".gguf", blob)


def main():
    corpus = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
    safetensors_seeds(os.path.join(corpus, "fuzz_safetensors"))
    tokenizer_seeds(os.path.join(corpus, "fuzz_tokenizer_json"))
    gguf_seeds(os.path.join(corpus, "fuzz_gguf"))


if __name__ == "__main__":
    main()
