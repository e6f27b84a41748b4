"""PPO reference: TRL's PPOTrainer arithmetic written out in torch float64 on a random batch of
rollouts of different lengths — per-token KL (k1 and k3) and rewards with the score credited one
position past the last token, GAE, masked whitening, and the clipped policy and value losses with
their gradients with respect to the new log-probabilities and values.

TRL's masks: padding_mask is True after a rollout's last token (index length - 1);
padding_mask_p1 one position later. Log-probabilities at padding are TRL's INVALID_LOGPROB (1.0),
values at padding_mask_p1 are 0. Writes <out>/ppo/<case>/reference.safetensors (all float64 but
"lengths" i32) and config.json with the coefficients."""
import json
import os
import random
import sys

import torch
from safetensors.torch import save_file

INVALID_LOGPROB = 1.0


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum()


def masked_whiten(x, mask, shift_mean=True):
    mean = masked_mean(x, mask)
    centred = x - mean
    var = masked_mean(centred ** 2, mask)
    n = mask.sum()
    var = var * n / (n - 1)  # unbiased
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out


def case(rng, g, estimator, whiten_rewards):
    B, T = rng.randint(3, 6), rng.randint(6, 12)
    lengths = [rng.randint(1, T) for _ in range(B)]
    lengths[0] = T  # one rollout fills every position (no p1 position inside the window)
    idx = torch.arange(T).unsqueeze(0)
    seq_last = torch.tensor(lengths).unsqueeze(1) - 1
    padding_mask = idx > seq_last
    padding_mask_p1 = idx > seq_last + 1
    c = dict(kl_coef=rng.uniform(0.02, 0.2), gamma=rng.choice([1.0, 0.97]), lam=rng.uniform(0.8, 0.99),
             cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, estimator=estimator, whiten_rewards=whiten_rewards)

    def r(*shape, s=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * s

    logprobs = (-r(B, T).abs() - 0.1).masked_fill(padding_mask, INVALID_LOGPROB)
    ref_logprobs = (logprobs + r(B, T, s=0.3)).masked_fill(padding_mask, INVALID_LOGPROB)
    values = r(B, T).masked_fill(padding_mask_p1, 0.0)
    scores = r(B, s=2.0)

    logr = ref_logprobs - logprobs
    kl = -logr if estimator == "k1" else (logr.exp() - 1) - logr
    rewards = -c["kl_coef"] * kl
    rows = torch.arange(B)
    end = torch.where(seq_last[:, 0] + 1 < T, seq_last[:, 0] + 1, seq_last[:, 0])
    rewards[rows, end] += scores
    if whiten_rewards:
        rewards = masked_whiten(rewards, ~padding_mask_p1, shift_mean=False).masked_fill(padding_mask_p1, 0.0)

    last = 0.0
    adv_rev = []
    for t in reversed(range(T)):
        next_v = values[:, t + 1] if t < T - 1 else 0.0
        delta = rewards[:, t] + c["gamma"] * next_v - values[:, t]
        last = delta + c["gamma"] * c["lam"] * last
        adv_rev.append(last)
    advantages = torch.stack(adv_rev[::-1], dim=1)
    returns = advantages + values
    advantages = masked_whiten(advantages, ~padding_mask).masked_fill(padding_mask, 0.0)

    # One PPO minibatch step: new log-probabilities near the old ones, some far enough to clip.
    new_logprobs = logprobs + r(B, T, s=0.25)
    # Some ratio must clip whatever the draw: the token of largest advantage moves to ratio ~1.5
    # (clipped at 1.2, and for a positive advantage the clipped term is the larger one).
    best = torch.where(padding_mask, torch.full_like(advantages, -1e9), advantages).argmax()
    new_logprobs.view(-1)[best] = logprobs.view(-1)[best] + 0.4
    new_logprobs = new_logprobs.masked_fill(padding_mask, INVALID_LOGPROB).requires_grad_(True)
    vpred = (values + r(B, T, s=0.3)).masked_fill(padding_mask_p1, 0.0).requires_grad_(True)
    vclipped = torch.clamp(vpred, values - c["cliprange_value"], values + c["cliprange_value"])
    vf_losses = torch.max((vpred - returns) ** 2, (vclipped - returns) ** 2)
    vf_loss = 0.5 * masked_mean(vf_losses, ~padding_mask_p1)
    ratio = torch.exp(new_logprobs - logprobs)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1 - c["cliprange"], 1 + c["cliprange"])
    pg_loss = masked_mean(torch.max(pg1, pg2), ~padding_mask)
    loss = pg_loss + c["vf_coef"] * vf_loss
    loss.backward()
    clipfrac = masked_mean((pg2 > pg1).double(), ~padding_mask)

    tensors = dict(lengths=torch.tensor(lengths, dtype=torch.int32), logprobs=logprobs, ref_logprobs=ref_logprobs,
                   values=values, scores=scores, kl=kl.masked_fill(padding_mask, 0.0), rewards=rewards,
                   advantages=advantages, returns=returns, new_logprobs=new_logprobs.detach(),
                   new_values=vpred.detach(), loss=loss.detach().reshape(1), pg_loss=pg_loss.detach().reshape(1),
                   vf_loss=vf_loss.detach().reshape(1), pg_clipfrac=clipfrac.reshape(1),
                   grad_logprobs=new_logprobs.grad, grad_values=vpred.grad)
    return tensors, c


def main():
    out = os.path.join(sys.argv[1], "ppo")
    seed = int(os.environ.get("KOTOBA_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"ppo_reference: seed {seed} (set KOTOBA_TEST_SEED={seed} to reproduce)")
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    for name, estimator, whiten in [("k1", "k1", False), ("k3_whitened", "k3", True)]:
        tensors, c = case(rng, g, estimator, whiten)
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "reference.safetensors"))
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(c, f)


if __name__ == "__main__":
    main()
