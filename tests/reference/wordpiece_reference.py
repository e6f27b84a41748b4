"""WordPiece references from HF tokenizers: a BERT WordPiece tokenizer trained here on a
generated multilingual corpus (<out>/wordpiece/corpus.txt) and saved as hf_tokenizer.json, and
held-out texts (heldout.json) with HF's encodings (with and without [CLS]/[SEP]) and decodings.

Also a checker for kotoba's files: `wordpiece_reference.py --encode TOKENIZER_JSON TEXTS_JSON OUT`
loads TOKENIZER_JSON with tokenizers.Tokenizer.from_file and writes the same encodings of the
texts in TEXTS_JSON (a list of strings) to OUT."""
import json
import os
import random
import sys

from tokenizers import Tokenizer, processors
from tokenizers.implementations import BertWordPieceTokenizer

WORDS = ("the quick brown fox jumps over lazy dog tokenizer encoder language model pretraining "
         "Café naïve résumé Straße ÜBER Ångström façade déjà-vu coöperate "
         "ΑΘΗΝΑ Αθήνα λόγος ΣΟΦΙΑ Привет мир ЯЗЫК Москва "
         "我爱自然语言处理 中文分词 北京大学 ひらがな カタカナ 日本語 한국어 안녕하세요 "
         "مرحبا بالعالم नमस्ते दुनिया ภาษาไทย "
         "don't it's we're I'm can't 3.14 1,000 2024 e-mail U.S.A. hello@example.com "
         "«quoted» “curly” — … ¿qué? ¡sí! (paren) [bracket] {brace} $5 50% a+b=c x^2 ~tilde").split()

EXTRA = ["Tab\there", "zero\u200bwidth", "bell\x07char", "e\u0301clair", "emoji 😀 smile", "ＦＵＬＬ width",
         "soft\u00adhyphen", "İstanbul", "Ǆemal", "ﬁne ligature"]


def sentence(rng):
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
    return " ".join(words)


def encodings(tok, texts):
    out = []
    for t in texts:
        plain = tok.encode(t, add_special_tokens=False).ids
        full = tok.encode(t).ids
        out.append({"text": t, "ids": plain, "ids_special": full,
                    "decoded": tok.decode(plain, skip_special_tokens=False)})
    return out


def make(out_dir):
    seed = int(os.environ.get("KOTOBA_TEST_SEED") or random.SystemRandom().randrange(2**31))
    print(f"wordpiece_reference: seed {seed} (rerun with KOTOBA_TEST_SEED={seed} to reproduce)")
    rng = random.Random(seed)
    d = os.path.join(out_dir, "wordpiece")
    os.makedirs(d, exist_ok=True)
    corpus = [sentence(rng) for _ in range(3000)] + EXTRA
    with open(os.path.join(d, "corpus.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(corpus) + "\n")
    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train([os.path.join(d, "corpus.txt")], vocab_size=400, min_frequency=2, show_progress=False,
              special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.save(os.path.join(d, "hf_tokenizer.json"))
    # Held-out: new combinations, unseen words (-> [UNK]), special tokens in the text, a word over
    # 100 characters, and the hard characters.
    heldout = [sentence(rng) for _ in range(60)] + EXTRA + [
        "unseen zyxwvq words ЖЖЖ", "a [MASK] in the [SEP] middle", "x" * 101, "y" * 100, "",
        "  spaces   and\nnewlines\r\n", "MiXeD CaSe ÀÉÎÕÜ", "中文English混合", "ﾊﾝｶｸ ｶﾀｶﾅ"]
    with open(os.path.join(d, "heldout.json"), "w", encoding="utf-8") as f:
        json.dump(encodings(Tokenizer.from_file(os.path.join(d, "hf_tokenizer.json")), heldout), f, ensure_ascii=False)
    print(f"  wordpiece: vocabulary {tok.get_vocab_size()}, {len(heldout)} held-out texts")


def check(tokenizer_json, texts_json, out_path):
    with open(texts_json, encoding="utf-8") as f:
        texts = json.load(f)
    tok = Tokenizer.from_file(tokenizer_json)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(encodings(tok, texts), f, ensure_ascii=False)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--encode":
        check(*sys.argv[2:])
    else:
        make(sys.argv[1])
