"""transformers' side of tests/test_generate_viz.cpp: next-token distributions of a saved model
directory (tests/reference/generate_hf_reference.py's gpt2), from its own forward pass.
  show MODEL PROMPT PENALTY IDS_JSON   per generated step i: softmax (float64) of the logits for
                                       prompt + ids[:i] after RepetitionPenaltyLogitsProcessor(PENALTY)
  temps MODEL PROMPT TEMPS_JSON        softmax(logits / T) (float64) after the prompt, per T
Prints {"prompt_ids": [...], "probs": [[V floats] per step or temperature]}."""
import json
import os
import sys

import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import transformers  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor  # noqa: E402

mode, model_dir, prompt = sys.argv[1], sys.argv[2], sys.argv[3]
model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
ids = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json")).encode(prompt).ids


def logits_after(prefix):
    with torch.no_grad():
        return model(torch.tensor([prefix])).logits[0, -1].float()


out = {"prompt_ids": ids, "probs": []}
if mode == "show":
    penalty, generated = float(sys.argv[4]), json.loads(sys.argv[5])
    for i in range(len(generated)):
        prefix = ids + generated[:i]
        scores = logits_after(prefix)[None]
        if penalty != 1.0:
            scores = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([prefix]), scores)
        out["probs"].append(torch.softmax(scores[0].double(), -1).tolist())
elif mode == "temps":
    logits = logits_after(ids).double()
    for t in json.loads(sys.argv[4]):
        out["probs"].append(torch.softmax(logits / t, -1).tolist())
else:
    sys.exit(f"unknown mode {mode}")
print(json.dumps(out))
