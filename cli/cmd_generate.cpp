// `kotoba generate`: continues a prompt with a model directory's GPT-2, greedy or sampled with
// temperature / top-k / top-p, streaming the text to stdout as the tokens come.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cli/command.h"
#include "core/parallel.h"
#include "infer/generate.h"
#include "io/model_dir.h"
#include "tokenizer/tokenizer.h"

using namespace kotoba;
using kotoba::cli::Flags;

namespace {

// Length of the longest prefix of `bytes` that does not end inside a UTF-8 sequence, so a
// character split across tokens is printed whole once its last byte arrives.
size_t complete_utf8_prefix(const std::string& bytes) {
  const size_t n = bytes.size();
  for (size_t back = 1; back <= 4 && back <= n; ++back) {
    unsigned char c = static_cast<unsigned char>(bytes[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: look further back for the lead
    size_t need = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
    return need > back ? n - back : n;
  }
  return n;  // no lead byte within 4: not UTF-8 we can wait for; print as it is
}

int cmd_generate(const cli::Args& args) {
  if (cli::wants_help(args)) {
    std::cout
        << "kotoba generate MODEL --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P]\n"
           "                [--repetition-penalty R] [--seed S] [--greedy] [--threads N] [--json] [--no-kv-cache]\n"
           "  Continues TEXT with the model directory MODEL, printing the prompt and then each new token as\n"
           "  it is generated. Stops at the EOS token, after N new tokens or at the model's context length.\n"
           "  Defaults come from MODEL/generation_config.json (else: sampling, T 1, K 50, P 1, N 256).\n"
           "  --greedy (or --temperature 0) picks the most probable token; otherwise tokens are sampled\n"
           "  after temperature, top-k (0: off) and top-p (1: off), HF transformers' semantics. An empty or\n"
           "  missing prompt starts from the EOS token. --seed makes sampling repeatable (default 0).\n"
           "  --json prints {\"text\", \"ids\", \"tokens_per_s\", \"finish_reason\"} as the last line of stdout\n"
           "  (text and ids: the new tokens only; tokens/s over the whole generation, prompt included).\n"
           "  --no-kv-cache recomputes the whole sequence for every token (for comparison; slow).\n";
    return 0;
  }
  Flags f = Flags::parse(
      args, "generate",
      {"prompt", "max-new-tokens", "temperature", "top-k", "top-p", "repetition-penalty", "seed", "threads"},
      {"greedy", "json", "no-kv-cache"}, 1);
  KOTOBA_CHECK(f.positional().size() == 1,
               "generate: expected the model directory (kotoba generate MODEL --prompt TEXT)");
  set_num_threads(int(f.integer("threads", 0)));
  LoadedModel loaded = load_model_dir(f.positional()[0]);
  tokenizer::Tokenizer tok = tokenizer::Tokenizer::load(loaded.tokenizer_path);
  const GenerationConfig& defaults = loaded.generation;

  infer::GenerationOptions o;
  o.max_new_tokens = f.integer("max-new-tokens", defaults.max_new_tokens);
  o.temperature = float(f.num("temperature", defaults.temperature));
  o.top_k = f.integer("top-k", defaults.top_k);
  o.top_p = float(f.num("top-p", defaults.top_p));
  o.repetition_penalty = float(f.num("repetition-penalty", defaults.repetition_penalty));
  o.seed = uint64_t(f.integer("seed", 0));
  o.use_kv_cache = !f.has("no-kv-cache");
  KOTOBA_CHECK(o.max_new_tokens >= 0, "generate: --max-new-tokens must be >= 0, got ", o.max_new_tokens);
  KOTOBA_CHECK(o.temperature >= 0, "generate: --temperature must be >= 0, got ", o.temperature);
  KOTOBA_CHECK(o.top_k >= 0, "generate: --top-k must be >= 0 (0: off), got ", o.top_k);
  KOTOBA_CHECK(o.top_p > 0 && o.top_p <= 1, "generate: --top-p must be in (0, 1], got ", o.top_p);
  KOTOBA_CHECK(o.repetition_penalty > 0, "generate: --repetition-penalty must be positive, got ", o.repetition_penalty);
  o.do_sample = defaults.do_sample && !f.has("greedy") && o.temperature > 0;
  if (!o.do_sample) o.temperature = 1.0f;  // unused by greedy decoding; keeps 0 from being rejected
  std::optional<int32_t> eos =
      defaults.eos_token_id ? std::optional<int32_t>(int32_t(*defaults.eos_token_id)) : tok.eos_id();
  if (eos) o.eos_token_ids = {*eos};

  const std::string prompt_text = f.str("prompt", "");
  std::vector<int32_t> prompt = tok.encode(prompt_text);
  if (prompt.empty()) {
    KOTOBA_CHECK(eos.has_value(), "generate: --prompt is empty and the tokenizer has no EOS token to start from");
    prompt = {*eos};
  }
  const int64_t context = loaded.model->max_positions();
  KOTOBA_CHECK(int64_t(prompt.size()) <= context, "generate: --prompt is ", prompt.size(),
               " tokens, more than the model's context of ", context);

  std::cout << prompt_text << std::flush;
  std::string pending;  // decoded bytes not yet printed (an incomplete UTF-8 character)
  auto on_token = [&](int32_t id) {
    if (eos && id == *eos) return true;
    pending += tok.decode(std::span<const int32_t>(&id, 1));
    size_t n = complete_utf8_prefix(pending);
    std::cout.write(pending.data(), std::streamsize(n)) << std::flush;
    pending.erase(0, n);
    return true;
  };
  infer::GenerationResult result = infer::generate(*loaded.model, prompt, o, on_token);
  std::cout << pending << "\n";

  if (f.has("json")) {
    std::vector<int32_t> text_ids = result.ids;
    if (eos && !text_ids.empty() && text_ids.back() == *eos) text_ids.pop_back();
    nlohmann::json out{{"text", tok.decode(text_ids)},
                       {"ids", result.ids},
                       {"tokens_per_s", result.tokens_per_second()},
                       {"finish_reason", infer::finish_reason_name(result.finish_reason)}};
    // Byte-level BPE can stop inside a character: replace invalid UTF-8 rather than fail.
    std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
  } else {
    std::fprintf(stderr, "%zu tokens, %.1f tokens/s (%s)\n", result.ids.size(), result.tokens_per_second(),
                 infer::finish_reason_name(result.finish_reason));
  }
  return 0;
}

}  // namespace

KOTOBA_COMMAND("generate", "continue a prompt with a model (greedy, top-k, top-p sampling; streams)", cmd_generate);
