"""Greedy decoding reference: a plain PyTorch GPT-2 (HF GPT2LMHeadModel's math) in float64 on
fresh random weights greedy-decodes from a random prompt, without and with HF's repetition
penalty. Writes the weights (kotoba/HF names, Linear layout (out, in)), the prompt, the expected
ids and the float64 logits of the whole decoded sequence for tests/test_generate.cpp."""
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt2_reference import save_safetensors  # noqa: E402

NEW_TOKENS = 20
MIN_MARGIN = 1e-3  # a greedy step whose top two logits are closer than this is redrawn


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


def repetition_penalty(scores, context, penalty):
    # HF RepetitionPenaltyLogitsProcessor: gather the context's scores, penalise, scatter back.
    score = torch.gather(scores, 0, context)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return scores.scatter(0, context, score)


def greedy(p, prompt, cfg, penalty):
    """Returns the new ids, or None when a step's top-two margin is below MIN_MARGIN."""
    ids = prompt.clone()
    for _ in range(NEW_TOKENS):
        scores = gpt2_logits(p, ids[None], cfg)[0, -1]
        if penalty != 1.0:
            scores = repetition_penalty(scores, ids, penalty)
        top2 = scores.topk(2).values
        if top2[0] - top2[1] < MIN_MARGIN:
            return None
        ids = torch.cat([ids, scores.argmax().reshape(1)])
    return ids[len(prompt):]


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    seed = int(os.environ.get("KOTOBA_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"generate_reference: seed {seed} (set KOTOBA_TEST_SEED={seed} to reproduce)")
    g = torch.Generator().manual_seed(seed)
    cfg = {"vocab_size": 97, "n_positions": 64, "n_embd": 48, "n_layer": 3, "n_head": 4, "eps": 1e-5}
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
        # Values exactly representable in f32, so both sides start from identical weights.
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            t = 0.2 * torch.randn(shape, generator=g)
        params[name] = t.float().double()
    penalty = 1.3
    with torch.no_grad():
        for attempt in range(100):
            prompt = torch.randint(0, V, (7,), generator=g, dtype=torch.int64)
            plain = greedy(params, prompt, cfg, 1.0)
            penalised = greedy(params, prompt, cfg, penalty)
            if plain is not None and penalised is not None:
                break
        else:
            raise SystemExit("generate_reference: no prompt with clear greedy margins in 100 draws")
        logits = gpt2_logits(params, torch.cat([prompt, plain])[None], cfg)[0]
    tensors = {"prompt": prompt.int(), "greedy": plain.int(), "greedy_penalty": penalised.int(), "logits": logits}
    for name, t in params.items():
        tensors["param." + name] = t
    meta = {k: str(v) for k, v in cfg.items()}
    meta.update(seed=str(seed), repetition_penalty=str(penalty), attempts=str(attempt + 1))
    save_safetensors(os.path.join(out_dir, "generate_golden.safetensors"), tensors, meta)


if __name__ == "__main__":
    main()
