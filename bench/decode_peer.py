"""llama.cpp's side of bench/decode.sh, through llama-cpp-python's low-level API (the high-level
Llama class holds one sequence only): the same prompt ids as bench/decode.cpp in every row,
greedy (argmax of each row's logits in numpy), no EOS, --new-tokens per row. Batch B: one context
with n_seq_max = B; the prompts are decoded one sequence at a time (prefill, not the figure here),
then each step is ONE llama_decode of B tokens (one per sequence, each at its own position), so a
step computes all rows together as kotoba's batched step does. Times the steps after the first
token: B * (new_tokens - 1) tokens, best of --repeat runs. Prints one JSON line per batch size.
--no-repack loads the weights as the file stores them (llama.cpp otherwise repacks Q8_0/Q4_0 into
interleaved layouts for its faster kernels; in llama-cpp-python 0.3.36 those crash on some CPUs).
usage: decode_peer.py MODEL.gguf --threads T --prompt-tokens P --new-tokens N --batches 1,8 [--repeat R]
       [--no-repack]"""
import argparse
import ctypes
import json
import time

import numpy as np
import llama_cpp as L

ap = argparse.ArgumentParser()
ap.add_argument("gguf")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--prompt-tokens", type=int, default=512)
ap.add_argument("--new-tokens", type=int, default=128)
ap.add_argument("--batches", default="1,8")
ap.add_argument("--repeat", type=int, default=2)
ap.add_argument("--no-repack", action="store_true")
a = ap.parse_args()

_quiet = L.llama_log_callback(lambda level, text, user: None)  # llama.cpp's load log would bury the figures
L.llama_log_set(_quiet, ctypes.c_void_p(0))
L.llama_backend_init()
mp = L.llama_model_default_params()
if a.no_repack:
    mp.use_extra_bufts = False
model = L.llama_model_load_from_file(a.gguf.encode(), mp)
assert model, f"llama.cpp cannot load {a.gguf}"
n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
P, N = a.prompt_tokens, a.new_tokens
prompt = [(i * 7919 + 13) % n_vocab for i in range(P)]


def fill(batch, tokens, positions, seqs, want_logits):
    batch.n_tokens = len(tokens)
    for i, (t, p, s, w) in enumerate(zip(tokens, positions, seqs, want_logits)):
        batch.token[i] = t
        batch.pos[i] = p
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = s
        batch.logits[i] = w


def argmax_row(ctx, i):
    return int(np.argmax(np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i), shape=(n_vocab,))))


def run(B):
    cp = L.llama_context_default_params()
    per_seq = P + N
    cp.n_ctx = ((B * per_seq + 255) // 256) * 256
    cp.n_batch = cp.n_ubatch = max(512, P)
    cp.n_seq_max = B
    cp.n_threads = cp.n_threads_batch = a.threads
    ctx = L.llama_init_from_model(model, cp)
    assert ctx, "llama.cpp cannot make the context"
    batch = L.llama_batch_init(max(P, B), 0, 1)
    best_decode = best_prefill = float("inf")
    for r in range(a.repeat + 1):  # run 0 warms up
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        t0 = time.perf_counter()
        nxt, row0 = [], []
        for s in range(B):
            fill(batch, prompt, range(P), [s] * P, [0] * (P - 1) + [1])
            assert L.llama_decode(ctx, batch) == 0
            nxt.append(argmax_row(ctx, P - 1))
        row0.append(nxt[0])
        t1 = time.perf_counter()
        for step in range(1, N):
            fill(batch, nxt, [P + step - 1] * B, range(B), [1] * B)
            assert L.llama_decode(ctx, batch) == 0
            nxt = [argmax_row(ctx, i) for i in range(B)]
            row0.append(nxt[0])
        t2 = time.perf_counter()
        if r > 0:
            best_prefill, best_decode = min(best_prefill, t1 - t0), min(best_decode, t2 - t1)
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    print(json.dumps({"side": "llama.cpp", "batch": B, "threads": a.threads, "prompt_tokens": P, "new_tokens": N,
                      "decode_tokens_per_s": B * (N - 1) / best_decode,
                      "prefill_tokens_per_s": B * P / best_prefill,
                      "llama_cpp_python": L.__version__, "ids": row0}), flush=True)


for B in [int(x) for x in a.batches.split(",")]:
    run(B)
