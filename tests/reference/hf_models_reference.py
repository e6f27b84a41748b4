"""HF interop references: random-initialised GPT2LMHeadModel, LlamaForCausalLM (GQA, llama3 and
linear RoPE scaling, biases, explicit head_dim, tied and untied heads), MistralForCausalLM
(sliding window shorter than the sequence) and Qwen2ForCausalLM made by transformers and saved
with save_pretrained, each with a byte-level BPE tokenizer.json trained here by HF tokenizers.
For each, writes <out>/hf_models/<case>/ (the model directory) plus reference.safetensors
(random ids and transformers' f32 logits on them) and eval.jsonl + eval.json (the loss
`kotoba eval --seq 16` must report, computed by transformers with eval's windowing).

Also a checker for the other direction: `hf_models_reference.py --logits MODEL_DIR IDS OUT`
loads a model directory written by kotoba with transformers' from_pretrained and writes its
logits on IDS (safetensors, "ids" i32 (B, T)) to OUT."""
import json
import os
import random
import sys

import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
from safetensors.torch import load_file, save_file  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

WORDS = ("the of and to in is was for on that with as by at from his her it an are were which this be "
         "or has had not but first one their its new after who they have two she been other all when "
         "there also into more only time over most years some these would during where many may about "
         "between up out three such than so before part under both through while game later team "
         "city state year made used world second season called known school film however because "
         "kotoba tokenizer llama mistral qwen rotary window grouped query attention").split()


def sentence(rng):
    words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), str(rng.randint(0, 9999)))
    return " ".join(words).capitalize() + rng.choice([".", "!", "?", ","])


def train_tokenizer(rng, path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([sentence(rng) for _ in range(2000)], trainer)
    tok.save(path)
    return tok


def randomise(model, g):
    """transformers' init gives near-zero logits; spread every parameter so that the comparison
    exercises the whole network (norm weights around 1, biases non-zero)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                base = 1.0 if "norm" in name or "ln_" in name else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
            elif "embed" in name or "wte" in name or "wpe" in name:
                p.copy_(0.4 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / (p.shape[-1] ** 0.5) * 0.8)


CASES = {
    "gpt2": ("GPT2", dict(vocab_size=300, n_positions=64, n_embd=48, n_layer=2, n_head=4,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
    "llama_gqa_llama3": ("Llama", dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                       num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=128,
                                       rope_theta=500000.0, rms_norm_eps=1e-5,
                                       rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                     "high_freq_factor": 4.0,
                                                     "original_max_position_embeddings": 16})),
    "llama_linear_tied_bias": ("Llama", dict(vocab_size=300, hidden_size=48, intermediate_size=80,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                             head_dim=16, max_position_embeddings=64, tie_word_embeddings=True,
                                             attention_bias=True, mlp_bias=True,
                                             rope_scaling={"type": "linear", "factor": 2.0})),
    "mistral_window": ("Mistral", dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                       sliding_window=7)),
    # saved in bfloat16 and sharded into several files, as large checkpoints are
    "llama_bf16_sharded": ("Llama", dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64)),
    "qwen2": ("Qwen2", dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                            tie_word_embeddings=True, rope_theta=1000000.0)),
}


def build(kind, kwargs, g):
    config = getattr(transformers, kind + "Config")(**kwargs)
    config._attn_implementation = "eager"  # the plain masked softmax: the clearest reference
    model = getattr(transformers, kind + "LMHeadModel" if kind == "GPT2" else kind + "ForCausalLM")(config)
    randomise(model, g)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def eval_loss(model, tok, texts, T):
    """cmd_eval's windowing: documents + EOS concatenated, windows of T+1 stepping by T, the
    short tail as one more window; the mean over every predicted token."""
    eos = tok.token_to_id("<|endoftext|>")
    ids = []
    for t in texts:
        ids += tok.encode(t).ids + [eos]
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, T):
            n = min(T, len(ids) - 1 - start)
            x = torch.tensor([ids[start:start + n]])
            y = torch.tensor(ids[start + 1:start + 1 + n])
            logits = model(x).logits[0].double()
            total += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
            count += n
    return total / count, count


def make(out_dir):
    seed = int(os.environ.get("KOTOBA_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"hf_models_reference: seed {seed} (set KOTOBA_TEST_SEED={seed} to reproduce); "
          f"transformers {transformers.__version__}")
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    root = os.path.join(out_dir, "hf_models")
    os.makedirs(root, exist_ok=True)
    tok = train_tokenizer(rng, os.path.join(root, "tokenizer.json"))
    for case, (kind, kwargs) in CASES.items():
        d = os.path.join(root, case)
        model = build(kind, kwargs, g)
        if case.endswith("bf16_sharded"):
            # the reference computes in f32 from the bf16-rounded weights the files hold; buffers
            # (the rotary frequencies) are not weights and keep their f32 values
            buffers = {name: b.clone() for name, b in model.named_buffers()}
            model = model.to(torch.bfloat16)
            model.save_pretrained(d, safe_serialization=True, max_shard_size="60KB")
            model = model.float()
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        else:
            model.save_pretrained(d, safe_serialization=True)
        tok.save(os.path.join(d, "tokenizer.json"))
        B, T = 2, 40
        ids = torch.randint(0, tok.get_vocab_size(), (B, T), generator=g)
        targets = torch.randint(0, tok.get_vocab_size(), (B, T), generator=g)
        targets[0, :3] = -100  # ignored positions
        logits = model(ids).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(B * T, -1), targets.reshape(-1), ignore_index=-100)
        loss.backward()
        tensors = {"ids": ids.to(torch.int32), "targets": targets.to(torch.int32),
                   "logits": logits.detach().float().contiguous(), "loss": loss.detach().reshape(1)}
        for name, p in model.named_parameters():  # kotoba's layouts: GPT-2's Conv1D transposed
            grad = p.grad.t() if kind == "GPT2" and p.ndim == 2 and ".h." in name else p.grad
            tensors["grad." + name] = grad.contiguous()
        save_file(tensors, os.path.join(d, "reference.safetensors"))
        texts = [sentence(rng) + " " + sentence(rng) for _ in range(6)]
        with open(os.path.join(d, "eval.jsonl"), "w") as f:
            for t in texts:
                f.write(json.dumps({"text": t}) + "\n")
        loss, count = eval_loss(model, tok, texts, 16)
        with open(os.path.join(d, "eval.json"), "w") as f:
            json.dump({"seq": 16, "loss": loss, "tokens": count}, f)
        print(f"  {case}: logits rms {logits.pow(2).mean().sqrt().item():.3f}, eval loss {loss:.5f} on {count} tokens")


def logits_of(model_dir, ids_path, out_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    ids = load_file(ids_path)["ids"].long()
    with torch.no_grad():
        logits = model(ids).logits.float()
    save_file({"logits": logits.contiguous()}, out_path)
    print(f"{model_dir}: loaded as {type(model).__name__}, logits {tuple(logits.shape)}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--logits":
        logits_of(*sys.argv[2:])
    else:
        make(sys.argv[1])
