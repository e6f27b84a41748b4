"""BERT masked-LM references: a random-initialised transformers BertForMaskedLM saved with
save_pretrained (plus a WordPiece tokenizer.json trained here by HF tokenizers) into
<out>/bert/model, and reference.safetensors with random ids, an attention mask with padding,
token types and MLM labels, and float64 logits, loss and the gradient of every parameter
("grad.<HF name>") computed by transformers on the same f32 weights.

Also a checker for the other direction: `bert_reference.py --logits MODEL_DIR INPUTS OUT` loads
a model directory written by kotoba with BertForMaskedLM.from_pretrained and writes its logits on
INPUTS (safetensors: ids, attention_mask, token_type_ids, i32 (B, T)) to OUT."""
import os
import random
import sys

import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
from safetensors.torch import load_file, save_file  # noqa: E402
import transformers  # noqa: E402
from tokenizers import BertWordPieceTokenizer, processors  # noqa: E402

WORDS = ("the of and to in is was for on that with as by at from his her it an are were which this be "
         "encoder masked token bidirectional attention wordpiece sentence").split()


def randomise(model, g):
    """transformers' init gives near-zero activations; spread every parameter so that the
    comparison exercises the whole network (norm weights around 1, biases non-zero)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                base = 1.0 if "LayerNorm" in name else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
            elif "embeddings" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / (p.shape[-1] ** 0.5))


def make(out_dir):
    seed = int(os.environ.get("KOTOBA_TEST_SEED") or random.SystemRandom().randrange(2**31))
    print(f"bert_reference: seed {seed} (rerun with KOTOBA_TEST_SEED={seed} to reproduce)")
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    d = os.path.join(out_dir, "bert")
    model_dir = os.path.join(d, "model")
    os.makedirs(model_dir, exist_ok=True)

    tok = BertWordPieceTokenizer(lowercase=True)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "." for _ in range(300)]
    tok.train_from_iterator(texts, vocab_size=120, min_frequency=2, show_progress=False)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    # 117 or 118 tokens depending on the seed (the trainer stops when no pair is frequent enough);
    # get_vocab_size() always equals kotoba's count (the highest id + 1: the ids have no gap).
    vocab = tok.get_vocab_size()

    config = transformers.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=24, type_vocab_size=2,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                     layer_norm_eps=1e-12, pad_token_id=0)
    model = transformers.BertForMaskedLM(config)
    randomise(model, g)
    model.save_pretrained(model_dir, safe_serialization=True)
    tok.save(os.path.join(model_dir, "tokenizer.json"))

    B, T = 3, 16
    ids = torch.randint(5, vocab, (B, T), generator=g)
    lengths = [T, T - 5, 6]
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        ids[b, 0] = 2  # [CLS]
        ids[b, n - 1] = 3  # [SEP]
        ids[b, n:] = 0  # [PAD]
    types = torch.randint(0, 2, (B, T), generator=g) * mask
    labels = torch.full((B, T), -100, dtype=torch.long)
    selected = (torch.rand(B, T, generator=g) < 0.3) & (mask == 1)
    selected[0, 1] = True
    labels[selected] = torch.randint(0, vocab, (B, T), generator=g)[selected]

    # float64 reference on the saved (f32) weights
    ref = transformers.BertForMaskedLM.from_pretrained(model_dir, torch_dtype=torch.float64, attn_implementation="eager")
    ref.eval()
    out = ref(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
    out.loss.backward()
    tensors = {"ids": ids.int(), "attention_mask": mask.int(), "token_type_ids": types.int(), "labels": labels.int(),
               "logits": out.logits.detach().contiguous(), "loss": out.loss.detach().reshape(1)}
    for name, p in ref.named_parameters():
        tensors["grad." + name] = p.grad.detach().contiguous()
    save_file(tensors, os.path.join(d, "reference.safetensors"))
    print(f"  bert: loss {out.loss.item():.5f}, logits rms {out.logits.pow(2).mean().sqrt().item():.3f}, "
          f"{len([k for k in tensors if k.startswith('grad.')])} gradients")


def logits_of(model_dir, inputs_path, out_path):
    inputs = load_file(inputs_path)
    model = transformers.BertForMaskedLM.from_pretrained(model_dir)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=inputs["ids"].long(), attention_mask=inputs["attention_mask"].long(),
                       token_type_ids=inputs["token_type_ids"].long()).logits.float()
    save_file({"logits": logits.contiguous()}, out_path)
    # The directory's tokenizer files open with AutoTokenizer as a BERT tokenizer too.
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    ids = tok("the encoder")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and tok.mask_token == "[MASK]", ids
    print(f"{model_dir}: loaded as {type(model).__name__}, logits {tuple(logits.shape)}; {type(tok).__name__}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--logits":
        logits_of(*sys.argv[2:])
    else:
        make(sys.argv[1])
