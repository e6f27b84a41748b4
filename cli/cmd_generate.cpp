// `kotoba generate`: continues one prompt or a batch of them with a model directory's causal LM:
// greedy, sampled or beam search, streaming the text of a single sequence as the tokens come.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
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

// Prompts from --prompt (repeatable) and --prompts-file: a .jsonl file holds one JSON string or
// {"prompt": ...} per line (prompts with newlines); any other file one prompt per non-empty line.
std::vector<std::string> read_prompts(const Flags& f) {
  std::vector<std::string> prompts = f.all("prompt");
  if (f.has("prompts-file")) {
    const std::string path = f.str("prompts-file");
    std::ifstream in(path);
    KOTOBA_CHECK(in, "generate: cannot open --prompts-file '", path, "'");
    const bool jsonl = path.size() >= 6 && path.compare(path.size() - 6, 6, ".jsonl") == 0;
    std::string line;
    for (size_t number = 1; std::getline(in, line); ++number) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty()) continue;
      if (!jsonl) {
        prompts.push_back(line);
        continue;
      }
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        throw Error(detail::concat("generate: --prompts-file '", path, "' line ", number, " is not JSON: ", e.what()));
      }
      KOTOBA_CHECK(j.is_string() || (j.is_object() && j.contains("prompt") && j["prompt"].is_string()),
                   "generate: --prompts-file '", path, "' line ", number,
                   " must be a JSON string or an object with a string \"prompt\"");
      prompts.push_back(j.is_string() ? j.get<std::string>() : j["prompt"].get<std::string>());
    }
    KOTOBA_CHECK(!prompts.empty(), "generate: --prompts-file '", path, "' holds no prompt");
  }
  if (prompts.empty()) prompts.push_back("");
  return prompts;
}

int cmd_generate(const cli::Args& args) {
  if (cli::wants_help(args)) {
    std::cout
        << "kotoba generate MODEL --prompt TEXT [--prompt TEXT ...] [--prompts-file FILE]\n"
           "                [--max-new-tokens N | --max-length L] [--temperature T] [--top-k K] [--top-p P]\n"
           "                [--min-p M] [--repetition-penalty R] [--no-repeat-ngram-size N] [--num-beams B]\n"
           "                [--length-penalty A] [--early-stopping true|false|never] [--num-return-sequences S]\n"
           "                [--stop TEXT ...] [--seed S] [--greedy] [--threads N] [--json] [--no-kv-cache]\n"
           "  Continues each prompt with the model directory MODEL. One prompt and one sequence are streamed\n"
           "  to stdout as the tokens come; several prompts (repeated --prompt, or --prompts-file: one per\n"
           "  line, or a .jsonl of strings / {\"prompt\": ...}) are decoded as one batch and printed at the end.\n"
           "  A sequence stops at the EOS token, at a --stop string (the text is cut after it), after N new\n"
           "  tokens (or when prompt + new tokens reach L) or at the model's context length.\n"
           "  Defaults come from MODEL/generation_config.json (else: sampling, T 1, K 50, P 1, N 256).\n"
           "  --greedy (or --temperature 0) picks the most probable token; otherwise tokens are sampled\n"
           "  after temperature, top-k (0: off), top-p (1: off) and min-p (0: off), HF transformers'\n"
           "  semantics. --num-beams B > 1 runs beam search (no sampling) and returns the\n"
           "  --num-return-sequences best (<= B); with sampling, S independent samples per prompt.\n"
           "  --repetition-penalty and --no-repeat-ngram-size apply to every strategy. An empty or missing\n"
           "  prompt starts from the EOS token. --seed makes sampling repeatable (default 0).\n"
           "  --json prints per prompt {\"text\", \"ids\", \"tokens_per_s\", \"finish_reason\", \"sequences\": [{\"text\",\n"
           "  \"ids\", \"finish_reason\", \"score\"}...]} as a line of stdout (text and ids: the new tokens of the\n"
           "  first sequence; tokens/s over the whole batch, prompts included).\n"
           "  --no-kv-cache recomputes the whole sequence for every token (for comparison; slow).\n";
    return 0;
  }
  Flags f = Flags::parse(args, "generate",
                         {"prompt", "prompts-file", "max-new-tokens", "max-length", "temperature", "top-k", "top-p",
                          "min-p", "repetition-penalty", "no-repeat-ngram-size", "num-beams", "length-penalty",
                          "early-stopping", "num-return-sequences", "stop", "seed", "threads"},
                         {"greedy", "json", "no-kv-cache"}, 1);
  KOTOBA_CHECK(f.positional().size() == 1,
               "generate: expected the model directory (kotoba generate MODEL --prompt TEXT)");
  set_num_threads(int(f.integer("threads", 0)));
  LoadedModel loaded = load_model_dir(f.positional()[0]);
  tokenizer::Tokenizer tok = tokenizer::Tokenizer::load_dir(loaded.dir);
  const GenerationConfig& defaults = loaded.generation;

  infer::GenerationOptions o;
  KOTOBA_CHECK(!(f.has("max-new-tokens") && f.has("max-length")),
               "generate: give --max-new-tokens or --max-length, not both");
  o.max_new_tokens = f.integer("max-new-tokens", defaults.max_new_tokens);
  o.max_length = f.integer("max-length", 0);
  o.temperature = float(f.num("temperature", defaults.temperature));
  o.top_k = f.integer("top-k", defaults.top_k);
  o.top_p = float(f.num("top-p", defaults.top_p));
  o.min_p = float(f.num("min-p", 0.0));
  o.repetition_penalty = float(f.num("repetition-penalty", defaults.repetition_penalty));
  o.no_repeat_ngram_size = f.integer("no-repeat-ngram-size", 0);
  o.num_beams = f.integer("num-beams", 1);
  o.length_penalty = f.num("length-penalty", 1.0);
  o.num_return_sequences = f.integer("num-return-sequences", 1);
  o.stop_strings = f.all("stop");
  o.seed = uint64_t(f.integer("seed", 0));
  o.use_kv_cache = !f.has("no-kv-cache");
  KOTOBA_CHECK(o.max_new_tokens >= 0, "generate: --max-new-tokens must be >= 0, got ", o.max_new_tokens);
  KOTOBA_CHECK(!f.has("max-length") || o.max_length >= 1, "generate: --max-length must be >= 1, got ", o.max_length);
  KOTOBA_CHECK(o.temperature >= 0, "generate: --temperature must be >= 0, got ", o.temperature);
  KOTOBA_CHECK(o.top_k >= 0, "generate: --top-k must be >= 0 (0: off), got ", o.top_k);
  KOTOBA_CHECK(o.top_p > 0 && o.top_p <= 1, "generate: --top-p must be in (0, 1], got ", o.top_p);
  KOTOBA_CHECK(o.min_p >= 0 && o.min_p <= 1, "generate: --min-p must be in [0, 1] (0: off), got ", o.min_p);
  KOTOBA_CHECK(o.repetition_penalty > 0, "generate: --repetition-penalty must be positive, got ", o.repetition_penalty);
  KOTOBA_CHECK(o.no_repeat_ngram_size >= 0, "generate: --no-repeat-ngram-size must be >= 0 (0: off), got ",
               o.no_repeat_ngram_size);
  KOTOBA_CHECK(o.num_beams >= 1, "generate: --num-beams must be >= 1, got ", o.num_beams);
  KOTOBA_CHECK(std::isfinite(o.length_penalty), "generate: --length-penalty must be a finite number, got ",
               o.length_penalty);
  KOTOBA_CHECK(o.num_return_sequences >= 1, "generate: --num-return-sequences must be >= 1, got ",
               o.num_return_sequences);
  for (const std::string& s : o.stop_strings) KOTOBA_CHECK(!s.empty(), "generate: --stop must not be empty");
  if (f.has("early-stopping")) {
    try {
      o.early_stopping = infer::parse_early_stopping(f.str("early-stopping"));
    } catch (const Error& e) {
      throw Error(detail::concat("generate: --early-stopping: ", e.what()));
    }
  }
  o.do_sample = defaults.do_sample && !f.has("greedy") && o.temperature > 0 && o.num_beams == 1;
  if (!o.do_sample) o.temperature = 1.0f;  // unused without sampling; keeps 0 from being rejected
  KOTOBA_CHECK(o.num_beams == 1 || o.num_return_sequences <= o.num_beams, "generate: --num-return-sequences (",
               o.num_return_sequences, ") must be <= --num-beams (", o.num_beams, ")");
  KOTOBA_CHECK(o.num_beams > 1 || o.do_sample || o.num_return_sequences == 1,
               "generate: --num-return-sequences > 1 needs sampling or --num-beams (greedy decoding gives one)");
  std::optional<int32_t> eos =
      defaults.eos_token_id ? std::optional<int32_t>(int32_t(*defaults.eos_token_id)) : tok.eos_id();
  if (eos) o.eos_token_ids = {*eos};
  o.detokenize = [&tok](std::span<const int32_t> ids) { return tok.decode(ids); };

  const std::vector<std::string> prompt_texts = read_prompts(f);
  std::vector<std::vector<int32_t>> prompts;
  const int64_t context = loaded.model->max_positions();
  for (const std::string& text : prompt_texts) {
    // As transformers' tokenizer(prompt): with the post-processor's specials (LLaMA's BOS)
    std::vector<int32_t> ids = tok.encode(text, /*add_special_tokens=*/true);
    if (ids.empty()) {
      KOTOBA_CHECK(eos.has_value(), "generate: a prompt is empty and the tokenizer has no EOS token to start from");
      ids = {*eos};
    }
    KOTOBA_CHECK(int64_t(ids.size()) <= context, "generate: --prompt is ", ids.size(),
                 " tokens, more than the model's context of ", context);
    KOTOBA_CHECK(o.max_length == 0 || int64_t(ids.size()) < o.max_length, "generate: --max-length (", o.max_length,
                 ") must exceed the prompt's ", ids.size(), " tokens");
    prompts.push_back(std::move(ids));
  }

  // The text of a sequence: without its EOS, cut after a stop string.
  auto text_of = [&](const infer::GeneratedSequence& s) {
    std::vector<int32_t> ids = s.ids;
    if (s.finish_reason == infer::FinishReason::eos && !ids.empty()) ids.pop_back();
    std::string text = tok.decode(ids);
    if (s.finish_reason == infer::FinishReason::stop_string) text.resize(std::min(text.size(), s.text_end));
    return text;
  };
  const bool stream = prompts.size() == 1 && o.num_beams == 1 && o.num_return_sequences == 1;
  std::vector<infer::GenerationResult> results;
  if (stream) {
    std::cout << prompt_texts[0] << std::flush;
    infer::TextStream text(o.detokenize, o.stop_strings);
    auto on_token = [&](size_t, size_t, int32_t id) {
      if (eos && id == *eos) return true;
      std::cout << text.push(id) << std::flush;
      return true;
    };
    results = infer::generate_batch(*loaded.model, prompts, o, on_token);
    std::cout << text.finish() << "\n";
  } else {
    results = infer::generate_batch(*loaded.model, prompts, o);
    if (!f.has("json"))
      for (size_t p = 0; p < results.size(); ++p)
        for (size_t s = 0; s < results[p].sequences.size(); ++s) {
          std::cout << "[prompt " << p << (results[p].sequences.size() > 1 ? ", sequence " + std::to_string(s) : "")
                    << "]\n"
                    << prompt_texts[p] << text_of(results[p].sequences[s]) << "\n";
        }
  }

  size_t total_tokens = 0;
  for (const auto& r : results)
    for (const auto& s : r.sequences) total_tokens += s.ids.size();
  if (f.has("json")) {
    for (const auto& r : results) {
      nlohmann::json sequences = nlohmann::json::array();
      for (const auto& s : r.sequences)
        sequences.push_back({{"text", text_of(s)},
                             {"ids", s.ids},
                             {"finish_reason", infer::finish_reason_name(s.finish_reason)},
                             {"score", s.score}});
      nlohmann::json out{{"text", sequences[0]["text"]},
                         {"ids", r.ids},
                         {"tokens_per_s", r.tokens_per_second()},
                         {"finish_reason", infer::finish_reason_name(r.finish_reason)},
                         {"sequences", sequences}};
      // Byte-level BPE can stop inside a character: replace invalid UTF-8 rather than fail.
      std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
    }
  } else {
    const double seconds = results[0].prefill_seconds + results[0].decode_seconds;
    std::fprintf(stderr, "%zu tokens, %.1f tokens/s (%s)\n", total_tokens, seconds > 0 ? total_tokens / seconds : 0.0,
                 infer::finish_reason_name(results[0].finish_reason));
  }
  return 0;
}

}  // namespace

KOTOBA_COMMAND("generate", "continue prompts with a model (greedy, sampling, beam search; batches; streams)",
               cmd_generate);
