"""Makes bench/decode.sh's model: a LLaMA-architecture LlamaForCausalLM with random weights
(transformers' own init), 12 layers x 768, 12 heads, 4 KV heads (GQA), MLP 2048, context 2048,
and a byte-level BPE tokenizer.json trained by HF tokenizers on the Python standard library's
sources (text every machine with Python has; vocabulary 32000), saved with save_pretrained as f32 safetensors. ~120 M parameters.
usage: decode_model.py OUT_DIR"""
import glob
import os
import sys

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import transformers  # noqa: E402

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
texts, size = [], 0
for path in sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "**", "*.py"), recursive=True)):
    with open(path, encoding="utf-8", errors="replace") as f:
        texts.append(f.read())
    size += len(texts[-1])
    if size > 20_000_000:
        break
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=32000, special_tokens=["<|endoftext|>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
tok.train_from_iterator(texts, trainer)
tok.save(os.path.join(out, "tokenizer.json"))
vocab = tok.get_vocab_size()
assert vocab == 32000, f"the tokenizer reached only {vocab} tokens"

torch.manual_seed(0)
config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                                  num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=2048,
                                  rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
model = transformers.LlamaForCausalLM(config).eval()
model.save_pretrained(out, safe_serialization=True)
print(f"{out}: vocab {vocab}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters", file=sys.stderr)
