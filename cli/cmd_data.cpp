// `kotoba data convert|stats`: instruction data sets from the command line — converting between
// shapes and measuring them (token lengths under a chat template, what --max-length would cut).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "cli/command.h"
#include "data/instruct_data.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_config.h"

using namespace kotoba;
using kotoba::cli::Flags;

namespace {

const char* const kUsage =
    "kotoba data convert IN OUT --to SHAPE [--from FORMAT] [--map SRC=DST,...]\n"
    "kotoba data stats FILE [--format FORMAT] [--map SRC=DST,...] [--tokenizer PATH_OR_MODEL_DIR]\n"
    "                  [--template chatml|llama2|alpaca|plain] [--max-length N]\n"
    "  Instruction data sets: alpaca (JSON array or JSONL), chat, qa, summarization (JSONL), text (.txt).\n"
    "  `kotoba data <sub> --help` for details.\n";

int convert(const cli::Args& args) {
  if (cli::wants_help(args)) {
    std::cout << "kotoba data convert IN OUT --to alpaca-json|alpaca-jsonl|chat|qa|summarization\n"
                 "                    [--from auto|alpaca|chat|qa|summarization|text] [--map SRC=DST,...]\n"
                 "  Reads IN (its shape from --from, else from its extension and first record's keys), renames\n"
                 "  its columns by --map before reading (e.g. --map prompt=instruction,response=output), and\n"
                 "  writes OUT atomically in the --to shape. QA becomes Alpaca as question -> instruction,\n"
                 "  context -> input, answer -> output; summarization as the instruction \""
              << data::kSummarizeInstruction
              << "\"\n"
                 "  with the document as input. A record the target cannot hold whole (a multi-turn chat as\n"
                 "  Alpaca) is an error naming it, and OUT is not written. Writing chat puts an input after the\n"
                 "  instruction and a blank line.\n";
    return 0;
  }
  Flags f = Flags::parse(args, "data convert", {"from", "to", "map"}, {}, 2);
  KOTOBA_CHECK(f.positional().size() == 2, "data convert: give IN and OUT (see kotoba data convert --help)");
  KOTOBA_CHECK(f.has("to"), "data convert: --to is required (alpaca-json, alpaca-jsonl, chat, qa or summarization)");
  const data::OutputShape to = data::parse_output_shape(f.str("to"));
  const auto map = f.has("map") ? data::parse_column_map(f.str("map")) : std::map<std::string, std::string>{};
  const std::string& in = f.positional()[0];
  const std::string& out = f.positional()[1];
  KOTOBA_CHECK(std::filesystem::absolute(in) != std::filesystem::absolute(out),
               "data convert: IN and OUT are the same file '", in, "'");
  const std::vector<data::SftExample> examples = data::read_sft_dataset(in, f.str("from", "auto"), map);
  data::write_sft_dataset(out, examples, to);
  std::cerr << "data convert: " << examples.size() << " examples -> " << out << " (" << f.str("to") << ")\n";
  return 0;
}

size_t code_points(const std::string& text) {
  return size_t(std::count_if(text.begin(), text.end(), [](char c) { return (uint8_t(c) & 0xC0) != 0x80; }));
}

// The tokenizer and template for `stats`: a model directory gives its tokenizer_config.json's
// special tokens and chat template; --template overrides the template; otherwise the shape's own
// (alpaca for instruction-shaped data, chatml for chat).
struct Tokenising {
  tokenizer::Tokenizer tokenizer;
  std::optional<chat::ChatTemplate> chat_template;
};

Tokenising load_tokenising(const std::string& path, const std::string& template_name, data::DatasetShape shape) {
  Tokenising t;
  tokenizer::TokenizerConfig config;
  std::string config_path;
  if (std::filesystem::is_directory(path)) {
    t.tokenizer = tokenizer::Tokenizer::load_dir(path);
    config_path = (std::filesystem::path(path) / "tokenizer_config.json").string();
    if (std::filesystem::exists(config_path)) config = tokenizer::TokenizerConfig::read(config_path);
  } else {
    t.tokenizer = tokenizer::Tokenizer::load(path);
  }
  const auto bos = t.tokenizer.bos_id(), eos = t.tokenizer.eos_id();
  const std::string bos_text = config.bos_token.value_or(bos ? t.tokenizer.id_to_token(*bos) : "");
  const std::string eos_text = config.eos_token.value_or(eos ? t.tokenizer.id_to_token(*eos) : "");
  if (!template_name.empty()) {
    t.chat_template.emplace(chat::parse_template_style(template_name), bos_text, eos_text);
  } else if (!config.chat_template.empty()) {
    t.chat_template.emplace(chat::ChatTemplate::from_tokenizer_config(config, config_path));
  } else {
    t.chat_template.emplace(shape == data::DatasetShape::chat ? chat::TemplateStyle::chatml : chat::TemplateStyle::alpaca,
                            bos_text, eos_text);
  }
  return t;
}

void print_histogram(const std::vector<int64_t>& sorted) {
  const int64_t lo = sorted.front(), hi = sorted.back();
  const int bins = int(std::min<int64_t>(10, hi - lo + 1));
  const int64_t width = (hi - lo + bins) / bins;  // ceil((hi - lo + 1) / bins)
  std::vector<size_t> counts(size_t(bins), 0);
  for (int64_t v : sorted) ++counts[size_t(std::min<int64_t>((v - lo) / width, bins - 1))];
  const size_t most = *std::max_element(counts.begin(), counts.end());
  for (int b = 0; b < bins; ++b) {
    const int64_t from = lo + b * width, to = std::min(hi, from + width - 1);
    const size_t bar = most ? (counts[size_t(b)] * 40 + most - 1) / most : 0;
    std::printf("  %7lld - %-7lld %7zu  %s\n", (long long)from, (long long)to, counts[size_t(b)],
                std::string(bar, '#').c_str());
  }
}

int stats(const cli::Args& args) {
  if (cli::wants_help(args)) {
    std::cout << "kotoba data stats FILE [--format auto|alpaca|chat|qa|summarization|text] [--map SRC=DST,...]\n"
                 "                  [--tokenizer tokenizer.json|MODEL_DIR] [--template chatml|llama2|alpaca|plain]\n"
                 "                  [--max-length N]\n"
                 "  Counts examples, turns (user and assistant messages) and characters (code points). With a\n"
                 "  tokenizer: the token length of each example as SFT sees it (rendered through the template:\n"
                 "  --template, else MODEL_DIR's tokenizer_config.json chat_template, else alpaca for instruction\n"
                 "  data and chatml for chat), as min/mean/median/p95/max and a histogram; with --max-length, how\n"
                 "  many examples it would truncate and the share of response (loss) tokens they would lose.\n";
    return 0;
  }
  Flags f = Flags::parse(args, "data stats", {"format", "map", "tokenizer", "template", "max-length"}, {}, 1);
  KOTOBA_CHECK(f.positional().size() == 1, "data stats: give one data set FILE (see kotoba data stats --help)");
  KOTOBA_CHECK(f.has("tokenizer") || (!f.has("max-length") && !f.has("template")),
               "data stats: --max-length and --template need --tokenizer");
  if (f.has("template")) chat::parse_template_style(f.str("template"));  // a bad name fails before the data is read
  const int64_t max_length = f.integer("max-length", 0);
  KOTOBA_CHECK(!f.has("max-length") || max_length >= 1, "data stats: --max-length must be >= 1, got ", max_length);
  const std::string& path = f.positional()[0];
  const std::string format = f.str("format", "auto");
  const auto map = f.has("map") ? data::parse_column_map(f.str("map")) : std::map<std::string, std::string>{};
  const std::vector<data::SftExample> examples = data::read_sft_dataset(path, format, map);
  const data::DatasetShape shape = data::detect_dataset_shape(path, format, map);

  size_t turns = 0, characters = 0;
  for (const data::SftExample& e : examples)
    for (const chat::Message& m : e.messages) {
      turns += !e.plain_text && m.role != "system";
      characters += code_points(m.content) + code_points(m.input);
    }
  std::printf("file        %s (%s)\nexamples    %zu\n", path.c_str(), data::dataset_shape_name(shape), examples.size());
  if (shape != data::DatasetShape::text) std::printf("turns       %zu\n", turns);
  std::printf("characters  %zu\n", characters);
  if (!f.has("tokenizer")) return 0;

  const Tokenising t = load_tokenising(f.str("tokenizer"), f.str("template"), shape);
  std::vector<int64_t> lengths;
  size_t truncated = 0, response_tokens = 0, response_lost = 0;
  for (const data::SftExample& e : examples) {
    const data::SftTokens tokens = data::tokenize_sft_example(e, *t.chat_template, t.tokenizer, 0);
    lengths.push_back(int64_t(tokens.ids.size()));
    for (size_t i = 0; i < tokens.labels.size(); ++i) {
      if (tokens.labels[i] == data::kIgnoreLabel) continue;
      ++response_tokens;
      response_lost += max_length > 0 && int64_t(i) >= max_length;
    }
    truncated += max_length > 0 && int64_t(tokens.ids.size()) > max_length;
  }
  std::vector<int64_t> sorted = lengths;
  std::sort(sorted.begin(), sorted.end());
  const size_t n = sorted.size();
  double sum = 0;
  for (int64_t v : sorted) sum += double(v);
  const double median = n % 2 ? double(sorted[n / 2]) : 0.5 * double(sorted[n / 2 - 1] + sorted[n / 2]);
  const int64_t p95 = sorted[size_t(std::ceil(0.95 * double(n))) - 1];  // nearest rank
  std::printf("template    %s\n", chat::template_style_name(t.chat_template->style()));
  std::printf("tokens      min %lld  mean %.1f  median %.1f  p95 %lld  max %lld  (total %.0f)\n", (long long)sorted.front(),
              sum / double(n), median, (long long)p95, (long long)sorted.back(), sum);
  std::printf("response tokens %zu (%.1f%% of all)\n", response_tokens, sum > 0 ? 100.0 * double(response_tokens) / sum : 0.0);
  std::printf("token length histogram:\n");
  print_histogram(sorted);
  if (max_length > 0) {
    std::printf("max-length %lld: %zu of %zu examples truncated (%.1f%%), %zu of %zu response tokens lost (%.1f%%)\n",
                (long long)max_length, truncated, n, 100.0 * double(truncated) / double(n), response_lost,
                response_tokens, response_tokens ? 100.0 * double(response_lost) / double(response_tokens) : 0.0);
  }
  return 0;
}

int cmd_data(const cli::Args& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::cout << kUsage;
    return args.empty() ? 2 : 0;
  }
  const cli::Args rest(args.begin() + 1, args.end());
  if (args[0] == "convert") return convert(rest);
  if (args[0] == "stats") return stats(rest);
  throw Error(kotoba::detail::concat("data: unknown subcommand '", args[0], "' (expected convert or stats)"));
}

}  // namespace

KOTOBA_COMMAND("data", "convert instruction data sets between shapes; token-length statistics", cmd_data);
