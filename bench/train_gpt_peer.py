"""The PyTorch eager peer of bench_train_gpt: the same GPT-2 (nanoGPT-style: learned positions,
pre-LN, causal attention, tanh GELU, tied head, GPT-2 init), AdamW, shapes, tokens and steps.

    python train_gpt_peer.py CONFIG.json [--steps N] [--warmup N] [--adamw default|foreach|fused]

Last line: one JSON object (tokens_per_s, peak_rss_mb, torch_version, ...)."""
import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HAS_SDPA = hasattr(F, "scaled_dot_product_attention")  # torch >= 2.0


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def read_config(path):
    with open(path) as f:
        try:
            cfg = json.load(f)
        except json.JSONDecodeError as e:
            sys.exit(f"train_gpt_peer: {path}: not valid JSON: {e}")
    for key, want in (("arch", "gpt2"), ("optimizer", "adamw"), ("dtype", "f32")):
        if cfg.get(key) != want:
            sys.exit(f"train_gpt_peer: {path}: key '{key}' must be \"{want}\", got {cfg.get(key)!r}")
    for key in ("n_layer", "n_head", "n_embd", "block", "vocab", "batch", "threads"):
        if not isinstance(cfg.get(key), int) or cfg[key] <= 0:
            sys.exit(f"train_gpt_peer: {path}: key '{key}' must be a positive integer, got {cfg.get(key)!r}")
    return cfg


class Attention(nn.Module):
    def __init__(self, C, H, T):
        super().__init__()
        self.c_attn = nn.Linear(C, 3 * C)
        self.c_proj = nn.Linear(C, C)
        self.n_head = H
        if not HAS_SDPA:
            self.register_buffer("mask", torch.ones(T, T, dtype=torch.bool).tril(), persistent=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (z.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for z in (q, k, v))
        if HAS_SDPA:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(~self.mask[:T, :T], float("-inf")).softmax(dim=-1)
            y = att @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.c_fc = nn.Linear(C, 4 * C)
        self.c_proj = nn.Linear(4 * C, C)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, C, H, T):
        super().__init__()
        self.ln_1 = nn.LayerNorm(C)
        self.attn = Attention(C, H, T)
        self.ln_2 = nn.LayerNorm(C)
        self.mlp = MLP(C)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, V, T, L, H, C):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(T, C)
        self.h = nn.ModuleList(Block(C, H, T) for _ in range(L))
        self.ln_f = nn.LayerNorm(C)
        self.lm_head = nn.Linear(C, V, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        # GPT-2 init: N(0, 0.02), zero biases, residual projections scaled by 1/sqrt(2 L).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * L))
            elif p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02)
            elif "ln_" in name and name.endswith("weight"):
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)
        self.register_buffer("pos", torch.arange(T), persistent=False)

    def forward(self, ids, targets):
        B, T = ids.shape
        x = self.wte(ids) + self.wpe(self.pos[:T])
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(B * T, -1), targets.view(-1), ignore_index=-100)


MASK64 = (1 << 64) - 1


def mix64(x):  # core/rng.h's SplitMix64 finaliser
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def tokens(seed, B, T, V):  # the same ids as bench_train_gpt's fill_tokens
    base = seed * 1000003
    return torch.tensor([mix64(base + i) % V for i in range(B * T)], dtype=torch.long).view(B, T)


def adamw_kind(opt, params):
    """What torch.optim.AdamW runs by default here: 'fused', 'foreach' or 'for-loop'."""
    g = opt.param_groups[0]
    if g.get("fused"):
        return "fused"
    if g.get("foreach") is not None:
        return "foreach" if g["foreach"] else "for-loop"
    try:
        from torch.optim.optimizer import _default_to_fused_or_foreach

        fused, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
        return "fused" if fused else ("foreach" if foreach else "for-loop")
    except Exception:
        return "for-loop"  # torch 1.13 defaults to the per-parameter loop


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--adamw", choices=("default", "foreach", "fused"), default="default")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (the GPU comparison)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on the GPU (as KOTOBA_CUDA_TF32=1)")
    ap.add_argument("--precision", choices=("f32", "bf16"), default="f32",
                    help="bf16: torch.autocast to bfloat16 around the forward, f32 weights (as kotoba's --precision)")
    args = ap.parse_args()
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = read_config(args.config)
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(1337)
    rss_start = peak_rss_mb()

    V, T, L, H, C, B = cfg["vocab"], cfg["block"], cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["batch"]
    model = GPT(V, T, L, H, C).train().to(args.device)
    run_model = torch.compile(model) if args.compile else model
    params = list(model.parameters())  # the tied weight once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    extra = {"foreach": True} if args.adamw == "foreach" else {"fused": True} if args.adamw == "fused" else {}
    opt = torch.optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.999), eps=1e-8, **extra)

    n_params = sum(p.numel() for p in params)
    flops_per_token = 6.0 * (n_params - model.wpe.weight.numel()) + 12.0 * L * C * T  # as bench_train_gpt

    step_s, fwd_s, bwd_s, opt_s, losses = [], [], [], [], []
    for s in range(args.warmup + args.steps):
        ids, targets = tokens(2 * s + 1, B, T, V), tokens(2 * s + 2, B, T, V)
        t0 = time.perf_counter()
        ids, targets = ids.to(args.device), targets.to(args.device)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = run_model(ids, targets)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())  # on a GPU this waits for the step to finish
        t3 = time.perf_counter()
        if s >= args.warmup:
            step_s.append(t3 - t0)
            fwd_s.append(t1 - t0)
            bwd_s.append(t2 - t1)
            opt_s.append(t3 - t2)
    for i, (a, f, b, o) in enumerate(zip(step_s, fwd_s, bwd_s, opt_s)):
        print(f"step {i}: {1e3 * a:.1f} ms (forward {1e3 * f:.1f}, backward {1e3 * b:.1f}, clip+adamw {1e3 * o:.1f})")

    step = statistics.median(step_s)
    tps = B * T / step
    print(json.dumps({
        "bench": "train_gpt", "impl": "torch" + (".compile" if args.compile else ""), "device": args.device,
        "precision": args.precision,
        "torch_version": torch.__version__,
        "attention": "sdpa" if HAS_SDPA else "explicit softmax", "adamw": adamw_kind(opt, params),
        "threads": torch.get_num_threads(), "params": n_params, "flops_per_token": flops_per_token,
        "warmup": args.warmup, "steps": args.steps, "step_ms_median": 1e3 * step, "step_ms_min": 1e3 * min(step_s),
        "forward_ms": 1e3 * statistics.median(fwd_s), "backward_ms": 1e3 * statistics.median(bwd_s),
        "optimizer_ms": 1e3 * statistics.median(opt_s), "tokens_per_s": tps, "gflops": tps * flops_per_token * 1e-9,
        "peak_rss_mb": peak_rss_mb(), "start_rss_mb": rss_start, "loss_first": losses[0], "loss_last": losses[-1],
    }))


if __name__ == "__main__":
    main()
