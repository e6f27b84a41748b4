// `kotoba prepare`: tokenise a text corpus into train/validation token shards for pretraining.
// Argument parsing only; the work is data::prepare_token_shards (data/prepare.h).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "core/progress.h"
#include "data/prepare.h"
#include "data/token_dataset.h"

using namespace kotoba;
using kotoba::cli::Flags;

namespace {

// Entropy in nats of the token frequencies of a split.
double unigram_entropy(const data::TokenDataset& split) {
  std::vector<double> counts(size_t(split.vocab_size()), 0.0);
  std::vector<int32_t> chunk(1 << 20);
  const int64_t n = split.size();
  for (int64_t at = 0; at < n; at += int64_t(chunk.size())) {
    const int64_t len = std::min<int64_t>(int64_t(chunk.size()), n - at);
    split.read(at, len, chunk.data());
    for (int64_t i = 0; i < len; ++i) counts[size_t(chunk[size_t(i)])] += 1;
  }
  double h = 0;
  for (double c : counts)
    if (c > 0) h -= c / double(n) * std::log(c / double(n));
  return h;
}


int cmd_prepare(const cli::Args& args) {
  if (cli::wants_help(args)) {
    std::cout
        << "kotoba prepare --tokenizer tokenizer.json --input FILE [FILE...] --out DIR\n"
           "               [--val-fraction 0.05] [--seed 1234] [--threads N] [--shard-tokens N]\n"
           "               [--split-lines] [--separator LINE] [--text-field text] [--overwrite] [--quiet] [--json]\n"
           "  Tokenises the corpus on all cores into DIR: train_*.bin / val_*.bin token shards and\n"
           "  meta.json (format in data/token_shards.h). Documents: one per line of a .jsonl file (its\n"
           "  \"text\" field); a plain-text file is one document, or one per non-blank line with\n"
           "  --split-lines, or separated by lines equal to --separator (e.g. '%' in fortune files).\n"
           "  The EOS token follows every document. --val-fraction of the documents,\n"
           "  chosen by --seed, form the validation split. DIR appears only when complete.\n"
           "  --json prints {\"train_tokens\",\"val_tokens\",\"documents\",\"seconds\"} as the last line.\n";
    return 0;
  }
  Flags f = Flags::parse(args, "prepare",
                         {"tokenizer", "input", "out", "val-fraction", "seed", "threads", "shard-tokens", "text-field", "separator"},
                         {"split-lines", "overwrite", "quiet", "json"}, /*max_positional=*/1000000);
  KOTOBA_CHECK(f.has("tokenizer"), "prepare: --tokenizer tokenizer.json is required");
  KOTOBA_CHECK(f.has("input"), "prepare: --input FILE... is required");
  KOTOBA_CHECK(f.has("out"), "prepare: --out DIR is required");
  data::PrepareOptions options;
  // `--input a b c`: the first file is the flag's value, the rest arrive as positional arguments.
  options.inputs.push_back(f.str("input"));
  for (const auto& p : f.positional()) options.inputs.push_back(p);
  options.out_dir = f.str("out");
  options.val_fraction = f.num("val-fraction", 0.05);
  KOTOBA_CHECK(f.integer("seed", 1234) >= 0, "prepare: --seed must be non-negative");
  options.seed = uint64_t(f.integer("seed", 1234));
  options.threads = int(f.integer("threads", 0));
  KOTOBA_CHECK(options.threads >= 0, "prepare: --threads must be >= 0 (0: all cores)");
  options.shard_tokens = f.integer("shard-tokens", options.shard_tokens);
  KOTOBA_CHECK(options.shard_tokens > 0, "prepare: --shard-tokens must be positive");
  options.corpus.split_lines = f.has("split-lines");
  options.corpus.separator_line = f.str("separator", "");
  options.corpus.text_field = f.str("text-field", "text");
  options.overwrite = f.has("overwrite");
  if (f.has("quiet")) set_progress_quiet(true);

  data::PrepareResult r = data::prepare_token_shards(options, f.str("tokenizer"));
  // The loss of a model that ignores context: the yardstick a trained model's loss is read against.
  const double entropy = unigram_entropy(data::TokenDataset::open(options.out_dir, "train"));
  if (f.has("json")) {
    nlohmann::json line = {{"train_tokens", r.train_tokens}, {"val_tokens", r.val_tokens},
                           {"documents", r.documents},       {"train_documents", r.train_documents},
                           {"val_documents", r.val_documents}, {"vocab_size", r.vocab_size},
                           {"seconds", r.seconds},           {"out", options.out_dir},
                           {"unigram_entropy", entropy}};
    std::cout << line.dump() << std::endl;
  } else if (!f.has("quiet")) {
    std::printf("%s: %lld documents -> %lld train tokens (%lld documents), %lld validation tokens (%lld documents), "
                "vocab %lld, %.1fs; token unigram entropy %.3f nats\n",
                options.out_dir.c_str(), (long long)r.documents, (long long)r.train_tokens,
                (long long)r.train_documents, (long long)r.val_tokens, (long long)r.val_documents,
                (long long)r.vocab_size, r.seconds, entropy);
  }
  return 0;
}

}  // namespace

KOTOBA_COMMAND("prepare", "tokenise a text corpus into train/validation token shards", cmd_prepare);
