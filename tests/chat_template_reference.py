"""Helper of tests/test_chat.cpp (not a ctest fixture): renders random conversations with
transformers' apply_chat_template, the reference for kotoba's chat templates.
  chat_template_reference.py SEED OUT_JSON
writes {"templates": {name: jinja}, "cases": [{"template", "bos", "eos", "messages",
"add_generation_prompt", "text" | "error"}]}. The Jinja sources are written here independently of
kotoba's C++ (the test checks kotoba recognises each one as its style)."""
import json
import random
import sys

try:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
except ImportError as e:
    sys.exit(f"chat_template_reference.py: {e.name} is missing from {sys.executable} (install it with "
             f"`{sys.executable} -m pip install transformers==4.48.3 tokenizers`, as scripts/test does)")

TEMPLATES = {
    # HF's chat-templating docs / teknium/OpenHermes-2.5-Mistral-7B.
    "chatml": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
              "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
              "{% endif %}",
    # meta-llama/Llama-2-7b-chat-hf tokenizer_config.json.
    "llama2": "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
              "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
              "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
              "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
              "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
              "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
              "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
              "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
              "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
              "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}",
    "alpaca": "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}"
              "{% set loop_messages = messages[1:] %}{% else %}{{ 'Below is an instruction that describes a task. "
              "Write a response that appropriately completes the request.\\n\\n' }}{% set loop_messages = messages %}"
              "{% endif %}{% for message in loop_messages %}{% if message['role'] == 'user' %}"
              "{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
              "{% if message['input'] is defined and message['input'] %}{{ '### Input:\\n' + message['input'] + "
              "'\\n\\n' }}{% endif %}{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + "
              "message['content'] + '\\n\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
              "{{ '### Response:\\n' }}{% endif %}",
    "plain": "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
             "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n' }}"
             "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + '\\n' }}{% endif %}"
             "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}",
}

ALPHABET = ("abcxyz ABC 0123 .,!?'\"{}[]%#<>/\\|- é ñ ü ß Ж д λ π 東京 日本語 한국 مرحبا 🙂 🚀 👩‍💻 "
            "<s> </s> <|im_start|> [INST] ### \n")
# Python's str.isspace() code points beyond ASCII: Llama-2's .strip() removes them at the ends.
SPACES = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\xa0", "\u1680", "\u2003", "\u2028", "\u2029",
          "\u202f", "\u205f", "\u3000", "\u200b"]  # U+200B is not a space for Python: must stay


def text(rng):
    body = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 24)))
    pad = lambda: "".join(rng.choice(SPACES) for _ in range(rng.choice([0, 0, 1, 3])))
    return pad() + body + pad()


def conversation(rng, name):
    messages = []
    if rng.random() < 0.5:
        messages.append({"role": "system", "content": text(rng)})
    for turn in range(rng.randint(0, 4)):
        user = {"role": "user", "content": text(rng)}
        if name == "alpaca" and rng.random() < 0.5:
            user["input"] = text(rng)
        messages.append(user)
        # The last turn often lacks its reply, as when a prompt is built for generation.
        if turn < 3 or rng.random() < 0.5:
            messages.append({"role": "assistant", "content": text(rng)})
    if name == "llama2" and messages and rng.random() < 0.1:
        messages.append({"role": rng.choice(["user", "assistant"]), "content": text(rng)})
        rng.shuffle(messages)  # often breaks the alternation Llama-2 insists on
    return messages


def main():
    seed, out = int(sys.argv[1]), sys.argv[2]
    rng = random.Random(seed)
    cases = []
    for name, jinja in TEMPLATES.items():
        for bos, eos in [("<s>", "</s>"), ("<|begin_of_text|>", "<|endoftext|>")]:
            vocab = {bos: 0, eos: 1, "<unk>": 2}
            tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                          bos_token=bos, eos_token=eos, unk_token="<unk>")
            for _ in range(60):
                messages = conversation(rng, name)
                add = rng.random() < 0.5
                case = {"template": name, "bos": bos, "eos": eos, "messages": messages, "add_generation_prompt": add}
                try:
                    case["text"] = tok.apply_chat_template(messages, chat_template=jinja, tokenize=False,
                                                           add_generation_prompt=add)
                except Exception as e:  # Llama-2's alternation check, or messages[0] of an empty list
                    case["error"] = f"{type(e).__name__}: {e}"
                cases.append(case)
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"seed": seed, "templates": TEMPLATES, "cases": cases}, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
