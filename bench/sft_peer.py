"""bench/sft_memory.sh's peer and model maker.

  sft_peer.py make OUT_DIR            a random GPT-2 124M (GPT2Config() defaults, transformers' init) with a
                                      byte-level BPE tokenizer.json trained on the Python standard library's
                                      sources, and OUT_DIR/../sft.jsonl (Alpaca records of ~200 tokens)
  sft_peer.py run MODEL_DIR full|lora --batch B --seq T --steps N --threads K
                                      one fine-tuning run in PyTorch (+ PEFT for lora: r 8, alpha 16,
                                      target c_attn): AdamW on random ids (B, T) with labels; prints one
                                      JSON line: peak RSS, median step seconds, trainable parameters."""
import glob
import json
import os
import resource
import sys
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def make(out):
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    os.makedirs(out, exist_ok=True)
    texts, size = [], 0
    for path in sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "**", "*.py"), recursive=True)):
        with open(path, encoding="utf-8", errors="replace") as f:
            texts.append(f.read())
        size += len(texts[-1])
        if size > 5_000_000:
            break
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8192, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.save(os.path.join(out, "tokenizer.json"))
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    model.save_pretrained(out, safe_serialization=True)
    words = " ".join(texts[0].split())[:200000].split(" ")
    with open(os.path.join(os.path.dirname(out.rstrip("/")), "sft.jsonl"), "w") as f:
        for i in range(256):
            chunk = words[(i * 97) % (len(words) - 200):][:150]
            f.write(json.dumps({"instruction": "Continue the code.", "input": " ".join(chunk[:60]),
                                "output": " ".join(chunk[60:])}) + "\n")


def run(model_dir, mode, batch, seq, steps, threads):
    import torch
    import transformers
    torch.set_num_threads(threads)
    model = transformers.GPT2LMHeadModel.from_pretrained(model_dir)
    model.config.use_cache = False
    if mode == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["c_attn"],
                                                 fan_in_fan_out=True, task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 8192, (batch, seq), generator=g)
    labels = ids.clone()
    labels[:, : seq // 2] = -100
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    times = sorted(times[1:]) if len(times) > 1 else times
    print(json.dumps({"side": "pytorch", "mode": mode, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "step_seconds": times[len(times) // 2], "trainable": sum(p.numel() for p in params),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        a = sys.argv
        opts = {a[i][2:]: int(a[i + 1]) for i in range(4, len(a), 2)}
        run(a[2], a[3], opts["batch"], opts["seq"], opts["steps"], opts["threads"])
