"""DPO reference: TRL's DPO losses (sigmoid with and without label smoothing, ipo, hinge), their
rewards/* metrics and every parameter gradient, computed in float64 by transformers models from
the definitions in TRL's documentation and the DPO/IPO/SLiC papers (written here, not TRL's code).

For each case writes <out>/dpo/<case>/ with policy/ and reference/ (model directories,
save_pretrained, float32 weights; the two have different weights) and reference.safetensors:
P pairs sharing a prompt per pair (labels -100) with a chosen and a rejected reply (labels =
ids), as 2P examples, the P chosen first: "ids", "labels" (N) i32 flattened, "lengths" (2P) i32;
"policy_logps" and "reference_logps" (2P) f64, the summed log-probabilities of the replies'
tokens; per variant V: "V.loss", "V.rewards_chosen", "V.rewards_rejected", "V.accuracy",
"V.margin" (scalars) and "V.grad.<name>" for every policy parameter. Variants are listed in
"variants" below (name: loss_type, beta, label_smoothing).

  h = (pi_c - pi_r) - (ref_c - ref_r)
  sigmoid: -(1 - ls) log sigmoid(beta h) - ls log sigmoid(-beta h)
  ipo:     (h - 1/(2 beta))^2, with every log-probability averaged over its reply's tokens
  hinge:   relu(1 - beta h)
  loss = mean over pairs (+ rpo_alpha * the chosen replies' NLL per token: TRL's rpo_alpha); rewards = beta (pi - ref), accuracy = mean(chosen > rejected),
  margin = mean(chosen - rejected) (with IPO's per-token averages, as TRL computes them)."""
import os
import random
import sys

import torch
import torch.nn.functional as F

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors.torch import save_file  # noqa: E402
import transformers  # noqa: E402

from hf_models_reference import randomise, train_tokenizer  # noqa: E402

CASES = {
    "gpt2": ("GPT2", dict(vocab_size=320, n_positions=64, n_embd=48, n_layer=2, n_head=4,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
    "llama": ("Llama", dict(vocab_size=330, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64,
                            rms_norm_eps=1e-5)),
}

VARIANTS = {
    "sigmoid": ("sigmoid", 0.1, 0.0),
    "robust": ("sigmoid", 0.3, 0.1),
    "ipo": ("ipo", 0.5, 0.0),
    "hinge": ("hinge", 0.1, 0.0),
    "rpo": ("sigmoid", 0.1, 0.0, 0.5),  # rpo_alpha 0.5: + 0.5 * the chosen replies' NLL per token
}


def make_model(kind, kwargs, g):
    config = getattr(transformers, kind + "Config")(**kwargs)
    config._attn_implementation = "eager"
    model = getattr(transformers, kind + "LMHeadModel" if kind == "GPT2" else kind + "ForCausalLM")(config)
    randomise(model, g)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model


def reply_logps(model, examples):
    """Summed log-probabilities of the labelled tokens of each example, and their counts."""
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
    return (logp * mask).sum(-1), mask.sum(-1)


def dpo(policy, reference, counts, loss_type, beta, ls, rpo_alpha=0.0):
    P = policy.shape[0] // 2
    nll = -policy[:P].sum() / counts[:P].sum()
    if loss_type == "ipo":
        policy, reference = policy / counts, reference / counts
    pc, pr, rc, rr = policy[:P], policy[P:], reference[:P], reference[P:]
    h = (pc - pr) - (rc - rr)
    if loss_type == "sigmoid":
        losses = -(1 - ls) * F.logsigmoid(beta * h) - ls * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = torch.relu(1 - beta * h)
    chosen, rejected = beta * (pc - rc).detach(), beta * (pr - rr).detach()
    return losses.mean() + rpo_alpha * nll, chosen.mean(), rejected.mean(), (chosen > rejected).double().mean(), (chosen - rejected).mean()


def main():
    out = os.path.join(sys.argv[1], "dpo")
    seed = int(os.environ.get("KOTOBA_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"dpo_reference: seed {seed} (set KOTOBA_TEST_SEED={seed} to reproduce)")
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    for case, (kind, kwargs) in CASES.items():
        d = os.path.join(out, case)
        models = {}
        for role in ("policy", "reference"):
            model = make_model(kind, kwargs, g)
            model.save_pretrained(os.path.join(d, role), safe_serialization=True)
            train_tokenizer(rng, os.path.join(d, role, "tokenizer.json"))  # a model directory has one; unused
            models[role] = model.double().eval()

        V = kwargs["vocab_size"]
        P = rng.randint(3, 5)
        chosen, rejected = [], []
        for _ in range(P):
            prompt = [rng.randrange(V) for _ in range(rng.randint(1, 10))]
            for replies in (chosen, rejected):
                reply = [rng.randrange(V) for _ in range(rng.randint(1, 10))]
                replies.append((prompt + reply, [-100] * len(prompt) + reply))
        examples = chosen + rejected
        with torch.no_grad():
            ref, counts = reply_logps(models["reference"], examples)
        tensors = {
            "ids": torch.tensor([i for ids, _ in examples for i in ids], dtype=torch.int32),
            "labels": torch.tensor([x for _, lab in examples for x in lab], dtype=torch.int32),
            "lengths": torch.tensor([len(ids) for ids, _ in examples], dtype=torch.int32),
            "reference_logps": ref.detach().clone(),
        }
        policy = models["policy"]
        for name, (loss_type, beta, ls, *rpo) in VARIANTS.items():
            policy.zero_grad()
            logps, counts = reply_logps(policy, examples)
            tensors["policy_logps"] = logps.detach().clone()
            loss, rc, rr, acc, margin = dpo(logps, ref, counts.double(), loss_type, beta, ls, *rpo)
            loss.backward()
            for key, value in (("loss", loss), ("rewards_chosen", rc), ("rewards_rejected", rr), ("accuracy", acc),
                               ("margin", margin)):
                tensors[f"{name}.{key}"] = value.detach().reshape(1).double()
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
