"""Reference side of tests/test_gguf.cpp: the `gguf` package (quantiser, GGUFReader, GGUFWriter),
llama.cpp through llama-cpp-python, and transformers. Models are random and made here; nothing
is downloaded. Each mode prints one JSON object on stdout (or writes the files it is given).

  q8 IN.f32 OUT             gguf.quants Q8_0 of raw f32 values: OUT.q (blocks), OUT.deq (f32)
  write OUT.gguf OUT.json SEED   a GGUFWriter file of every value and tensor type + what it holds
  make-model ARCH DIR SEED PROMPT N   a random HF model (gpt2 | llama) with a tokenizer trained
                            here, drawn until its greedy continuation of PROMPT is confident
  check HFDIR PROMPT N OUTDIR GGUF...   for each GGUF: GGUFReader's view, llama.cpp's tokens,
                            logits and greedy continuation, compared with transformers on HFDIR
"""
import contextlib
import json
import os
import sys

import numpy as np


def q8(inp, out):
    import gguf
    x = np.fromfile(inp, dtype=np.float32).reshape(-1, 32)
    q = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)
    q.tofile(out + ".q")
    gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0).astype(np.float32).tofile(out + ".deq")


def write(path, expect_path, seed):
    import gguf
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, arch="kotoba-test")
    expect = {"metadata": {}, "tensors": {}}
    u8, i8 = int(rng.integers(0, 256)), int(rng.integers(-128, 128))
    u16, i16 = int(rng.integers(0, 65536)), int(rng.integers(-32768, 32768))
    u32, i32 = int(rng.integers(0, 2**32)), int(rng.integers(-2**31, 2**31))
    u64, i64 = int(rng.integers(0, 2**63)) * 2 + 1, int(rng.integers(-2**63, 2**63))
    f32 = float(np.float32(rng.normal()))
    f64 = float(rng.normal())
    w.add_uint8("t.u8", u8); w.add_int8("t.i8", i8)
    w.add_uint16("t.u16", u16); w.add_int16("t.i16", i16)
    w.add_uint32("t.u32", u32); w.add_int32("t.i32", i32)
    w.add_uint64("t.u64", u64); w.add_int64("t.i64", i64)
    w.add_float32("t.f32", f32); w.add_float64("t.f64", f64)
    w.add_bool("t.bool", True)
    text = "日本語 " + "".join(chr(int(c)) for c in rng.integers(0x20, 0x7e, 12))
    w.add_string("t.string", text)
    strings = ["a", "", "ĠGGUF", text]
    w.add_array("t.strings", strings)
    floats = [float(np.float32(v)) for v in rng.normal(size=5)]
    w.add_array("t.floats", floats)
    ints = [int(v) for v in rng.integers(-1000, 1000, 7)]
    w.add_array("t.ints", ints)
    nested = [[1, 2, 3], [4, 5]]
    w.add_array("t.nested", nested)
    expect["metadata"] = {"t.u8": u8, "t.i8": i8, "t.u16": u16, "t.i16": i16, "t.u32": u32, "t.i32": i32,
                          "t.u64": str(u64), "t.i64": i64, "t.f32": f32, "t.f64": f64, "t.bool": True,
                          "t.string": text, "t.strings": strings, "t.floats": floats, "t.ints": ints,
                          "general.architecture": "kotoba-test"}
    T = gguf.GGMLQuantizationType
    for name, shape, qtype in [("a.f32", (3, 5), T.F32), ("b.f16", (4, 8), T.F16), ("c.q8_0", (2, 64), T.Q8_0),
                               ("d.bf16", (2, 3, 4), T.BF16), ("e.vec", (7,), T.F32)]:
        x = (rng.normal(size=shape) * rng.uniform(0.1, 10)).astype(np.float32)
        if qtype == T.F32:
            data = x
        elif qtype == T.F16:
            data = x.astype(np.float16)
        else:
            data = gguf.quants.quantize(x, qtype)
        w.add_tensor(name, data, raw_dtype=qtype if qtype not in (T.F32, T.F16) else None)
        deq = gguf.quants.dequantize(data if qtype != T.F16 else data.view(np.uint8), qtype) \
            if qtype not in (T.F32, T.F16) else data.astype(np.float32)
        expect["tensors"][name] = {"shape": list(shape), "type": qtype.name,
                                   "values": [float(v) for v in np.asarray(deq, dtype=np.float32).ravel()]}
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(expect_path, "w") as f:
        json.dump(expect, f)


CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps in the sun.",
    "Once upon a time there was a little model that wanted to run in llama.cpp.",
    "Tokens, merges and tensors: a GGUF file holds them all, aligned to 32 bytes.",
    "It's 2024; they'll say we've converted 3 models, and 12 more are waiting!",
    "the cat sat on the mat and the dog sat on the log while the fox ran away.",
]


def train_tokenizer(vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


def greedy_with_margin(model, ids, n, eos):
    import torch
    seq = list(ids)
    gaps = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([seq])).logits[0, -1].double()
            top = torch.topk(logits, 2)
            gaps.append(float(top.values[0] - top.values[1]))
            seq.append(int(top.indices[0]))
    new = seq[len(ids):]
    return new, min(gaps), eos in new


def make_model(arch, out_dir, seed, prompt, n):
    import torch
    import transformers
    tok = train_tokenizer(320)
    eos = tok.token_to_id("<|endoftext|>")
    ids = tok.encode(prompt).ids
    for attempt in range(100):
        torch.manual_seed(seed + attempt)
        if arch == "gpt2":
            config = transformers.GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=64, n_layer=2,
                                             n_head=4, initializer_range=0.3, bos_token_id=eos, eos_token_id=eos)
            model = transformers.GPT2LMHeadModel(config)
            final_norm = model.transformer.ln_f
        else:
            # A few rows beyond the tokenizer's vocabulary, as real LLaMA checkpoints have.
            config = transformers.LlamaConfig(vocab_size=tok.get_vocab_size() + 4, hidden_size=64,
                                              intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                              num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
                                              rope_theta=10000.0, initializer_range=0.3, tie_word_embeddings=False,
                                              bos_token_id=eos, eos_token_id=eos)
            model = transformers.LlamaForCausalLM(config)
            final_norm = model.model.norm
        model.eval()
        with torch.no_grad():
            # Logits with an RMS of 30 make greedy choices clear of f16 rounding (about 1e-3 of the
            # logits' scale) without changing the blocks: only the final norm is scaled.
            rms = float(model(torch.tensor([ids])).logits.pow(2).mean().sqrt())
            final_norm.weight.mul_(30.0 / rms)
            if getattr(final_norm, "bias", None) is not None:
                final_norm.bias.mul_(30.0 / rms)
        new, gap, hit_eos = greedy_with_margin(model, ids, n, eos)
        if gap >= 1.0 and not hit_eos and max(new) < tok.get_vocab_size():
            break
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>",
                   "eos_token": "<|endoftext|>", "add_bos_token": False,
                   "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}, f)
    print(json.dumps({"prompt_ids": ids, "greedy_ids": new, "min_gap": gap, "attempts": attempt + 1,
                      "eos": eos}))


def field_value(field):
    value = field.contents()
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if isinstance(value, list) and len(value) > 64 and not isinstance(value[0], str):
        return {"length": len(value), "head": value[:8]}
    return value


def check(hf_dir, prompt, n, out_dir, ggufs):
    import gguf
    import llama_cpp
    import torch
    import transformers
    from tokenizers import Tokenizer
    def logits_of(directory):
        model = transformers.AutoModelForCausalLM.from_pretrained(directory, torch_dtype=torch.float32)
        model.eval()
        with torch.no_grad():
            return model, model(torch.tensor([ids])).logits[0].double().numpy()

    ids = Tokenizer.from_file(os.path.join(hf_dir, "tokenizer.json")).encode(prompt).ids
    model, hf_logits = logits_of(hf_dir)
    hf_greedy, hf_gap, _ = greedy_with_margin(model, ids, n, -1)
    result = {"hf_prompt_ids": ids, "hf_greedy": hf_greedy, "hf_min_gap": hf_gap,
              "hf_logit_rms": float(np.sqrt(np.mean(hf_logits ** 2))), "files": {}}
    for k, path in enumerate(ggufs):
        entry = {}
        # PATH@DIR: compare with transformers on DIR (e.g. the dequantised weights of a q8_0 file).
        path, _, reference_dir = path.partition("@")
        reference_logits = logits_of(reference_dir)[1] if reference_dir else hf_logits
        reader = gguf.GGUFReader(path)
        entry["tensors"] = [{"name": t.name, "shape": [int(d) for d in t.shape], "type": t.tensor_type.name}
                            for t in reader.tensors]
        entry["metadata"] = {name: field_value(field) for name, field in reader.fields.items()
                             if not name.startswith("GGUF.")}
        tensor_dir = os.path.join(out_dir, "tensors%d" % k)
        os.makedirs(tensor_dir, exist_ok=True)
        for t in reader.tensors:
            gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).tofile(
                os.path.join(tensor_dir, t.name + ".f32"))
        with llama_cpp_without_repacking():
            llm = llama_cpp.Llama(model_path=path, n_ctx=64, n_batch=64, logits_all=True, verbose=False,
                                  n_threads=2, type_k=0, type_v=0)  # an f32 KV cache: f16 would round keys and values
        entry["llama_prompt_ids"] = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=False)
        llm.eval(ids)
        logits = np.array(llm.scores[: llm.n_tokens], dtype=np.float64)
        entry["logit_max_abs_diff"] = float(np.max(np.abs(logits - reference_logits)))
        seq = []
        for _ in range(n):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            seq.append(nxt)
            llm.eval([nxt])
        entry["llama_greedy"] = seq
        entry["llama_detokenized"] = llm.detokenize(seq).decode("utf-8", "replace")
        del llm
        result["files"][path] = entry
    with open(os.path.join(out_dir, "check.json"), "w") as f:
        json.dump(result, f)


@contextlib.contextmanager
def llama_cpp_without_repacking():
    """llama.cpp's CPU backend repacks Q8_0/Q4_0 weights into interleaved layouts at load time;
    in llama-cpp-python 0.3.36 that path crashes (SIGSEGV in llama_decode) on the tests' tiny
    models, while the plain Q8_0 kernels read the same file correctly. The comparison is about the
    file and the model's numbers, not the repacked kernels: load with use_extra_bufts off where
    the binding has the field."""
    import llama_cpp.llama_cpp as binding

    default = binding.llama_model_default_params
    fields = [f[0] for f in binding.llama_model_params._fields_]
    if "use_extra_bufts" not in fields:
        yield
        return

    def without_repacking():
        params = default()
        params.use_extra_bufts = False
        return params

    binding.llama_model_default_params = without_repacking
    try:
        yield
    finally:
        binding.llama_model_default_params = default


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "q8":
        q8(sys.argv[2], sys.argv[3])
    elif mode == "write":
        write(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif mode == "make-model":
        make_model(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6]))
    elif mode == "check":
        check(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6:])
    else:
        sys.exit("unknown mode " + mode)
