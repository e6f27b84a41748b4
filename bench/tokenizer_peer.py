"""The peer of bench/tokenizer.cpp: HF tokenizers on the tokenizer.json and documents that
kotoba's bench wrote (DIR/tokenizer.json, DIR/docs.json); checks that the ids agree and times
training on DIR/corpus.txt, encode (1 thread and N) and decode. Prints one JSON line last.
usage: tokenizer_peer.py DIR THREADS VOCAB_SIZE   (set RAYON_NUM_THREADS to THREADS)"""
import json
import os
import sys
import time

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


def best_of(n, fn):
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    out_dir, threads, vocab = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    tok = Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "docs.json"), encoding="utf-8") as f:
        docs = json.load(f)
    mb = sum(len(d.encode()) for d in docs) / 1e6

    # encode_batch runs on rayon's pool; single-threaded is timed with one encode() per document.
    encode_1 = best_of(3, lambda: [tok.encode(d, add_special_tokens=False) for d in docs])
    encode_n = best_of(3, lambda: tok.encode_batch(docs, add_special_tokens=False))
    ids = [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)]
    flat = [i for d in ids for i in d]
    decode_1 = best_of(3, lambda: tok.decode(flat, skip_special_tokens=False))

    peer = Tokenizer(models.BPE())
    peer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    peer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    t = time.perf_counter()
    peer.train([os.path.join(out_dir, "corpus.txt")], trainer)
    train_s = time.perf_counter() - t
    with open(os.path.join(out_dir, "kotoba_ids.json")) as f:
        same = json.load(f) == ids
    print(f"HF tokenizers: trained {peer.get_vocab_size()} tokens in {train_s:.2f}s; encode {mb / encode_1:.1f} MB/s "
          f"on 1 thread, {mb / encode_n:.1f} MB/s on {threads}; decode {mb / decode_1:.0f} MB/s")
    print(json.dumps({"train_seconds": train_s, "encode_mb_s_1thread": mb / encode_1,
                      "encode_mb_s_threads": mb / encode_n, "decode_mb_s_1thread": mb / decode_1, "same_ids": same}))


if __name__ == "__main__":
    main()
