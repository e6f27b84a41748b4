"""LoRA references from PEFT: small random GPT2LMHeadModel and LlamaForCausalLM (GQA) saved with
save_pretrained, each with PEFT LoRA adapters whose lora_A and lora_B are random (non-zero, so
the adapter changes the output), saved with PEFT's save_pretrained. For each case writes
<out>/lora/<case>/{base,adapter}/ and reference.safetensors: random ids and targets, the base
model's and the adapted model's logits, the loss and its gradient with respect to every
lora_A/lora_B (float64, named by the adapter file's keys), plus case.json with PEFT's
trainable-parameter line. <out>/lora/gpt2_124m.json holds PEFT's line for GPT-2 124M, r=8, c_attn.

Also a checker for the other direction: `lora_reference.py --peft-logits BASE_DIR ADAPTER_DIR
IDS OUT` loads BASE_DIR with transformers and ADAPTER_DIR with PeftModel.from_pretrained and
writes its float64 logits on IDS (safetensors, "ids" i32 (B, T)) to OUT."""
import contextlib
import io
import json
import os
import random
import sys

import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import warnings  # noqa: E402

warnings.filterwarnings("ignore")
from safetensors.torch import load_file, save_file  # noqa: E402
import transformers  # noqa: E402
import peft  # noqa: E402
from hf_models_reference import randomise, train_tokenizer  # noqa: E402

GPT2 = ("GPT2", dict(vocab_size=300, n_positions=64, n_embd=48, n_layer=2, n_head=4,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
LLAMA = ("Llama", dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=128))
LLAMA_TIED = ("Llama", dict(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                            tie_word_embeddings=True, attention_bias=True))

CASES = {
    "gpt2_c_attn": (GPT2, dict(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.05)),
    # "c_proj" matches attn.c_proj and mlp.c_proj: every Conv1D of the blocks
    "gpt2_conv1d_all": (GPT2, dict(r=6, lora_alpha=12, target_modules=["c_attn", "c_proj", "c_fc"])),
    "llama_regex": (LLAMA, dict(r=8, lora_alpha=16, target_modules=r".*\.(q_proj|v_proj)", use_rslora=True)),
    "llama_all_linear": (LLAMA_TIED, dict(r=4, lora_alpha=8, target_modules="all-linear")),
}


def build(kind, kwargs):
    config = getattr(transformers, kind + "Config")(**kwargs)
    config._attn_implementation = "eager"
    model = getattr(transformers, kind + "LMHeadModel" if kind == "GPT2" else kind + "ForCausalLM")(config)
    return model


def trainable_line(model):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        model.print_trainable_parameters()
    return buf.getvalue().strip()


def make(out_dir):
    seed = int(os.environ.get("KOTOBA_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"lora_reference: seed {seed} (set KOTOBA_TEST_SEED={seed} to reproduce); peft {peft.__version__}")
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    root = os.path.join(out_dir, "lora")
    os.makedirs(root, exist_ok=True)
    tok_path = os.path.join(root, "tokenizer.json")
    tok = train_tokenizer(rng, tok_path)
    for case, ((kind, kwargs), lora_kwargs) in CASES.items():
        d = os.path.join(root, case)
        model = build(kind, kwargs)
        randomise(model, g)
        if model.config.tie_word_embeddings:
            model.tie_weights()
        model.save_pretrained(os.path.join(d, "base"), safe_serialization=True)
        tok.save(os.path.join(d, "base", "tokenizer.json"))
        pm = peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM", **lora_kwargs))
        line = trainable_line(pm)
        with torch.no_grad():  # random adapters: lora_B is zero at PEFT's initialisation
            for name, p in pm.named_parameters():
                if "lora_" in name:
                    spread = 1.0 if "lora_A" in name else 0.3
                    p.copy_(spread * torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
        pm.save_pretrained(os.path.join(d, "adapter"))
        # the reference: the saved f32 weights computed in float64, dropout off
        pm = pm.double().eval()
        B, T = 2, 24
        ids = torch.randint(0, tok.get_vocab_size(), (B, T), generator=g)
        targets = torch.randint(0, tok.get_vocab_size(), (B, T), generator=g)
        logits = pm(ids).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(B * T, -1), targets.reshape(-1))
        loss.backward()
        with torch.no_grad(), pm.disable_adapter():
            base_logits = pm(ids).logits
        tensors = {"ids": ids.to(torch.int32), "targets": targets.to(torch.int32),
                   "logits": logits.detach().contiguous(), "base_logits": base_logits.contiguous(),
                   "loss": loss.detach().reshape(1)}
        lora_names = []
        for name, p in pm.named_parameters():
            if "lora_" in name:
                key = name.replace(".default.", ".")  # the adapter file's key
                tensors["grad." + key] = p.grad.contiguous()
                lora_names.append(key)
            else:
                assert p.grad is None and not p.requires_grad, name  # PEFT freezes the base
        save_file(tensors, os.path.join(d, "reference.safetensors"))
        with open(os.path.join(d, "case.json"), "w") as f:
            json.dump({"trainable": line, "lora_keys": lora_names, "lora": {k: v for k, v in lora_kwargs.items()}}, f)
        print(f"  {case}: {line}; logits rms {logits.pow(2).mean().sqrt().item():.3f}, "
              f"adapter changes them by up to {(logits - base_logits).abs().max().item():.3f}")
    big = peft.get_peft_model(transformers.GPT2LMHeadModel(transformers.GPT2Config()),
                              peft.LoraConfig(task_type="CAUSAL_LM", r=8, target_modules=["c_attn"]))
    line = trainable_line(big)
    with open(os.path.join(root, "gpt2_124m.json"), "w") as f:
        json.dump({"trainable": line}, f)
    print(f"  gpt2 124M, r=8, c_attn: {line}")


def peft_logits(base_dir, adapter_dir, ids_path, out_path):
    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager")
    model = peft.PeftModel.from_pretrained(base, adapter_dir).double().eval()
    ids = load_file(ids_path)["ids"].long()
    with torch.no_grad():
        logits = model(ids).logits
    save_file({"logits": logits.contiguous()}, out_path)
    print(f"{adapter_dir}: loaded by PEFT onto {type(base).__name__}, logits {tuple(logits.shape)}")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--peft-logits":
        peft_logits(*sys.argv[2:])
    else:
        make(sys.argv[1])
