// `kotoba prepare` as a library call: read a corpus, tokenise it on all cores, and write train
// and validation token shards (token_shards.h) into a directory that appears whole or not at all.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "data/text_corpus.h"

namespace kotoba::tokenizer {
class Tokenizer;
}

namespace kotoba::data {

struct PrepareOptions {
  std::vector<std::string> inputs;  // plain text or .jsonl files (see text_corpus.h for documents)
  std::string out_dir;
  double val_fraction = 0.05;       // share of documents held out, chosen by a seeded shuffle
  uint64_t seed = 1234;
  int threads = 0;                  // 0: all cores
  CorpusOptions corpus = {};            // split_lines, text_field
  int64_t shard_tokens = int64_t(1) << 27;  // tokens per shard file (256 MiB of u16)
  bool overwrite = false;           // replace an existing out_dir (only once the new one is complete)
  bool show_progress = true;
  // Called after each encoded chunk with the tokens written so far (lets tests fail midway).
  std::function<void(int64_t tokens_written)> after_chunk = nullptr;
};

struct PrepareResult {
  int64_t train_tokens = 0, val_tokens = 0;
  int64_t documents = 0, train_documents = 0, val_documents = 0;
  int64_t vocab_size = 0;
  double seconds = 0;
};

// What prepare needs of a tokenizer; the Tokenizer overload below builds one from tokenizer.json.
struct TokenEncoder {
  int64_t vocab_size = 0;
  int32_t eos_id = -1;       // appended after every document
  std::string hash;          // recorded in meta.json ("tokenizer_hash")
  std::function<std::vector<std::vector<int32_t>>(const std::vector<std::string_view>&, int threads)> encode_batch;
};

PrepareResult prepare_token_shards(const PrepareOptions& options, const TokenEncoder& encoder);
// Loads the tokenizer.json at `tokenizer_path`; it must have an EOS (first special) token.
PrepareResult prepare_token_shards(const PrepareOptions& options, const std::string& tokenizer_path);
// The encoder refers to `tokenizer`, which must outlive it.
TokenEncoder token_encoder(const tokenizer::Tokenizer& tokenizer, std::string hash);

}  // namespace kotoba::data
