"""SFT reference: the fine-tuning loss with prompt tokens masked, and every parameter gradient,
computed by transformers on random-initialised GPT2LMHeadModel and LlamaForCausalLM (GQA).

For each case writes <out>/sft/<case>/ (the model directory, save_pretrained) and
reference.safetensors: a batch of examples of different lengths, each a prompt (label -100) and
a response (label = id) — "ids" and "labels" (N) i32 flattened, "lengths" (E) i32 — and
transformers' loss on them right-padded into one batch with an attention mask and labels (HF
shifts the labels itself: the token at t is predicted from the tokens before it), with
"grad.<name>" for every parameter. kotoba must give the same loss for the padded batch and for
the examples packed into rows (no attention across examples, positions restarting)."""
import os
import random
import sys

import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors.torch import save_file  # noqa: E402
import transformers  # noqa: E402

from hf_models_reference import randomise, train_tokenizer  # noqa: E402

CASES = {
    "gpt2": ("GPT2", dict(vocab_size=320, n_positions=64, n_embd=48, n_layer=2, n_head=4,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
    "llama_gqa": ("Llama", dict(vocab_size=330, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64,
                                rms_norm_eps=1e-5)),
}


def main():
    out = os.path.join(sys.argv[1], "sft")
    seed = int(os.environ.get("KOTOBA_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"sft_reference: seed {seed} (set KOTOBA_TEST_SEED={seed} to reproduce)")
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    for case, (kind, kwargs) in CASES.items():
        config = getattr(transformers, kind + "Config")(**kwargs)
        config._attn_implementation = "eager"
        model = getattr(transformers, kind + "LMHeadModel" if kind == "GPT2" else kind + "ForCausalLM")(config)
        randomise(model, g)
        if config.tie_word_embeddings:
            model.tie_weights()
        model.train()  # no dropout configured; train mode as in fine-tuning
        d = os.path.join(out, case)
        model.save_pretrained(d, safe_serialization=True)
        train_tokenizer(rng, os.path.join(d, "tokenizer.json"))  # a model directory has one; unused here

        V = config.vocab_size
        examples = []
        for _ in range(rng.randint(5, 8)):
            n_prompt, n_response = rng.randint(1, 12), rng.randint(2, 12)
            ids = [rng.randrange(V) for _ in range(n_prompt + n_response)]
            labels = [-100] * n_prompt + ids[n_prompt:]
            if rng.random() < 0.3:  # a multi-turn example: a second prompt span inside the response
                cut = rng.randint(n_prompt + 1, len(ids) - 1)
                labels[cut:cut + 2] = [-100] * len(labels[cut:cut + 2])
            examples.append((ids, labels))
        T = max(len(ids) for ids, _ in examples)
        input_ids = torch.zeros((len(examples), T), dtype=torch.long)
        attention = torch.zeros((len(examples), T), dtype=torch.long)
        labels = torch.full((len(examples), T), -100, dtype=torch.long)
        for b, (ids, lab) in enumerate(examples):
            input_ids[b, :len(ids)] = torch.tensor(ids)
            attention[b, :len(ids)] = 1
            labels[b, :len(ids)] = torch.tensor(lab)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        tensors = {
            "ids": torch.tensor([i for ids, _ in examples for i in ids], dtype=torch.int32),
            "labels": torch.tensor([x for _, lab in examples for x in lab], dtype=torch.int32),
            "lengths": torch.tensor([len(ids) for ids, _ in examples], dtype=torch.int32),
            "loss": loss.detach().reshape(1).double(),
        }
        seen = set()
        for name, p in model.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            grad = p.grad.t() if kind == "GPT2" and p.ndim == 2 and ".h." in name else p.grad  # Conv1D: kotoba's (out, in)
            tensors["grad." + name] = grad.detach().clone().contiguous()
        save_file(tensors, os.path.join(d, "reference.safetensors"))


if __name__ == "__main__":
    main()
