"""GPT-2 golden state: a plain PyTorch GPT-2 (same math as HF's GPT2LMHeadModel: learned
positions, pre-LayerNorm, tanh GELU, tied LM head) in float64 on fresh random weights and
tokens. Writes weights (kotoba/HF names, Linear layout (out, in)), ids, targets, the loss and
every parameter's gradient to one safetensors file that tests/test_gpt2.cpp checks.
The same model in bf16 mixed precision under torch.autocast (f32 weights, bf16 matrix
products, cross-entropy on the bf16 logits in f32) gives a second file: how close PyTorch's
own mixed precision comes to the float64 answer, the bar kotoba's is held to."""
import math
import os
import sys

import torch
import torch.nn.functional as F

from ops_reference import write_safetensors


def gpt2_logits(p, ids, cfg):
    B, T = ids.shape
    C, H, L = cfg["n_embd"], cfg["n_head"], cfg["n_layer"]
    x = p["transformer.wte.weight"][ids] + p["transformer.wpe.weight"][:T]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(L):
        pre = f"transformer.h.{i}."
        h = F.layer_norm(x, (C,), p[pre + "ln_1.weight"], p[pre + "ln_1.bias"], cfg["eps"])
        qkv = F.linear(h, p[pre + "attn.c_attn.weight"], p[pre + "attn.c_attn.bias"])
        q, k, v = qkv.split(C, dim=2)
        q, k, v = (z.view(B, T, H, C // H).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // H)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + F.linear(y, p[pre + "attn.c_proj.weight"], p[pre + "attn.c_proj.bias"])
        h = F.layer_norm(x, (C,), p[pre + "ln_2.weight"], p[pre + "ln_2.bias"], cfg["eps"])
        h = F.gelu(F.linear(h, p[pre + "mlp.c_fc.weight"], p[pre + "mlp.c_fc.bias"]), approximate="tanh")
        x = x + F.linear(h, p[pre + "mlp.c_proj.weight"], p[pre + "mlp.c_proj.bias"])
    x = F.layer_norm(x, (C,), p["transformer.ln_f.weight"], p["transformer.ln_f.bias"], cfg["eps"])
    return x @ p["transformer.wte.weight"].T


def gpt2_loss(p, ids, targets, cfg):
    logits = gpt2_logits(p, ids, cfg)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def random_gpt2_params(cfg, g):
    """Fresh random GPT-2 weights by HF name (Linear layout (out, in)), float64 holding values
    exactly representable in f32, so that both sides start from identical weights."""
    C, V, L = cfg["n_embd"], cfg["vocab_size"], cfg["n_layer"]
    shapes = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (cfg["n_positions"], C)}
    for i in range(L):
        pre = f"transformer.h.{i}."
        shapes.update({
            pre + "ln_1.weight": (C,), pre + "ln_1.bias": (C,),
            pre + "attn.c_attn.weight": (3 * C, C), pre + "attn.c_attn.bias": (3 * C,),
            pre + "attn.c_proj.weight": (C, C), pre + "attn.c_proj.bias": (C,),
            pre + "ln_2.weight": (C,), pre + "ln_2.bias": (C,),
            pre + "mlp.c_fc.weight": (4 * C, C), pre + "mlp.c_fc.bias": (4 * C,),
            pre + "mlp.c_proj.weight": (C, 4 * C), pre + "mlp.c_proj.bias": (C,),
        })
    shapes.update({"transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,)})
    params = {}
    for name, shape in shapes.items():
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            t = 0.2 * torch.randn(shape, generator=g)
        params[name] = t.float().double()
    return params


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    seed = int(os.environ.get("KOTOBA_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"gpt2_reference: seed {seed} (set KOTOBA_TEST_SEED={seed} to reproduce)")
    g = torch.Generator().manual_seed(seed)
    cfg = {"vocab_size": 97, "n_positions": 40, "n_embd": 48, "n_layer": 3, "n_head": 4, "eps": 1e-5}
    V = cfg["vocab_size"]
    params = {name: t.requires_grad_(True) for name, t in random_gpt2_params(cfg, g).items()}
    B, T = 3, 37
    ids = torch.randint(0, V, (B, T), generator=g, dtype=torch.int64)
    targets = torch.randint(0, V, (B, T), generator=g, dtype=torch.int64)
    targets[0, :5] = -100  # some positions are ignored
    loss = gpt2_loss(params, ids, targets, cfg)
    loss.backward()
    tensors = {"ids": ids.int(), "targets": targets.int(), "loss": loss.detach().reshape(1)}
    for name, t in params.items():
        tensors["param." + name] = t.detach()
        tensors["grad." + name] = t.grad
    meta = {k: str(v) for k, v in cfg.items()}
    meta["seed"] = str(seed)
    write_safetensors(os.path.join(out_dir, "gpt2_golden.safetensors"), tensors, meta)

    amp_params = {name: t.detach().float().requires_grad_(True) for name, t in params.items()}
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        logits = gpt2_logits(amp_params, ids, cfg)
    assert logits.dtype == torch.bfloat16, f"autocast left the logits in {logits.dtype}"
    amp_loss = F.cross_entropy(logits.float().reshape(-1, V), targets.reshape(-1), ignore_index=-100)
    amp_loss.backward()
    amp = {"loss": amp_loss.detach().double().reshape(1)}
    for name, t in amp_params.items():
        amp["grad." + name] = t.grad.double()
    write_safetensors(os.path.join(out_dir, "gpt2_autocast.safetensors"), amp, meta)


if __name__ == "__main__":
    main()
