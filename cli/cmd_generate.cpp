// `kotoba generate`: continues one prompt or a batch of them with a model directory's causal LM:
// greedy, sampled or beam search, streaming the text of a single sequence as the tokens come;
// --show-probs and --compare-temperatures show the distributions the tokens come from.
#include <algorithm>
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
#include "core/utf8.h"
#include "infer/generate.h"
#include "io/model_dir.h"
#include "tokenizer/tokenizer.h"
#include "train/plot.h"

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

// A token's text made visible: quoted, with \n \t \r \\ \" and other control bytes escaped, and
// bytes that are not valid UTF-8 (a byte-level token can hold part of a character) as \xNN.
std::string visible_token(const std::string& bytes) {
  const bool utf8 = find_invalid_utf8(bytes) == std::string::npos;
  std::string out = "\"";
  for (unsigned char b : bytes) {
    if (b == '\n') out += "\\n";
    else if (b == '\t') out += "\\t";
    else if (b == '\r') out += "\\r";
    else if (b == '\\') out += "\\\\";
    else if (b == '"') out += "\\\"";
    else if (b < 0x20 || b == 0x7f || (b >= 0x80 && !utf8)) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02X", unsigned(b));
      out += hex;
    } else out += char(b);
  }
  return out + "\"";
}

// softmax of a scores row in float64 (-inf scores get probability 0).
std::vector<double> softmax64(std::span<const float> scores, double inverse_temperature = 1.0) {
  double top = -INFINITY;
  for (float x : scores) top = std::max(top, double(x) * inverse_temperature);
  std::vector<double> p(scores.size());
  double sum = 0;
  for (size_t i = 0; i < scores.size(); ++i) {
    const double x = double(scores[i]) * inverse_temperature;
    p[i] = x == -INFINITY ? 0.0 : std::exp(x - top);
    sum += p[i];
  }
  for (double& v : p) v /= sum;
  return p;
}

// The k largest entries' indices, largest first, ties to the lower id; entries with probability 0
// (removed by a processor) are left out.
std::vector<int32_t> top_ids(const std::vector<double>& probs, size_t k) {
  std::vector<int32_t> ids;
  for (size_t i = 0; i < probs.size(); ++i)
    if (probs[i] > 0) ids.push_back(int32_t(i));
  k = std::min(k, ids.size());
  std::partial_sort(ids.begin(), ids.begin() + std::ptrdiff_t(k), ids.end(), [&](int32_t a, int32_t b) {
    return probs[size_t(a)] != probs[size_t(b)] ? probs[size_t(a)] > probs[size_t(b)] : a < b;
  });
  ids.resize(k);
  return ids;
}

// --compare-temperatures: "0.5,1,2" -> {0.5, 1, 2}; each a finite number in (0, 1000].
std::vector<double> parse_temperatures(const std::string& text) {
  std::vector<double> out;
  size_t begin = 0;
  for (;;) {
    const size_t end = std::min(text.find(',', begin), text.size());
    const std::string item = text.substr(begin, end - begin);
    char* stop = nullptr;
    const double t = item.empty() ? 0.0 : std::strtod(item.c_str(), &stop);
    KOTOBA_CHECK(!item.empty() && stop == item.c_str() + item.size() && std::isfinite(t) && t > 0 && t <= 1000,
                 "generate: --compare-temperatures takes numbers in (0, 1000] separated by commas (e.g. 0.5,1,2); "
                 "got '", item, "' in '", text, "'");
    out.push_back(t);
    if (end == text.size()) break;
    begin = end + 1;
  }
  KOTOBA_CHECK(out.size() <= 10, "generate: --compare-temperatures takes at most 10 temperatures, got ", out.size());
  return out;
}

// The next-token distribution after `prompt` at each temperature: softmax(logits / T) of the
// model's raw logits (no other processor), the `count` most probable tokens in one order for every
// T (dividing by T does not reorder them). Bars on stdout (or JSON), and a grouped bar PNG.
void compare_temperatures(nn::CausalLM& model, const tokenizer::Tokenizer& tok, const std::vector<int32_t>& prompt,
                          const std::vector<double>& temperatures, size_t count, const std::string& png, bool json) {
  std::vector<float> logits;
  {
    infer::BatchDecoder decoder(model, /*use_kv_cache=*/true, int64_t(prompt.size()) + 1);
    logits = decoder.prefill({prompt});
  }
  std::vector<std::vector<double>> probs;
  for (double t : temperatures) probs.push_back(softmax64(logits, 1.0 / t));
  const std::vector<int32_t> ids = top_ids(probs[0], count);
  auto label_of = [](double t) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "T=%g", t);
    return std::string(buf);
  };
  if (json) {
    nlohmann::json tokens = nlohmann::json::array();
    for (int32_t id : ids) {
      nlohmann::json p = nlohmann::json::array();
      for (const auto& row : probs) p.push_back(row[size_t(id)]);
      tokens.push_back({{"id", id}, {"text", tok.decode(std::vector<int32_t>{id})}, {"probs", p}});
    }
    nlohmann::json out{{"temperatures", temperatures}, {"tokens", tokens}};
    if (!png.empty()) out["png"] = png;
    std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
  } else {
    double most = 0;
    for (const auto& row : probs)
      for (int32_t id : ids) most = std::max(most, row[size_t(id)]);
    size_t name_w = 0;
    for (double t : temperatures) name_w = std::max(name_w, label_of(t).size());
    std::cout << "next-token probabilities after the prompt, softmax(logits / T), top " << ids.size() << ":\n";
    for (int32_t id : ids) {
      std::cout << visible_token(tok.decode(std::vector<int32_t>{id})) << "  (id " << id << ")\n";
      for (size_t k = 0; k < temperatures.size(); ++k) {
        const double p = probs[k][size_t(id)];
        const std::string label = label_of(temperatures[k]);
        // 50 columns for the largest probability shown.
        const size_t cells = most > 0 ? size_t(std::lround(50.0 * p / most)) : 0;
        std::printf("  %-*s %s%s %.6f\n", int(name_w), label.c_str(), std::string(cells, '#').c_str(),
                    std::string(50 - cells, ' ').c_str(), p);
      }
    }
    std::fflush(stdout);
  }
  if (!png.empty()) {
    std::vector<std::string> categories;
    for (int32_t id : ids) categories.push_back(visible_token(tok.decode(std::vector<int32_t>{id})));
    std::vector<train::BarSeries> series;
    for (size_t k = 0; k < temperatures.size(); ++k) {
      train::BarSeries s{label_of(temperatures[k]), {}};
      for (int32_t id : ids) s.values.push_back(probs[k][size_t(id)]);
      series.push_back(std::move(s));
    }
    train::write_bar_plot(png, categories, series, "Next-token distribution by temperature", "token (most probable first)",
                          "probability", 800, 500);
    if (!json) std::fprintf(stderr, "wrote %s (800x500)\n", png.c_str());
  }
}

// `--show-probs` may come without its count: then it shows 5 candidates.
cli::Args with_show_probs_count(cli::Args args) {
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] != "--show-probs") continue;
    const bool has_count = i + 1 < args.size() && !args[i + 1].empty() &&
                           std::all_of(args[i + 1].begin(), args[i + 1].end(), [](char c) { return c >= '0' && c <= '9'; });
    if (!has_count) args.insert(args.begin() + std::ptrdiff_t(i) + 1, "5");
  }
  return args;
}

int cmd_generate(const cli::Args& args) {
  if (cli::wants_help(args)) {
    std::cout
        << "kotoba generate MODEL --prompt TEXT [--prompt TEXT ...] [--prompts-file FILE]\n"
           "                [--max-new-tokens N | --max-length L] [--temperature T] [--top-k K] [--top-p P]\n"
           "                [--min-p M] [--repetition-penalty R] [--no-repeat-ngram-size N] [--num-beams B]\n"
           "                [--length-penalty A] [--early-stopping true|false|never] [--num-return-sequences S]\n"
           "                [--stop TEXT ...] [--seed S] [--greedy] [--threads N] [--json] [--no-kv-cache]\n"
           "                [--device cpu|cuda]\n"
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
           "  --no-kv-cache recomputes the whole sequence for every token (for comparison; slow).\n"
           "  --device cuda runs the model on the GPU (default cpu; LLM.int8() weights run on the CPU only).\n"
           "  --show-probs [K] prints at each step the K (default 5) most probable next tokens (text quoted\n"
           "  and escaped, id, probability after the processors in use: softmax of the scores the token was\n"
           "  picked from) and the chosen one (marked *); with --json each sequence gets \"steps\": [{\"chosen\",\n"
           "  \"chosen_prob\", \"top\": [{\"id\", \"text\", \"prob\"}...]}...]. Not with --num-beams > 1.\n"
           "  --compare-temperatures 0.5,1,2 [--top-tokens N] [--png FILE] generates nothing: it shows the\n"
           "  next-token distribution after the (one) prompt, softmax(logits / T) of the raw logits, for each\n"
           "  T (at most 10), as bars for the N (default 10) most probable tokens, and with --png as a grouped\n"
           "  bar chart (800x500 PNG, written atomically); with --json as {\"temperatures\", \"tokens\":\n"
           "  [{\"id\", \"text\", \"probs\"}...]}.\n";
    return 0;
  }
  Flags f = Flags::parse(with_show_probs_count(args), "generate",
                         {"prompt", "prompts-file", "max-new-tokens", "max-length", "temperature", "top-k", "top-p",
                          "min-p", "repetition-penalty", "no-repeat-ngram-size", "num-beams", "length-penalty",
                          "early-stopping", "num-return-sequences", "stop", "seed", "threads", "show-probs",
                          "compare-temperatures", "top-tokens", "png", "device"},
                         {"greedy", "json", "no-kv-cache"}, 1);
  KOTOBA_CHECK(f.positional().size() == 1,
               "generate: expected the model directory (kotoba generate MODEL --prompt TEXT)");
  set_num_threads(int(f.integer("threads", 0)));
  const Device device = cli::device_flag(f, "generate");
  LoadedModel loaded = load_model_dir(f.positional()[0]);
  cli::move_model(*loaded.model, device, "generate");
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

  const int64_t show_probs = f.integer("show-probs", 0);
  KOTOBA_CHECK(!f.has("show-probs") || (show_probs >= 1 && show_probs <= 1000),
               "generate: --show-probs must be in 1..1000, got ", show_probs);
  KOTOBA_CHECK(!f.has("show-probs") || o.num_beams == 1,
               "generate: --show-probs needs greedy decoding or sampling, not --num-beams ", o.num_beams);
  KOTOBA_CHECK(!f.has("png") || f.has("compare-temperatures"), "generate: --png needs --compare-temperatures");
  KOTOBA_CHECK(!f.has("top-tokens") || f.has("compare-temperatures"),
               "generate: --top-tokens needs --compare-temperatures");
  KOTOBA_CHECK(!f.has("png") || !f.str("png").empty(), "generate: --png needs a file name");

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

  if (f.has("compare-temperatures")) {
    const std::vector<double> temperatures = parse_temperatures(f.str("compare-temperatures"));
    KOTOBA_CHECK(prompts.size() == 1, "generate: --compare-temperatures takes one prompt, got ", prompts.size());
    KOTOBA_CHECK(!f.has("show-probs"), "generate: give --compare-temperatures or --show-probs, not both");
    const int64_t count = f.integer("top-tokens", 10);
    KOTOBA_CHECK(count >= 1 && count <= std::min<int64_t>(100, loaded.model->vocab_size()),
                 "generate: --top-tokens must be in 1..", std::min<int64_t>(100, loaded.model->vocab_size()), ", got ",
                 count);
    compare_temperatures(*loaded.model, tok, prompts[0], temperatures, size_t(count), f.str("png"), f.has("json"));
    return 0;
  }

  // --show-probs: each step's candidates, per prompt and sequence, kept for --json and printed
  // as they come otherwise.
  std::vector<std::vector<nlohmann::json>> steps(prompts.size(),
                                                 std::vector<nlohmann::json>(size_t(o.num_return_sequences)));
  const bool several = prompts.size() > 1 || o.num_return_sequences > 1;
  if (show_probs > 0)
    o.observe_scores = [&](size_t prompt, size_t sequence, std::span<const float> scores, int32_t chosen) {
      const std::vector<double> probs = softmax64(scores);
      nlohmann::json& list = steps[prompt][sequence];
      if (list.is_null()) list = nlohmann::json::array();
      if (f.has("json")) {
        nlohmann::json top = nlohmann::json::array();
        for (int32_t id : top_ids(probs, size_t(show_probs)))
          top.push_back({{"id", id}, {"text", tok.decode(std::vector<int32_t>{id})}, {"prob", probs[size_t(id)]}});
        list.push_back({{"chosen", chosen}, {"chosen_prob", probs[size_t(chosen)]}, {"top", top}});
        return;
      }
      std::printf("%sstep %zu: chose %s (id %d, p %.6f)\n",
                  several ? ("[prompt " + std::to_string(prompt) + ", sequence " + std::to_string(sequence) + "] ").c_str()
                          : "",
                  list.size(), visible_token(tok.decode(std::vector<int32_t>{chosen})).c_str(), int(chosen),
                  probs[size_t(chosen)]);
      for (int32_t id : top_ids(probs, size_t(show_probs)))
        std::printf("  %c %.6f  %6d  %s\n", id == chosen ? '*' : ' ', probs[size_t(id)], int(id),
                    visible_token(tok.decode(std::vector<int32_t>{id})).c_str());
      list.push_back(nullptr);  // counts the steps
    };

  // The text of a sequence: without its EOS, cut after a stop string.
  auto text_of = [&](const infer::GeneratedSequence& s) {
    std::vector<int32_t> ids = s.ids;
    if (s.finish_reason == infer::FinishReason::eos && !ids.empty()) ids.pop_back();
    std::string text = tok.decode(ids);
    if (s.finish_reason == infer::FinishReason::stop_string) text.resize(std::min(text.size(), s.text_end));
    return text;
  };
  // --show-probs prints its own lines per step, which would cut through streamed text.
  const bool stream = prompts.size() == 1 && o.num_beams == 1 && o.num_return_sequences == 1 && show_probs == 0;
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
    if (!f.has("json") && show_probs > 0 && !several)
      std::cout << prompt_texts[0] << text_of(results[0].sequences[0]) << "\n";
    else if (!f.has("json"))
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
    for (size_t p = 0; p < results.size(); ++p) {
      const infer::GenerationResult& r = results[p];
      nlohmann::json sequences = nlohmann::json::array();
      for (size_t q = 0; q < r.sequences.size(); ++q) {
        const infer::GeneratedSequence& s = r.sequences[q];
        sequences.push_back({{"text", text_of(s)},
                             {"ids", s.ids},
                             {"finish_reason", infer::finish_reason_name(s.finish_reason)},
                             {"score", s.score}});
        if (show_probs > 0) {
          const nlohmann::json& list = steps[p][q];
          sequences.back()["steps"] = list.is_null() ? nlohmann::json::array() : list;
        }
      }
      nlohmann::json out{{"text", sequences[0]["text"]},
                         {"ids", r.ids},
                         {"tokens_per_s", r.tokens_per_second()},
                         {"finish_reason", infer::finish_reason_name(r.finish_reason)},
                         {"sequences", sequences}};
      if (show_probs > 0) out["steps"] = sequences[0]["steps"];
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
