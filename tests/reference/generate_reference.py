"""Greedy decoding reference: a plain PyTorch GPT-2 (HF GPT2LMHeadModel's math) in float64 on
fresh random weights greedy-decodes from a random prompt, without and with HF's repetition
penalty. Writes the weights (kotoba/HF names, Linear layout (out, in)), the prompt, the expected
ids and the float64 logits of the whole decoded sequence for tests/test_generate.cpp."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt2_reference import gpt2_logits, random_gpt2_params  # noqa: E402
from ops_reference import write_safetensors  # noqa: E402

NEW_TOKENS = 20
MIN_MARGIN = 1e-3  # a greedy step whose top two logits are closer than this is redrawn


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
    V = cfg["vocab_size"]
    params = random_gpt2_params(cfg, g)
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
    write_safetensors(os.path.join(out_dir, "generate_golden.safetensors"), tensors, meta)


if __name__ == "__main__":
    main()
