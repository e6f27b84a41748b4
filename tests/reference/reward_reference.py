"""Reward-model reference: the pairwise loss -log sigmoid(r_chosen - r_rejected) (mean over pairs),
the rewards and every parameter gradient, computed in float64 by transformers'
GPT2ForSequenceClassification and LlamaForSequenceClassification (GQA) with num_labels = 1.

For each case writes <out>/reward/<case>/ (the model directory, save_pretrained in float32, with
a tokenizer.json) and reference.safetensors: the pairs' chosen and rejected sequences of different
lengths flattened, "ids" (N) i32 and "lengths" (2P) i32 (the P chosen rows, then the P rejected
ones), the rewards transformers reads at the last non-padding token of the rows right-padded into
one batch ("rewards" (2P) f64), "loss" and "grad.<name>" (f64; GPT-2's Conv1D weights transposed
to kotoba's (out, in)).

`reward_reference.py --score MODEL_DIR IN.json OUT.json` loads MODEL_DIR with
AutoModelForSequenceClassification (float64) and writes the rewards of the id lists in IN.json
(right-padded with the config's pad_token_id): how a test checks that transformers reads a reward
model kotoba saved. `--peft-score BASE_DIR ADAPTER_DIR PAD IN.json OUT.json` does the same for a
PEFT SEQ_CLS adapter put on the causal-LM base."""
import json
import os
import random
import sys

import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors.torch import save_file  # noqa: E402
import transformers  # noqa: E402

from hf_models_reference import randomise, train_tokenizer  # noqa: E402

PAD = 0
CASES = {
    "gpt2": ("GPT2", dict(vocab_size=320, n_positions=64, n_embd=48, n_layer=2, n_head=4, num_labels=1,
                          pad_token_id=PAD, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
    "llama_gqa": ("Llama", dict(vocab_size=330, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64,
                                rms_norm_eps=1e-5, num_labels=1, pad_token_id=PAD)),
}


def score(model_dir, in_path, out_path):
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir, torch_dtype=torch.float64)
    model.eval()
    rows = json.load(open(in_path))
    pad = model.config.pad_token_id
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, :len(r)] = torch.tensor(r)
        mask[b, :len(r)] = 1
    with torch.no_grad():
        rewards = model(input_ids=ids, attention_mask=mask).logits[:, 0]
    json.dump({"architecture": type(model).__name__, "rewards": rewards.tolist()}, open(out_path, "w"))


def peft_score(base_dir, adapter_dir, pad, in_path, out_path):
    """Rewards of PEFT's SEQ_CLS adapter on the causal-LM base, loaded as transformers does it."""
    import peft
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=1, pad_token_id=int(pad), torch_dtype=torch.float64)
    model = peft.PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    rows = json.load(open(in_path))
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, :len(r)] = torch.tensor(r)
        mask[b, :len(r)] = 1
    with torch.no_grad():
        rewards = model(input_ids=ids, attention_mask=mask).logits[:, 0]
    json.dump({"rewards": rewards.tolist()}, open(out_path, "w"))


def main():
    if sys.argv[1] == "--score":
        return score(*sys.argv[2:5])
    if sys.argv[1] == "--peft-score":
        return peft_score(*sys.argv[2:7])
    out = os.path.join(sys.argv[1], "reward")
    seed = int(os.environ.get("KOTOBA_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"reward_reference: seed {seed} (set KOTOBA_TEST_SEED={seed} to reproduce)")
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    for case, (kind, kwargs) in CASES.items():
        config = getattr(transformers, kind + "Config")(**kwargs)
        config._attn_implementation = "eager"
        model = getattr(transformers, kind + "ForSequenceClassification")(config)
        randomise(model, g)
        d = os.path.join(out, case)
        model.save_pretrained(d, safe_serialization=True)
        train_tokenizer(rng, os.path.join(d, "tokenizer.json"))  # a model directory has one; unused here
        model = model.double()
        model.train()  # no dropout configured; train mode as in training

        V = config.vocab_size
        pairs = rng.randint(3, 5)
        rows = [[rng.randrange(1, V) for _ in range(rng.randint(2, 20))] for _ in range(2 * pairs)]
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), PAD, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, :len(r)] = torch.tensor(r)
            mask[b, :len(r)] = 1
        rewards = model(input_ids=ids, attention_mask=mask).logits[:, 0]
        loss = -torch.nn.functional.logsigmoid(rewards[:pairs] - rewards[pairs:]).mean()
        loss.backward()
        tensors = {
            "ids": torch.tensor([i for r in rows for i in r], dtype=torch.int32),
            "lengths": torch.tensor([len(r) for r in rows], dtype=torch.int32),
            "rewards": rewards.detach().clone(),
            "loss": loss.detach().reshape(1),
        }
        for name, p in model.named_parameters():
            grad = p.grad.t() if kind == "GPT2" and p.ndim == 2 and ".h." in name else p.grad  # Conv1D: kotoba's (out, in)
            tensors["grad." + name] = grad.detach().clone().contiguous()
        save_file(tensors, os.path.join(d, "reference.safetensors"))


if __name__ == "__main__":
    main()
