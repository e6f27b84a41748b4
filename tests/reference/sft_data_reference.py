"""SFT tokenisation reference from HF `transformers` + `tokenizers`: random conversations rendered
with apply_chat_template (the Jinja sources of tests/chat_template_reference.py), encoded by HF, and
the assistant-reply token mask computed here on its own. Writes into <out>/sft_data/: two
byte-level BPE tokenizer.json files (GPT-2 style, and one whose post-processor adds <s> as Llama's
does) and cases.json, read by tests/test_instruct_data.cpp.

Mask rule (kotoba's, data/instruct_data.h): reply k spans the characters from the end of the
render of the messages before it with add_generation_prompt to the end of the render through it.
When encoding the text piece by piece at those boundaries gives the whole text's ids ("clean"), a
token is a target when its character offset (HF's offsets) starts inside a reply span; otherwise a
boundary sits at the token count of the encoding of the text before it."""
import json
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
try:
    import tokenizers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    from chat_template_reference import TEMPLATES
except ImportError as e:
    sys.exit(f"sft_data_reference.py: {e.name} is missing from {sys.executable} (install it with "
             f"`{sys.executable} -m pip install transformers==4.48.3 tokenizers`, as scripts/test does)")

SPECIALS = ["<|endoftext|>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
WORDS = ("the cat sat on a mat and dog ran far away home what is why how answer question summary document "
         "café naïve Straße 日本語 東京 こんにちは 🙂 🚀 λ π 3.14 42 2024 don't it's (x) [y] {z} # ### : ; ! ?").split()
GAPS = [" ", " ", " ", " ", ", ", ". ", "\n", "\n\n", "  ", "\t"]


def text(rng, trimmed):
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, 14))]
    body = "".join(w + rng.choice(GAPS) for w in words[:-1]) + words[-1]
    if not trimmed:
        body = rng.choice(["", "", " ", "\n", "\n\n", "  "]) + body + rng.choice(["", "", " ", "\n", "\n\n"])
    return body


def conversation(rng, style, trimmed, turns):
    messages = []
    if rng.random() < 0.4:
        messages.append({"role": "system", "content": text(rng, trimmed)})
    for _ in range(turns):
        user = {"role": "user", "content": text(rng, trimmed)}
        if rng.random() < 0.4:
            user["input"] = text(rng, trimmed)
        messages.append(user)
        messages.append({"role": "assistant", "content": text(rng, trimmed)})
    return messages


def for_template(messages, style):
    # kotoba folds a user message's input into its content for every template but alpaca.
    out = []
    for m in messages:
        m = dict(m)
        if style != "alpaca" and m.get("input"):
            m["content"] = m["content"] + "\n\n" + m.pop("input")
        out.append(m)
    return out


def make_tokenizer(rng, add_bos):
    corpus = ["".join(text(rng, False) + "\n" for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return tok


def reference_case(tok, fast, style, messages):
    jinja = TEMPLATES[style]
    render = lambda ms, gen: fast.apply_chat_template(ms, chat_template=jinja, tokenize=False, add_generation_prompt=gen)
    shown = for_template(messages, style)
    whole = render(shown, False)
    spans, cuts, cursor = [], [], 0
    for k, m in enumerate(shown):
        if m["role"] != "assistant":
            continue
        start, end = len(render(shown[:k], True)), len(render(shown[:k + 1], False))
        assert whole.startswith(render(shown[:k + 1], False)) and start >= cursor
        spans.append((start, end))
        cuts += [(cursor, start, False), (start, end, True)]
        cursor = end
    cuts.append((cursor, len(whole), False))
    encoding = tok.encode(whole, add_special_tokens=False)
    ids = encoding.ids
    pieces = [i for a, b, _ in cuts if b > a for i in tok.encode(whole[a:b], add_special_tokens=False).ids]
    clean = pieces == ids
    if clean:
        labels = [i if any(a <= start < b for a, b in spans) else -100 for i, (start, _) in zip(ids, encoding.offsets)]
    else:
        labels, token = [-100] * len(ids), 0
        for a, b, response in cuts:
            if b <= a:
                continue
            end = len(ids) if b == len(whole) else len(tok.encode(whole[:b], add_special_tokens=False).ids)
            end = min(max(end, token), len(ids))
            if response:
                labels[token:end] = ids[token:end]
            token = end
    bos = tok.token_to_id("<s>")
    if tok.post_processor is not None and ids[:1] != [bos]:  # the BOS once, never a target
        ids, labels = [bos] + ids, [-100] + labels
    return {"template": style, "messages": messages, "text": whole, "ids": ids, "labels": labels, "clean": clean}


def main():
    out_dir = os.path.join(sys.argv[1], "sft_data")
    os.makedirs(out_dir, exist_ok=True)
    seed = int(os.environ.get("KOTOBA_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"sft data reference: tokenizers {tokenizers.__version__}, seed {seed} (KOTOBA_TEST_SEED replays it)")
    rng = random.Random(seed)
    cases = []
    for name, add_bos in [("gpt2", False), ("bos", True)]:
        tok = make_tokenizer(rng, add_bos)
        tok.save(os.path.join(out_dir, f"{name}_tokenizer.json"))
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
        for style in TEMPLATES:
            for _ in range(40):
                trimmed = rng.random() < 0.5
                turns = 1 if (trimmed and rng.random() < 0.5) else rng.randint(1, 3)
                case = reference_case(tok, fast, style, conversation(rng, style, trimmed, turns))
                case.update(tokenizer=name, trimmed=trimmed)
                cases.append(case)
    with open(os.path.join(out_dir, "cases.json"), "w", encoding="utf-8") as f:
        json.dump({"seed": seed, "templates": TEMPLATES, "cases": cases}, f, ensure_ascii=False)
    print(f"sft data reference: {len(cases)} cases ({sum(c['clean'] for c in cases)} clean) -> {out_dir}")


if __name__ == "__main__":
    main()
