"""The Python side of tests/test_safetensors.cpp: numpy/torch/safetensors/transformers answer
for dtype conversions and sharded checkpoints, on inputs drawn fresh by the C++ test or here.

usage: safetensors_reference.py f16 IN_U32 OUT_DIR        round f32 bit patterns, both ways
       safetensors_reference.py dtypes SEED OUT_DIR       files of F16/BF16/F64 tensors + f32 twins
       safetensors_reference.py check-from-f32 DIR        kotoba's from_f32 output vs torch's casts
       safetensors_reference.py hf-sharded SEED ARCH DIR  save_pretrained(max_shard_size=...) + reference
       safetensors_reference.py check-kotoba-sharded DIR  from_pretrained/load_file of kotoba's shards
Exits non-zero with a message on any mismatch.
"""
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def fail(message):
    print("safetensors_reference.py: " + message, file=sys.stderr)
    sys.exit(1)


def f16_tables(in_path, out_dir):
    # f32 -> f16 -> bits by numpy and by torch, for the C++ inputs; and every f16 pattern -> f32.
    bits = np.fromfile(in_path, dtype=np.uint32)
    values = bits.view(np.float32)
    with np.errstate(all="ignore"):
        np.asarray(values.astype(np.float16).view(np.uint16)).tofile(os.path.join(out_dir, "numpy_f16.bin"))
    torch.from_numpy(values.copy()).half().view(torch.int16).numpy().tofile(os.path.join(out_dir, "torch_f16.bin"))
    torch.from_numpy(values.copy()).bfloat16().view(torch.int16).numpy().tofile(os.path.join(out_dir, "torch_bf16.bin"))
    every_half = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    every_half.astype(np.float32).view(np.uint32).tofile(os.path.join(out_dir, "numpy_f16_to_f32.bin"))


def dtype_files(seed, out_dir):
    # Random tensors in each floating dtype as torch rounds them, with exact f32 twins.
    gen = torch.Generator().manual_seed(seed)
    base = {
        "normal": torch.randn(5, 7, generator=gen, dtype=torch.float64),
        "wide": torch.randn(64, generator=gen, dtype=torch.float64) * torch.exp(torch.randn(64, generator=gen) * 12),
        "edges": torch.tensor([0.0, -0.0, 65504.0, 65519.0, 65520.0, 1e6, -1e6, 2.0**-24, 2.0**-25, 3 * 2.0**-26,
                               6e-8, 1e-30, float("inf"), -float("inf"), 3.5e38, -3.5e38, 1e39], dtype=torch.float64),
    }
    tensors, twins = {}, {}
    for name, value in base.items():
        tensors[name + ".f64"] = value
        twins[name + ".f64"] = value.float()
        tensors[name + ".f16"] = value.half()
        twins[name + ".f16"] = value.half().float()
        tensors[name + ".bf16"] = value.bfloat16()
        twins[name + ".bf16"] = value.bfloat16().float()
    # A transposed view: saved contiguous by safetensors, as a checkpoint would be.
    tensors["transposed.f16"] = base["normal"].t().contiguous().half()
    twins["transposed.f16"] = tensors["transposed.f16"].float()
    save_file(tensors, os.path.join(out_dir, "dtypes.safetensors"), metadata={"format": "pt"})
    save_file(twins, os.path.join(out_dir, "twins.safetensors"))


def check_from_f32(directory):
    # kotoba wrote f32 inputs and its own f16/bf16/f64 versions; torch casts the inputs itself.
    inputs = load_file(os.path.join(directory, "inputs.safetensors"))
    converted = load_file(os.path.join(directory, "converted.safetensors"))
    for name, x in inputs.items():
        for suffix, dtype in ((".f16", torch.float16), (".bf16", torch.bfloat16), (".f64", torch.float64)):
            got = converted[name + suffix]
            want = x.to(dtype)
            if got.dtype != dtype or got.shape != want.shape:
                fail(f"{name}{suffix}: dtype/shape {got.dtype} {tuple(got.shape)}, expected {dtype} {tuple(want.shape)}")
            same = (got == want) | (torch.isnan(got) & torch.isnan(want))
            if not bool(same.all()):
                i = int((~same).nonzero()[0][0])
                fail(f"{name}{suffix}: element {i}: kotoba {got.flatten()[i].item()!r}, torch "
                     f"{want.flatten()[i].item()!r} (input {x.flatten()[i].item()!r})")


def tiny_model(arch, seed):
    torch.manual_seed(seed)
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=96, n_positions=32, n_embd=32, n_layer=2, n_head=4))
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2,
                                            max_position_embeddings=64, tie_word_embeddings=False))
    fail("unknown architecture " + arch)


def hf_sharded(seed, arch, directory):
    # The checkpoint transformers shards, plus one unsharded file of what it should hold.
    model = tiny_model(arch, seed)
    if arch == "llama":
        model = model.to(torch.bfloat16)  # bf16 shards, as LLaMA checkpoints ship
    model.save_pretrained(os.path.join(directory, "hf"), max_shard_size="20KB")
    if not os.path.exists(os.path.join(directory, "hf", "model.safetensors.index.json")):
        fail("save_pretrained did not shard; lower max_shard_size")
    index = json.load(open(os.path.join(directory, "hf", "model.safetensors.index.json")))
    state = model.state_dict()
    expected = {name: state[name].contiguous() for name in index["weight_map"]}
    save_file(expected, os.path.join(directory, "expected.safetensors"))


def check_kotoba_sharded(directory):
    # kotoba wrote shards + index into DIR/model (with the config of DIR/model/config.json) and the
    # same tensors unsharded into DIR/expected.safetensors.
    from transformers import AutoModelForCausalLM
    model_dir = os.path.join(directory, "model")
    expected = load_file(os.path.join(directory, "expected.safetensors"))
    index = json.load(open(os.path.join(model_dir, "model.safetensors.index.json")))
    shards = sorted(set(index["weight_map"].values()))
    count = len(shards)
    want_names = [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    if shards != want_names:
        fail(f"shard names {shards}, expected {want_names}")
    loaded = {}
    for shard in shards:
        for name, tensor in load_file(os.path.join(model_dir, shard)).items():
            if name in loaded:
                fail(f"{name} is in two shards")
            if index["weight_map"].get(name) != shard:
                fail(f"{name} is in {shard} but the index says {index['weight_map'].get(name)}")
            loaded[name] = tensor
    if set(loaded) != set(expected):
        fail(f"shards hold {sorted(set(loaded) ^ set(expected))} unlike expected")
    total = sum(t.numel() * t.element_size() for t in expected.values())
    if index["metadata"]["total_size"] != total:
        fail(f"total_size {index['metadata']['total_size']}, expected {total}")
    for name, tensor in expected.items():
        if loaded[name].dtype != tensor.dtype or not torch.equal(loaded[name], tensor):
            fail(f"load_file: {name} differs from what kotoba meant to write")
    dtype = next(iter(expected.values())).dtype
    model, info = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=dtype, output_loading_info=True)
    if info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]:
        fail(f"from_pretrained: {info}")
    state = model.state_dict()
    for name, tensor in expected.items():
        if state[name].dtype != tensor.dtype or not torch.equal(state[name], tensor):
            fail(f"from_pretrained: {name} differs from what kotoba wrote")


def main():
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "f16" and len(sys.argv) == 4:
        f16_tables(sys.argv[2], sys.argv[3])
    elif command == "dtypes" and len(sys.argv) == 4:
        dtype_files(int(sys.argv[2]), sys.argv[3])
    elif command == "check-from-f32" and len(sys.argv) == 3:
        check_from_f32(sys.argv[2])
    elif command == "hf-sharded" and len(sys.argv) == 5:
        hf_sharded(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    elif command == "check-kotoba-sharded" and len(sys.argv) == 3:
        check_kotoba_sharded(sys.argv[2])
    else:
        fail("bad arguments; see the docstring")


if __name__ == "__main__":
    main()
