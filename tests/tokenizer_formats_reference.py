"""Helper of tests/test_tokenizer_formats.cpp (not a ctest fixture). Two modes:
  tokenizer_formats_reference.py OUT_DIR SEED
    trains, with HF `tokenizers` and `sentencepiece`, small tokenizers in every style kotoba reads
    (GPT-2 byte-level BPE with and without prefix space, Llama 3, Qwen2, Llama 2's SentencePiece-style
    BPE with byte fallback, two Metaspace variants, SentencePiece BPE and unigram .model files, and
    a transformers Llama model directory with tokenizer_config.json) on a generated multilingual
    corpus, draws held-out texts from SEED, and writes OUT_DIR/formats.json: per tokenizer its file
    and the reference's ids (with and without special tokens) and decodes of each text.
  tokenizer_formats_reference.py --encode JOBS_JSON OUT_JSON
    JOBS_JSON: [{"file": tokenizer.json, "texts": [...]}]; writes the same per-job results from HF."""
import json
import os
import random
import sys

try:
    import sentencepiece as spm
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
except ImportError as e:
    sys.exit(f"tokenizer_formats_reference.py: {e.name} is missing from {sys.executable} (install it with "
             f"`{sys.executable} -m pip install tokenizers sentencepiece`, as scripts/test does)")

LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
          r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
         r"\s*[\r\n]+|\s+(?!\S)|\s+")

WORDS = {
    "en": "the quick brown fox jumps over lazy dog it's don't we'll they've I'm you'd HELLO World".split(),
    "latin": "café naïve façade Ærøskøbing Zürich señor São crème brûlée Łódź".split(),
    "cyrillic": "привет мир как дела Москва язык программирования".split(),
    "greek": "γειά σου κόσμε Αθήνα λόγος φιλοσοφία".split(),
    "arabic": "مرحبا بالعالم كيف حالك اللغة العربية".split(),
    "cjk": "東京 天気 中文 汉字 今日は 良い 日本語".split(),
    "kana": "ひらがな カタカナ こんにちは ありがとう".split(),
    "korean": "안녕하세요 세계 한국어 감사합니다".split(),
    "emoji": ["🙂", "🚀", "👩‍💻", "👨‍👩‍👧‍👦", "🇯🇵", "❤️", "👍🏽"],
    "digits": ["42", "2024", "3.14159", "1234567", "0x1F", "١٢٣"],
    "code": ["def f(x):\n\treturn x + 1\n", "if (a &&  b) {\n    c();\n}", "x  =   [1, 2,\t3]", "/* ok */\r\n"],
}
# Characters no training text has: byte fallback and unk must fire on them.
RARE = "ሀሁሂ ᎠᎡᎢ ∮∯∰ 𝔘𝔫𝔦 ꙮ ⲁⲃⲅ ᚠᚢᚦ 𐌰𐌱 ﷺ"


def sentence(rng, kinds, n):
    out = []
    for _ in range(n):
        w = rng.choice(WORDS[rng.choice(kinds)])
        out.append(w)
        out.append(rng.choice([" ", " ", " ", "  ", "\n", ", ", ". ", "\t", " \n\n"]))
    return "".join(out)


def corpus(rng):
    kinds = [k for k in WORDS if k != "code"]
    lines = [sentence(rng, kinds, rng.randint(3, 12)) for _ in range(3000)]
    lines += [rng.choice(WORDS["code"]) for _ in range(300)]
    return lines


def held_out(rng, specials):
    texts = []
    kinds = list(WORDS)
    for i in range(14):
        t = sentence(rng, kinds, rng.randint(5, 40))
        if i % 2 == 0:
            pos = rng.randint(0, len(t))
            t = t[:pos] + rng.choice(specials) + t[pos:]
        if i % 3 == 0:
            t += " " + "".join(rng.choice(RARE) for _ in range(rng.randint(1, 6)))
        if i % 4 == 1:
            t = rng.choice(specials) + " " + t + rng.choice(specials)
        texts.append(t)
    # Random code points from the Basic Multilingual Plane (no surrogates).
    texts.append("".join(chr(c) for c in (rng.randrange(0x20, 0xD800) for _ in range(80))))
    texts += ["", " ", "  leading spaces", "trailing  \n", "e\u0301 vs é, Å vs Å", "DON'T 'S 'ſ x'LL",
              "\r\n\r\n tabs\t\t\tand   runs   \n", RARE, "1234567890 123 +1-2", " ".join(specials)]
    return texts


def hf_results(tok, texts):
    out = []
    for t in texts:
        ids = tok.encode(t, add_special_tokens=False).ids
        out.append({"ids": ids, "ids_special": tok.encode(t, add_special_tokens=True).ids,
                    "decoded": tok.decode(ids, skip_special_tokens=False)})
    return out


def bpe_train(lines, pre, vocab_size, specials, byte_level=True, **model_args):
    tok = Tokenizer(models.BPE(**model_args))
    tok.pre_tokenizer = pre
    # Byte-level models get all 256 bytes; the others only the 120 most frequent characters, so
    # that byte fallback and unk have work to do.
    extra = {"initial_alphabet": pre_tokenizers.ByteLevel.alphabet()} if byte_level else {"limit_alphabet": 120}
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False, **extra)
    tok.train_from_iterator(lines, trainer)
    return tok


def with_byte_tokens(tok, first_specials):
    """Llama 2's layout: the specials, then <0x00>..<0xFF>, then the learned tokens, all in model.vocab."""
    doc = json.loads(tok.to_str())
    old = doc["model"]["vocab"]
    order = first_specials + [f"<0x{b:02X}>" for b in range(256)]
    order += [t for t, _ in sorted(old.items(), key=lambda kv: kv[1]) if t not in first_specials]
    doc["model"]["vocab"] = {t: i for i, t in enumerate(order)}
    for a in doc["added_tokens"]:
        a["id"] = doc["model"]["vocab"][a["content"]]
    return doc


def add_tokens(doc, extra):
    """Appends added tokens (content, special, lstrip, rstrip, normalized, single_word)."""
    n = len(doc["model"]["vocab"]) + len([a for a in doc["added_tokens"] if a["content"] not in doc["model"]["vocab"]])
    for content, special, lstrip, rstrip, normalized, single_word in extra:
        doc["added_tokens"].append({"id": n, "content": content, "single_word": single_word, "lstrip": lstrip,
                                    "rstrip": rstrip, "normalized": normalized, "special": special})
        n += 1
    return doc


def template(bos, bos_id):
    return json.loads(processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1",
                                                    special_tokens=[(bos, bos_id)]).__getstate__())


def build(out, seed):
    rng = random.Random(seed)
    lines = corpus(rng)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "corpus.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    specials = ["<|endoftext|>", "<s>", "</s>", "<|im_start|>", "<tool>"]
    texts = held_out(rng, specials)
    result = {"seed": seed, "texts": texts, "tokenizers": {}}

    def finish(name, doc):
        path = os.path.join(out, name + ".json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False)
        tok = Tokenizer.from_file(path)
        result["tokenizers"][name] = {"file": path, "results": hf_results(tok, texts)}

    # GPT-2: ByteLevel, with and without the prefix space; an lstrip/rstrip added token.
    for name, prefix in (("gpt2", False), ("gpt2_prefix_space", True)):
        tok = bpe_train(lines, pre_tokenizers.ByteLevel(add_prefix_space=prefix), 900, ["<|endoftext|>"])
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        doc = add_tokens(json.loads(tok.to_str()), [("<tool>", True, True, True, False, False),
                                                    ("</s>", True, False, False, False, False),
                                                    ("hello world", False, False, False, True, False)])
        finish(name, doc)

    # Llama 3: Split(regex) + ByteLevel(use_regex=false), ignore_merges, BOS template.
    tok = bpe_train(lines, pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), 1000,
        ["<|begin_of_text|>", "<|end_of_text|>"])
    tok.decoder = decoders.ByteLevel()
    doc = json.loads(tok.to_str())
    doc["model"]["ignore_merges"] = True
    doc["post_processor"] = {"type": "Sequence", "processors": [
        json.loads(processors.ByteLevel(trim_offsets=False).__getstate__()), template("<|begin_of_text|>", 0)]}
    finish("llama3", add_tokens(doc, [("<s>", True, False, False, False, False),
                                      ("<|endoftext|>", True, False, False, False, False),
                                      ("<tool>", True, False, False, False, False)]))

    # Qwen2: NFC + Split(regex, single digits) + ByteLevel; a normalized added token.
    tok = bpe_train(lines, pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), 1000, ["<|endoftext|>"])
    tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    finish("qwen2", add_tokens(json.loads(tok.to_str()), [("<|im_start|>", True, False, False, False, False),
                                                           ("<s>", True, False, False, False, False),
                                                           ("café", False, False, False, True, False),
                                                           ("<tool>", True, False, False, False, False)]))

    # Llama 2: BPE with byte fallback, Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer, BOS template.
    sp_specials = ["<unk>", "<s>", "</s>"]
    tok = bpe_train(lines, pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"), 800, sp_specials,
                    byte_level=False, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    doc = with_byte_tokens(tok, sp_specials)
    doc["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                             {"type": "Replace", "pattern": {"String": " "},
                                                              "content": "▁"}]}
    doc["pre_tokenizer"] = None
    sp_decoder = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
        {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    doc["decoder"] = sp_decoder
    doc["post_processor"] = template("<s>", 1)
    llama2 = add_tokens(doc, [("<tool>", True, False, False, False, False),
                              ("<|endoftext|>", True, True, False, False, False),
                              ("<|im_start|>", False, False, False, False, False)])
    finish("llama2", llama2)

    # Metaspace (Mistral-style): prepend_scheme "first", no split, byte fallback.
    doc = json.loads(json.dumps(llama2))
    doc["normalizer"] = None
    doc["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    finish("metaspace_first", doc)

    # Metaspace "always" with split and its own decoder; no byte fallback, so unk fires (fused).
    tok = bpe_train(lines, pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True), 700,
                    sp_specials, byte_level=False, unk_token="<unk>", byte_fallback=False, fuse_unk=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    doc = add_tokens(json.loads(tok.to_str()), [("<tool>", True, False, False, False, False),
                                                ("<|endoftext|>", True, False, True, False, False)])
    doc["post_processor"] = template("<s>", 1)
    finish("metaspace_always", doc)

    # SentencePiece models (BPE and unigram) with byte fallback and a user-defined symbol.
    for kind in ("bpe", "unigram"):
        prefix = os.path.join(out, f"sp_{kind}")
        spm.SentencePieceTrainer.train(input=os.path.join(out, "corpus.txt"), model_prefix=prefix, model_type=kind,
                                       vocab_size=480, hard_vocab_limit=False, byte_fallback=True, character_coverage=0.98,
                                       user_defined_symbols=["<tool>"], minloglevel=2, num_threads=2)
        sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
        res = []
        for t in texts:
            ids = sp.encode(t)
            res.append({"ids": ids, "ids_special": [sp.bos_id()] + ids, "decoded": sp.decode(ids)})
        result["tokenizers"][f"sp_{kind}"] = {"file": prefix + ".model", "results": res}

    # A transformers model directory: LlamaTokenizerFast with add_bos_token and add_eos_token, saved
    # with its tokenizer_config.json; AutoTokenizer is the reference.
    try:
        from transformers import AutoTokenizer, LlamaTokenizerFast
    except ImportError:
        sys.exit(f"tokenizer_formats_reference.py: transformers is missing from {sys.executable}")
    model_dir = os.path.join(out, "llama_dir")
    fast = LlamaTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(llama2)), bos_token="<s>",
                              eos_token="</s>", unk_token="<unk>", pad_token="<unk>", add_bos_token=True,
                              add_eos_token=True, legacy=True, from_slow=False)
    fast.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    fast.save_pretrained(model_dir)
    auto = AutoTokenizer.from_pretrained(model_dir)
    res = [{"ids": auto.encode(t, add_special_tokens=False), "ids_special": auto.encode(t),
            "decoded": auto.decode(auto.encode(t, add_special_tokens=False))} for t in texts]
    result["tokenizers"]["llama_dir"] = {"file": model_dir, "results": res, "bos_id": auto.bos_token_id,
                                         "eos_id": auto.eos_token_id, "pad_id": auto.pad_token_id}

    with open(os.path.join(out, "formats.json.tmp"), "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False)
    os.replace(os.path.join(out, "formats.json.tmp"), os.path.join(out, "formats.json"))


def encode_jobs(jobs_path, out_path):
    with open(jobs_path, encoding="utf-8") as f:
        jobs = json.load(f)
    out = [hf_results(Tokenizer.from_file(job["file"]), job["texts"]) for job in jobs]
    with open(out_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
    os.replace(out_path + ".tmp", out_path)


if __name__ == "__main__":
    if sys.argv[1] == "--encode":
        encode_jobs(sys.argv[2], sys.argv[3])
    else:
        build(sys.argv[1], int(sys.argv[2]))
