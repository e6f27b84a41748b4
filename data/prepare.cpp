// The prepare pipeline: corpus -> seeded document split -> chunked parallel encoding -> shards.
// Everything is written into a sibling temporary directory that is renamed into place only
// when complete, so an error at any point leaves no output directory behind.
#include "data/prepare.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "core/progress.h"
#include "core/rng.h"
#include "data/token_shards.h"

namespace kotoba::data {

namespace fs = std::filesystem;

namespace {

// Removes a directory tree on scope exit unless released.
class RemoveOnExit {
 public:
  explicit RemoveOnExit(fs::path path) : path_(std::move(path)) {}
  ~RemoveOnExit() {
    if (path_.empty()) return;
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  void release() { path_.clear(); }

 private:
  fs::path path_;
};

fs::path unique_sibling(const fs::path& target, const char* tag) {
  uint64_t salt = mix64(uint64_t(::getpid()) ^ uint64_t(std::chrono::steady_clock::now().time_since_epoch().count()));
  for (int attempt = 0;; ++attempt) {
    char suffix[40];
    std::snprintf(suffix, sizeof suffix, ".%s-%08llx", tag, (unsigned long long)(mix64(salt + uint64_t(attempt)) >> 32));
    fs::path candidate = target.parent_path() / (target.filename().string() + suffix);
    if (!fs::exists(candidate)) return candidate;
  }
}

// Marks exactly round(n * fraction) documents (at least 1, at most n - 1) as validation, chosen
// by a Fisher-Yates shuffle driven by the seed: the same corpus and seed give the same split.
std::vector<bool> choose_validation(int64_t n, double fraction, uint64_t seed) {
  std::vector<bool> is_val(size_t(n), false);
  if (fraction <= 0) return is_val;
  int64_t k = std::clamp<int64_t>(std::llround(double(n) * fraction), 1, n - 1);
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[size_t(i)] = i;
  for (int64_t i = n - 1; i > 0; --i) {
    auto j = int64_t((unsigned __int128)mix64(seed * 0x9e3779b97f4a7c15ull + uint64_t(i)) * uint64_t(i + 1) >> 64);
    std::swap(order[size_t(i)], order[size_t(j)]);
  }
  for (int64_t i = 0; i < k; ++i) is_val[size_t(order[size_t(i)])] = true;
  return is_val;
}

}  // namespace

PrepareResult prepare_token_shards(const PrepareOptions& options, const TokenEncoder& encoder) {
  auto start_time = std::chrono::steady_clock::now();
  KOTOBA_CHECK(!options.inputs.empty(), "prepare: no --input files given");
  KOTOBA_CHECK(!options.out_dir.empty(), "prepare: no --out directory given");
  KOTOBA_CHECK(options.val_fraction >= 0 && options.val_fraction < 1, "prepare: --val-fraction must be in [0, 1), got ",
               options.val_fraction);
  KOTOBA_CHECK(encoder.vocab_size > 0 && encoder.encode_batch, "prepare: the tokenizer is not usable (vocab_size ",
               encoder.vocab_size, ")");
  KOTOBA_CHECK(encoder.eos_id >= 0 && encoder.eos_id < encoder.vocab_size, "prepare: the tokenizer's EOS id ",
               encoder.eos_id, " is outside its vocabulary of ", encoder.vocab_size);
  fs::path out = fs::path(options.out_dir).lexically_normal();
  if (out.filename().empty()) out = out.parent_path();  // "dir/" -> "dir"
  KOTOBA_CHECK(!fs::exists(out) || options.overwrite, "prepare: --out '", out.string(),
               "' already exists (remove it, choose another directory, or pass --overwrite)");
  KOTOBA_CHECK(out.parent_path().empty() || fs::is_directory(out.parent_path()), "prepare: the parent of --out '",
               out.string(), "' does not exist");

  Corpus corpus = read_corpus(options.inputs, options.corpus);
  const auto n_docs = int64_t(corpus.documents.size());
  KOTOBA_CHECK(options.val_fraction == 0 || n_docs >= 2, "prepare: a validation split needs at least 2 documents, the "
               "corpus has ", n_docs, " (pass --val-fraction 0, more files, or --split-lines)");
  std::vector<bool> is_val = choose_validation(n_docs, options.val_fraction, options.seed);

  fs::path tmp = unique_sibling(out, "tmp");
  fs::create_directory(tmp);
  RemoveOnExit cleanup(tmp);

  PrepareResult result;
  result.documents = n_docs;
  result.vocab_size = encoder.vocab_size;
  {
    ShardWriter train(tmp, "train", encoder.vocab_size, options.shard_tokens);
    ShardWriter val(tmp, "val", encoder.vocab_size, options.shard_tokens);
    ProgressOptions bar{.unit = "MB", .unit_scale = 1e-6, .quiet = !options.show_progress};
    Progress progress("tokenising", corpus.text_bytes, bar);
    // Chunks of ~16 MB of text: large enough to keep every core busy, small enough to bound
    // the memory of the token lists.
    const int64_t chunk_bytes = int64_t(16) << 20;
    std::vector<std::string_view> texts;
    for (int64_t first = 0; first < n_docs;) {
      int64_t last = first, bytes = 0;
      texts.clear();
      while (last < n_docs && (last == first || bytes < chunk_bytes)) {
        texts.emplace_back(corpus.documents[size_t(last)].text);
        bytes += int64_t(texts.back().size());
        ++last;
      }
      auto encoded = encoder.encode_batch(texts, options.threads);
      KOTOBA_CHECK(encoded.size() == texts.size(), "prepare: the tokenizer returned ", encoded.size(),
                   " encodings for ", texts.size(), " documents");
      for (int64_t d = first; d < last; ++d) {
        auto& ids = encoded[size_t(d - first)];
        ids.push_back(encoder.eos_id);
        ShardWriter& writer = is_val[size_t(d)] ? val : train;
        writer.append(ids);
        (is_val[size_t(d)] ? result.val_documents : result.train_documents) += 1;
      }
      progress.add(bytes);
      progress.set_extra(format_count(double(train.tokens() + val.tokens())) + " tokens");
      if (options.after_chunk) options.after_chunk(train.tokens() + val.tokens());
      first = last;
    }
    train.finish();
    val.finish();
    progress.finish();
    result.train_tokens = train.tokens();
    result.val_tokens = val.tokens();

    ShardIndex index;
    index.vocab_size = encoder.vocab_size;
    index.eos_id = encoder.eos_id;
    index.tokenizer_hash = encoder.hash;
    index.seed = options.seed;
    index.val_fraction = options.val_fraction;
    index.train = {train.tokens(), result.train_documents, train.shard_names()};
    index.val = {val.tokens(), result.val_documents, val.shard_names()};
    write_shard_index(tmp, index);
  }

  if (fs::exists(out)) {
    // --overwrite: move the old directory aside, put the new one in place, then delete the old.
    fs::path old = unique_sibling(out, "old");
    fs::rename(out, old);
    try {
      fs::rename(tmp, out);
    } catch (...) {
      std::error_code ec;
      fs::rename(old, out, ec);
      throw;
    }
    std::error_code ec;
    fs::remove_all(old, ec);
  } else {
    fs::rename(tmp, out);
  }
  cleanup.release();
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_time).count();
  return result;
}

}  // namespace kotoba::data
