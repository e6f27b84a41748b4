"""Byte-level BPE reference from HF `tokenizers` (PyPI): trains a tokenizer with its own
ByteLevel BPE trainer on a generated multilingual corpus and writes, into <out>/tokenizer/, its
tokenizer.json, the corpus (kotoba trains on it too), and the ids and pre-tokens HF gives for
held-out texts (English, Japanese, emoji, accents, numbers, whitespace runs, code, and random
code points from all of Unicode). tests/test_tokenizer.cpp checks kotoba against them."""
import json
import os
import random
import sys

try:
    import tokenizers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
except ImportError:
    sys.exit(
        "tokenizer_reference.py: the Python package `tokenizers` is missing from "
        f"{sys.executable}. Install it with `{sys.executable} -m pip install tokenizers` "
        "(scripts/test does this for the venv ~/.cache/kotoba-ref)."
    )

SPECIALS = ["<|endoftext|>", "<|pad|>"]

ENGLISH = (
    "the of and to in is was that for it with as his on be at by had are but from or have an they which one you "
    "were her all she there would their we him been has when who will more no if out so said what up its about "
    "into than them can only other new some could time these two may then do first any my now such like our over "
    "man me even most made after also did many before must through back years where much your way well down should "
    "because each just those people Mr how too little state good very make world still own see men work long get "
    "here between both life being under never day same another know while last might us great old year off come "
    "since against go came right used take three don't isn't I'm we've they'll she'd you're IT'S"
).split()
JAPANESE = (
    "日本語 東京 の こんにちは 世界 です ます 言語 モデル トークナイザー 学習 データ 今日 は 良い 天気 "
    "ですね 私 は 学生 です 漢字 ひらがな カタカナ 機械 翻訳 自然 言語 処理 、 。 「 」"
).split()
ACCENTS = "café naïve résumé über Straße façade jalapeño São Paulo Ærø Øresund déjà vu coöperate Ελληνικά русский язык".split()
EMOJI = ["🙂", "🚀", "👍🏽", "🇯🇵", "👨‍👩‍👧", "❤️", "🎉", "✨", "🤖"]
CODE = [
    "def f(x):\n    return x ** 2\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
    "if x != None and y >= 3: print('ok')\n",
    "std::vector<int32_t> ids = tok.encode(text);  // comment\n",
    '{"key": [1, 2.5, -3e10], "nested": {"a": null}}\n',
]
SPACES = [" ", " ", " ", "  ", "   ", "\n", "\n\n", "\t", " \n ", "\r\n", "\u00a0", "\u3000", "    "]


def random_number(rng):
    return rng.choice([str(rng.randint(0, 9)), str(rng.randint(0, 99999)), f"{rng.random() * 1000:.2f}",
                       f"{rng.randint(1900, 2100)}年", "١٢٣", "½", "Ⅻ"])


def random_text(rng, words):
    parts = []
    for _ in range(words):
        r = rng.random()
        if r < 0.55:
            w = rng.choice(ENGLISH)
            parts.append(w.capitalize() if rng.random() < 0.1 else w)
        elif r < 0.70:
            parts.append(rng.choice(JAPANESE))
        elif r < 0.77:
            parts.append(rng.choice(ACCENTS))
        elif r < 0.82:
            parts.append(random_number(rng))
        elif r < 0.85:
            parts.append(rng.choice(EMOJI))
        elif r < 0.87:
            parts.append(rng.choice(CODE))
        else:
            parts.append(rng.choice([".", ",", "!", "?", ";", "...", "'s", "--", "(", ")", '"']))
        parts.append(rng.choice(SPACES) if rng.random() < 0.3 else " ")
    return "".join(parts)


def random_code_points(rng, n):
    """Code points drawn from all of Unicode (no surrogates), to check the character classes."""
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.3:
            cp = rng.randint(0x20, 0x7E)
        elif r < 0.7:
            cp = rng.randint(0x80, 0xFFFF)
        else:
            cp = rng.randint(0x10000, 0x10FFFF)
        if 0xD800 <= cp <= 0xDFFF:
            cp = 0x20
        out.append(chr(cp))
        if rng.random() < 0.2:
            out.append(rng.choice(SPACES))
    return "".join(out)


# The byte-to-unicode alphabet of GPT-2, inverted: turns pre-token strings back into raw text.
def unicode_to_bytes():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def main():
    out_dir = os.path.join(sys.argv[1], "tokenizer")
    os.makedirs(out_dir, exist_ok=True)
    seed = int(os.environ.get("KOTOBA_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"tokenizer reference: tokenizers {tokenizers.__version__}, seed {seed} (KOTOBA_TEST_SEED replays it)")
    rng = random.Random(seed)

    corpus = "".join(random_text(rng, rng.randint(5, 60)) + "\n" for _ in range(6000))
    corpus_path = os.path.join(out_dir, "corpus.txt")
    with open(corpus_path, "w", encoding="utf-8", newline="") as f:
        f.write(corpus)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([corpus_path], trainer)
    tok.save(os.path.join(out_dir, "hf_tokenizer.json"))

    to_bytes = unicode_to_bytes()
    cases = [
        "Hello world! It's a test: don't, won't, I'M, we'll, they've, she'd.",
        "日本語のテキストです。東京は今日も良い天気ですね！",
        "emoji 🙂🚀 👍🏽 family 👨‍👩‍👧 flag 🇯🇵 heart ❤️",
        "café naïve résumé Straße São Paulo Ελληνικά русский",
        "numbers 3.14159 1,000,000 2024年 ١٢٣ ½ Ⅻ 42nd",
        "   leading spaces\n\n\ntrailing spaces   \t\t\n  \n",
        "a\u00a0\u00a0b\u3000c\u2028d\u0085e \u001cf\u000bg\u000ch\r\ni",
        "def f(x):\n    return x ** 2  # comment\n\tindent\n",
        "special <|endoftext|> tokens<|pad|><|endoftext|>between<|endoftext",
        "'s 's ''s 'S 'll' x'd 're've'",
        "",
        " ",
        "x",
    ]
    heldout = random_text(random.Random(seed + 1), 3000)
    cases.append(heldout)
    cases.append(random_code_points(random.Random(seed + 2), 20000))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    records = []
    for text in cases:
        ids = tok.encode(text, add_special_tokens=False).ids
        pieces = [bytes(to_bytes[c] for c in p).decode("utf-8") for p, _ in byte_level.pre_tokenize_str(text)]
        assert "".join(pieces) == text
        records.append({"text": text, "ids": ids, "pieces": pieces})
    with open(os.path.join(out_dir, "cases.json"), "w", encoding="utf-8") as f:
        json.dump({"seed": seed, "tokenizers_version": tokenizers.__version__, "cases": records}, f, ensure_ascii=False)
    print(f"tokenizer reference: {len(corpus) / 1e6:.2f} MB corpus, vocabulary {tok.get_vocab_size()}, "
          f"{len(records)} cases -> {out_dir}")


if __name__ == "__main__":
    main()
