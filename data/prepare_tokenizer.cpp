// The tokenizer side of prepare, kept in its own file so the shard pipeline (prepare.cpp) links
// without the tokenizer, e.g. into tests that feed it a fake encoder.
#include <memory>

#include "core/error.h"
#include "data/prepare.h"
#include "data/token_shards.h"
#include "tokenizer/tokenizer.h"

namespace kotoba::data {

TokenEncoder token_encoder(const tokenizer::Tokenizer& tokenizer, std::string hash) {
  TokenEncoder encoder;
  encoder.vocab_size = tokenizer.vocab_size();
  auto eos = tokenizer.eos_id();
  KOTOBA_CHECK(eos.has_value(), "the tokenizer has no special token to separate documents with (train it with "
               "<|endoftext|> as its first special token)");
  encoder.eos_id = *eos;
  encoder.hash = std::move(hash);
  encoder.encode_batch = [&tokenizer](const std::vector<std::string_view>& texts, int threads) {
    return tokenizer.encode_batch(texts, threads);
  };
  return encoder;
}

PrepareResult prepare_token_shards(const PrepareOptions& options, const std::string& tokenizer_path) {
  tokenizer::Tokenizer tokenizer = tokenizer::Tokenizer::load(tokenizer_path);
  return prepare_token_shards(options, token_encoder(tokenizer, tokenizer_file_hash(tokenizer_path)));
}

}  // namespace kotoba::data
