"""GRPO reference: TRL's GRPO loss (the clipped per-token surrogate with group-relative advantages
and the k3 KL estimate) for each loss_type (grpo, bnpo, dr_grpo, dapo), and every parameter
gradient, computed in float64 by transformers models from the definitions in TRL's GRPOTrainer
documentation and the GRPO/DAPO/Dr. GRPO papers (written here, not TRL's code).

For each case writes <out>/grpo/<case>/ with policy/ and reference/ model directories (float32
weights, different) and reference.safetensors: B = groups x G completions, each a prompt (labels
-100) and a completion (labels = ids): "ids", "labels" (N) i32 flattened, "lengths" (B) i32;
"rewards" (B) and "advantages" (B) f64 ((r - group mean) / (group std + 1e-4), unbiased std);
"ref_logps" and "old_logps" (B, T-1) f64 per next-token position (the old ones: the policy's,
perturbed, so that ratios leave the clip range); per variant V: "V.loss", "V.kl", "V.clip_ratio"
and "V.grad.<name>". Variants (name: loss_type, beta, epsilon_low, epsilon_high, old logps used):

  ratio = exp(logp - old); per-token loss = -min(ratio A, clamp(ratio, 1 - el, 1 + eh) A)
          + beta (exp(ref - logp) - (ref - logp) - 1)
  grpo: mean over sequences of each sequence's token mean; bnpo and dapo (one micro-batch): token
  mean over the batch; dr_grpo: token sum / (B * max_completion_length)."""
import os
import random
import sys

import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors.torch import save_file  # noqa: E402

from dpo_reference import CASES, make_model  # noqa: E402
from hf_models_reference import train_tokenizer  # noqa: E402

MAX_COMPLETION_LENGTH = 16
VARIANTS = {
    "grpo": ("grpo", 0.04, 0.2, 0.2, True),
    "bnpo": ("bnpo", 0.0, 0.2, 0.2, True),
    "dr_grpo": ("dr_grpo", 0.04, 0.2, 0.28, True),
    "dapo": ("dapo", 0.0, 0.2, 0.28, True),
    "fresh": ("grpo", 0.04, 0.2, 0.2, False),  # num_iterations 1: old = the policy itself, detached
}


def token_logps(model, examples):
    T = max(len(ids) for ids, _ in examples)
    input_ids = torch.zeros((len(examples), T), dtype=torch.long)
    attention = torch.zeros((len(examples), T), dtype=torch.long)
    labels = torch.full((len(examples), T), -100, dtype=torch.long)
    for b, (ids, lab) in enumerate(examples):
        input_ids[b, :len(ids)] = torch.tensor(ids)
        attention[b, :len(ids)] = 1
        labels[b, :len(ids)] = torch.tensor(lab)
    logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1]
    targets = labels[:, 1:]
    mask = targets != -100
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


def grpo_loss(logp, old, ref, mask, adv, loss_type, beta, el, eh):
    ratio = torch.exp(logp - old)
    clipped = torch.clamp(ratio, 1 - el, 1 + eh)
    a = adv.unsqueeze(1)
    per_token = -torch.min(ratio * a, clipped * a)
    kl = torch.exp(ref - logp) - (ref - logp) - 1
    if beta != 0:
        per_token = per_token + beta * kl
    m = mask.double()
    if loss_type == "grpo":
        loss = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()
    elif loss_type in ("bnpo", "dapo"):
        loss = (per_token * m).sum() / m.sum().clamp(min=1)
    else:
        loss = (per_token * m).sum() / (per_token.shape[0] * MAX_COMPLETION_LENGTH)
    is_clipped = (ratio * a > clipped * a) & mask
    return loss, (kl * m).sum() / m.sum(), is_clipped.double().sum() / m.sum()


def main():
    out = os.path.join(sys.argv[1], "grpo")
    seed = int(os.environ.get("KOTOBA_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"grpo_reference: seed {seed} (set KOTOBA_TEST_SEED={seed} to reproduce)")
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    for case, (kind, kwargs) in CASES.items():
        d = os.path.join(out, case)
        models = {}
        for role in ("policy", "reference"):
            model = make_model(kind, kwargs, g)
            model.save_pretrained(os.path.join(d, role), safe_serialization=True)
            train_tokenizer(rng, os.path.join(d, role, "tokenizer.json"))
            models[role] = model.double().eval()
        V = kwargs["vocab_size"]
        groups, G = 2, 3
        examples, rewards = [], []
        for _ in range(groups):
            prompt = [rng.randrange(V) for _ in range(rng.randint(1, 8))]
            for _ in range(G):
                completion = [rng.randrange(V) for _ in range(rng.randint(1, MAX_COMPLETION_LENGTH))]
                examples.append((prompt + completion, [-100] * len(prompt) + completion))
                rewards.append(float(rng.choice([0.0, 0.5, 1.0])))
        r = torch.tensor(rewards, dtype=torch.float64).view(groups, G)
        adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).view(-1)
        with torch.no_grad():
            ref, mask = token_logps(models["reference"], examples)
            base, _ = token_logps(models["policy"], examples)
        old = (base + 0.3 * torch.randn(base.shape, generator=g, dtype=torch.float64)) * mask
        tensors = {
            "ids": torch.tensor([i for ids, _ in examples for i in ids], dtype=torch.int32),
            "labels": torch.tensor([x for _, lab in examples for x in lab], dtype=torch.int32),
            "lengths": torch.tensor([len(ids) for ids, _ in examples], dtype=torch.int32),
            "rewards": r.view(-1).clone(),
            "advantages": adv.clone(),
            "ref_logps": ref.clone().contiguous(),
            "old_logps": old.clone().contiguous(),
        }
        policy = models["policy"]
        for name, (loss_type, beta, el, eh, use_old) in VARIANTS.items():
            policy.zero_grad()
            logp, mask = token_logps(policy, examples)
            loss, kl, clip_ratio = grpo_loss(logp, old if use_old else logp.detach(), ref, mask, adv, loss_type, beta,
                                             el, eh)
            loss.backward()
            tensors[f"{name}.loss"] = loss.detach().reshape(1)
            tensors[f"{name}.kl"] = kl.detach().reshape(1)
            tensors[f"{name}.clip_ratio"] = clip_ratio.detach().reshape(1)
            seen = set()
            for pname, p in policy.named_parameters():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                grad = p.grad.t() if kind == "GPT2" and p.ndim == 2 and ".h." in pname else p.grad  # Conv1D
                tensors[f"{name}.grad.{pname}"] = grad.detach().clone().contiguous()
        save_file(tensors, os.path.join(d, "reference.safetensors"))


if __name__ == "__main__":
    main()
