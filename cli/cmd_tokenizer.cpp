// `kotoba tokenizer train|encode|decode`: byte-level BPE or WordPiece (BERT) from the command line.
// Argument parsing only; the work is tokenizer::Tokenizer (tokenizer/tokenizer.h) and
// tokenizer::WordPiece (tokenizer/wordpiece.h).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/command.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/wordpiece.h"

using namespace kotoba;
using kotoba::cli::Flags;
using tokenizer::Tokenizer;

namespace {

const char* const kUsage =
    "kotoba tokenizer train  --input FILE [FILE...] --vocab-size N --out tokenizer.json\n"
    "                        [--special TOKEN]... [--min-frequency 2] [--threads N] [--quiet] [--json]\n"
    "                        [--type bpe|wordpiece] [--no-lowercase] [--strip-accents|--no-strip-accents]\n"
    "                        [--vocab-txt vocab.txt]\n"
    "kotoba tokenizer encode --tokenizer tokenizer.json [--json] (TEXT | --file FILE)\n"
    "kotoba tokenizer decode --tokenizer tokenizer.json [--json] ID [ID...]\n"
    "  Byte-level BPE as GPT-2, or WordPiece as BERT (HF tokenizer.json format). `kotoba tokenizer <sub> --help` for details.\n";

int train(const cli::Args& args) {
  if (cli::wants_help(args)) {
    std::cout << "kotoba tokenizer train --input FILE [FILE...] --vocab-size N --out tokenizer.json\n"
                 "                       [--special TOKEN]... [--min-frequency 2] [--threads N] [--quiet] [--json]\n"
                 "  Learns a byte-level BPE vocabulary of N tokens (256 bytes + specials + merges) from text\n"
                 "  files (a .jsonl file: the \"text\" field of each line). --special may repeat; default\n"
                 "  <|endoftext|> (--special '' for none). Merges seen fewer than --min-frequency times are\n"
                 "  not learned. Writes an HF tokenizer.json atomically. --json prints\n"
                 "  {\"vocab_size\",\"merges\",\"seconds\"} as the last line.\n"
                 "  --type wordpiece learns a BERT WordPiece vocabulary instead: BERT normalisation (lowercase\n"
                 "  unless --no-lowercase; accents stripped when lowercasing unless --no-strip-accents, or\n"
                 "  always with --strip-accents; CJK characters and punctuation split off), \"##\" continuation\n"
                 "  pieces, specials [PAD] [UNK] [CLS] [SEP] [MASK] by default, [CLS] ... [SEP] added when\n"
                 "  encoding for a model. --vocab-txt also writes BERT's vocab.txt. --threads applies to BPE.\n";
    return 0;
  }
  Flags f = Flags::parse(args, "tokenizer train",
                         {"input", "vocab-size", "out", "special", "min-frequency", "threads", "type", "vocab-txt"},
                         {"quiet", "json", "no-lowercase", "strip-accents", "no-strip-accents"}, /*max_positional=*/1000000);
  KOTOBA_CHECK(f.has("input"), "tokenizer train: --input FILE... is required");
  KOTOBA_CHECK(f.has("vocab-size"), "tokenizer train: --vocab-size N is required");
  KOTOBA_CHECK(f.has("out"), "tokenizer train: --out tokenizer.json is required");
  // `--input a b c` and `--input a --input b` both work: extra files arrive as positional arguments.
  std::vector<std::string> inputs = f.all("input");
  for (const auto& p : f.positional()) inputs.push_back(p);
  const std::string type = f.has("type") ? f.str("type") : "bpe";
  KOTOBA_CHECK(type == "bpe" || type == "wordpiece", "tokenizer train: --type must be bpe or wordpiece, got '", type, "'");
  int64_t vocab = f.integer("vocab-size", 0);
  KOTOBA_CHECK(vocab > 0 && vocab < (int64_t(1) << 31), "tokenizer train: --vocab-size must be positive");
  if (type == "wordpiece") {
    tokenizer::WordPieceTrainOptions wo;
    wo.vocab_size = int32_t(vocab);
    if (f.has("special")) {
      wo.special_tokens.clear();
      for (const auto& s : f.all("special"))
        if (!s.empty()) wo.special_tokens.push_back(s);
    }
    wo.min_frequency = f.integer("min-frequency", 2);
    KOTOBA_CHECK(wo.min_frequency >= 1, "tokenizer train: --min-frequency must be >= 1 for wordpiece");
    KOTOBA_CHECK(!(f.has("strip-accents") && f.has("no-strip-accents")),
                 "tokenizer train: give at most one of --strip-accents and --no-strip-accents");
    wo.normalizer.lowercase = !f.has("no-lowercase");
    if (f.has("strip-accents")) wo.normalizer.strip_accents = true;
    if (f.has("no-strip-accents")) wo.normalizer.strip_accents = false;
    wo.show_progress = !f.has("quiet");
    auto t0 = std::chrono::steady_clock::now();
    tokenizer::WordPiece wp = tokenizer::WordPiece::train(inputs, wo);
    wp.save(f.str("out"));
    if (f.has("vocab-txt")) wp.save_vocab_txt(f.str("vocab-txt"));
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("wrote %s: WordPiece vocabulary %d tokens, %.2fs\n", f.str("out").c_str(), wp.size(), seconds);
    if (f.has("json"))
      std::printf("%s\n", nlohmann::json{{"vocab_size", wp.size()}, {"seconds", seconds}}.dump().c_str());
    return 0;
  }
  KOTOBA_CHECK(!f.has("vocab-txt") && !f.has("no-lowercase") && !f.has("strip-accents") && !f.has("no-strip-accents"),
               "tokenizer train: --vocab-txt, --no-lowercase and --(no-)strip-accents apply to --type wordpiece");
  tokenizer::TrainOptions options;
  options.vocab_size = int32_t(vocab);
  if (f.has("special")) {
    options.special_tokens.clear();
    for (const auto& s : f.all("special"))
      if (!s.empty()) options.special_tokens.push_back(s);
  }
  options.min_frequency = f.integer("min-frequency", 2);
  KOTOBA_CHECK(options.min_frequency >= 0, "tokenizer train: --min-frequency must be >= 0");
  options.threads = int(f.integer("threads", 0));
  KOTOBA_CHECK(options.threads >= 0, "tokenizer train: --threads must be >= 0 (0: all cores)");
  options.show_progress = !f.has("quiet");
  auto t0 = std::chrono::steady_clock::now();
  Tokenizer tok = Tokenizer::train(inputs, options);
  tok.save(f.str("out"));
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  int32_t merges = tok.vocab_size() - 256 - int32_t(options.special_tokens.size());
  std::printf("wrote %s: vocabulary %d tokens, %.2fs\n", f.str("out").c_str(), tok.vocab_size(), seconds);
  if (f.has("json"))
    std::printf("%s\n", nlohmann::json{{"vocab_size", tok.vocab_size()}, {"merges", merges}, {"seconds", seconds}}
                            .dump()
                            .c_str());
  return 0;
}

int encode(const cli::Args& args) {
  if (cli::wants_help(args)) {
    std::cout << "kotoba tokenizer encode --tokenizer tokenizer.json [--json] (TEXT | --file FILE)\n"
                 "  Prints the token ids of TEXT (or of the whole of FILE) on one line, separated by spaces;\n"
                 "  special tokens written in the text are matched. --json prints {\"ids\": [...], \"tokens\": n}\n"
                 "  as the last line instead.\n";
    return 0;
  }
  Flags f = Flags::parse(args, "tokenizer encode", {"tokenizer", "file"}, {"json"}, /*max_positional=*/1);
  KOTOBA_CHECK(f.has("tokenizer"), "tokenizer encode: --tokenizer tokenizer.json is required");
  KOTOBA_CHECK(f.has("file") != (f.positional().size() == 1),
               "tokenizer encode: give either TEXT or --file FILE (exactly one)");
  std::string text;
  if (f.has("file")) {
    std::ifstream in(f.str("file"), std::ios::binary);
    KOTOBA_CHECK(in, "tokenizer encode: cannot open --file '", f.str("file"), "'");
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  } else {
    text = f.positional()[0];
  }
  Tokenizer tok = Tokenizer::load(f.str("tokenizer"));
  std::vector<int32_t> ids;
  try {
    ids = tok.encode(text);
  } catch (const Error& e) {
    throw Error(kotoba::detail::concat(f.has("file") ? "--file '" + f.str("file") + "'" : std::string("TEXT"), ": ",
                                       e.what()));
  }
  if (f.has("json")) {
    std::printf("%s\n", nlohmann::json{{"ids", ids}, {"tokens", ids.size()}}.dump().c_str());
  } else {
    std::string line;
    for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
    std::printf("%s\n", line.c_str());
  }
  return 0;
}

int decode(const cli::Args& args) {
  if (cli::wants_help(args)) {
    std::cout << "kotoba tokenizer decode --tokenizer tokenizer.json [--json] ID [ID...]\n"
                 "  Prints the text of the token ids (also accepted comma-separated). --json prints\n"
                 "  {\"text\": ...} instead (an incomplete UTF-8 sequence there becomes U+FFFD).\n";
    return 0;
  }
  Flags f = Flags::parse(args, "tokenizer decode", {"tokenizer"}, {"json"}, /*max_positional=*/1000000000);
  KOTOBA_CHECK(f.has("tokenizer"), "tokenizer decode: --tokenizer tokenizer.json is required");
  std::vector<int32_t> ids;
  for (const auto& arg : f.positional()) {
    size_t pos = 0;
    while (pos <= arg.size()) {
      size_t comma = arg.find(',', pos);
      std::string item = arg.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
      pos = comma == std::string::npos ? arg.size() + 1 : comma + 1;
      if (item.empty()) continue;
      size_t used = 0;
      long long v = -1;
      try {
        v = std::stoll(item, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      KOTOBA_CHECK(used == item.size() && v >= 0 && v < (1ll << 31), "tokenizer decode: '", item,
                   "' is not a token id (a non-negative integer)");
      ids.push_back(int32_t(v));
    }
  }
  Tokenizer tok = Tokenizer::load(f.str("tokenizer"));
  std::string text = tok.decode(ids);
  if (f.has("json")) {
    std::printf("%s\n", nlohmann::json{{"text", text}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::printf("\n");
  }
  return 0;
}

int cmd_tokenizer(const cli::Args& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::cout << kUsage;
    return args.empty() ? 2 : 0;
  }
  cli::Args rest(args.begin() + 1, args.end());
  if (args[0] == "train") return train(rest);
  if (args[0] == "encode") return encode(rest);
  if (args[0] == "decode") return decode(rest);
  throw Error(kotoba::detail::concat("tokenizer: unknown subcommand '", args[0],
                                     "' (expected train, encode or decode; see kotoba tokenizer --help)"));
}

}  // namespace

KOTOBA_COMMAND("tokenizer", "train a byte-level BPE or WordPiece tokenizer; encode and decode text with one",
               cmd_tokenizer);
