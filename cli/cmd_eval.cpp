// `kotoba eval`: a model directory's loss and perplexity on a text or JSONL file, every token
// after the first of each window scored once (non-overlapping windows of the model's context).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "core/parallel.h"
#include "data/text_corpus.h"
#include "io/model_dir.h"
#include "ops/ops.h"
#include "tokenizer/tokenizer.h"

using namespace kotoba;
using kotoba::cli::Flags;

namespace {

int cmd_eval(const cli::Args& args) {
  if (cli::wants_help(args)) {
    std::cout << "kotoba eval MODEL --data FILE [--split-lines] [--seq T] [--batch B] [--threads N] [--json]\n"
                 "                  [--device cpu|cuda]\n"
                 "  Loss (nats/token) and perplexity of the model directory MODEL on FILE: plain text (one\n"
                 "  document, or one per non-blank line with --split-lines, as in `kotoba prepare`) or .jsonl (one\n"
                 "  {\"text\": ...} document per line). Documents are tokenised and\n"
                 "  joined with the EOS token as `kotoba prepare` does, then cut into non-overlapping windows of\n"
                 "  T tokens (default: the model's context, at most 2048); each token after a window's first is predicted once.\n"
                 "  --json prints {\"loss\", \"perplexity\", \"tokens\"} as the last line of stdout.\n"
                 "  --device cuda runs the model on the GPU (default cpu; LLM.int8() weights run on the CPU only).\n";
    return 0;
  }
  Flags f = Flags::parse(args, "eval", {"data", "seq", "batch", "threads", "device"}, {"json", "split-lines"}, 1);
  KOTOBA_CHECK(f.positional().size() == 1, "eval: expected the model directory (kotoba eval MODEL --data FILE)");
  KOTOBA_CHECK(f.has("data"), "eval: --data FILE is required");
  set_num_threads(int(f.integer("threads", 0)));
  const Device device = cli::device_flag(f, "eval");
  LoadedModel loaded = load_model_dir(f.positional()[0]);
  nn::CausalLM& model = *loaded.model;
  cli::move_model(model, device, "eval");
  const int64_t T = f.integer("seq", std::min<int64_t>(model.max_positions(), 2048)), B = f.integer("batch", 8);
  KOTOBA_CHECK(T >= 1 && T <= model.max_positions(), "eval: --seq must be in [1, the model's context = ",
               model.max_positions(), "], got ", T);
  KOTOBA_CHECK(B >= 1, "eval: --batch must be positive, got ", B);

  tokenizer::Tokenizer tok = tokenizer::Tokenizer::load_dir(loaded.dir);
  std::vector<data::Document> docs = data::read_documents(f.str("data"), {.split_lines = f.has("split-lines")});
  KOTOBA_CHECK(!docs.empty(), "eval: ", f.str("data"), " holds no documents");
  std::vector<std::string_view> texts;
  for (auto& d : docs) texts.push_back(d.text);
  std::vector<int32_t> ids;
  std::optional<int32_t> eos = tok.eos_id();
  for (auto& encoded : tok.encode_batch(texts)) {
    ids.insert(ids.end(), encoded.begin(), encoded.end());
    if (eos) ids.push_back(*eos);
  }
  KOTOBA_CHECK(ids.size() >= 2, "eval: ", f.str("data"), " has fewer than 2 tokens; nothing to predict");

  // Windows of T+1 tokens stepping by T: window w predicts tokens w*T+1 .. w*T+T. The tail that
  // does not fill a window is scored as one shorter window, so every token but the first counts.
  const int64_t n = int64_t(ids.size());
  std::vector<std::pair<int64_t, int64_t>> windows;  // (start, length of inputs)
  for (int64_t start = 0; start + 1 < n; start += T) windows.emplace_back(start, std::min(T, n - 1 - start));
  NoGradGuard no_grad;
  model.eval();
  double total_loss = 0;
  int64_t total_tokens = 0;
  for (size_t w = 0; w < windows.size();) {
    const int64_t len = windows[w].second;
    std::vector<int32_t> x, y;
    int64_t rows = 0;
    while (w < windows.size() && windows[w].second == len && rows < B) {
      int64_t s = windows[w].first;
      x.insert(x.end(), ids.begin() + s, ids.begin() + s + len);
      y.insert(y.end(), ids.begin() + s + 1, ids.begin() + s + 1 + len);
      ++rows;
      ++w;
    }
    auto ids = [&](const std::vector<int32_t>& v) { return on_device(Tensor::from_vector_i32(v, {rows, len}), device); };
    double mean = model.loss(ids(x), ids(y)).to_vector()[0];
    total_loss += mean * double(rows * len);
    total_tokens += rows * len;
  }
  const double loss = total_loss / double(total_tokens), perplexity = std::exp(loss);
  std::printf("%s on %s: loss %.4f nats/token, perplexity %.3f, %lld tokens (%zu documents, windows of %lld)\n",
              loaded.dir.c_str(), f.str("data").c_str(), loss, perplexity, (long long)total_tokens, docs.size(),
              (long long)T);
  if (f.has("json"))
    std::cout << nlohmann::json{{"loss", loss}, {"perplexity", perplexity}, {"tokens", total_tokens}}.dump() << std::endl;
  return 0;
}

}  // namespace

KOTOBA_COMMAND("eval", "loss and perplexity of a model directory on a text or JSONL file", cmd_eval);
