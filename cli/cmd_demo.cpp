// `kotoba demo`: the engine end to end on a small default — a byte-level GPT-2 trained on
// English text for a few minutes, its validation loss against the unigram entropy, and samples.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "cli/command.h"
#include "core/parallel.h"
#include "nn/gpt2.h"
#include "ops/backend.h"
#include "train/optim.h"
#include "train/plot.h"

using namespace kotoba;
using kotoba::cli::Flags;
namespace fs = std::filesystem;

namespace {

std::string read_corpus(const std::string& path_arg) {
  std::vector<fs::path> files;
  if (!path_arg.empty()) {
    KOTOBA_CHECK(fs::exists(path_arg), "demo: --text '", path_arg, "' does not exist");
    files.push_back(path_arg);
  } else {
    // Debian's `fortunes` package: plain English text, cookies separated by '%' lines.
    fs::path dir = "/usr/share/games/fortunes";
    KOTOBA_CHECK(fs::is_directory(dir), "demo: no --text given and ", dir.string(),
                 " is missing (apt-get install fortunes, or pass --text FILE)");
    for (auto& e : fs::directory_iterator(dir)) {
      auto name = e.path().filename().string();
      if (e.is_regular_file() && e.path().extension().empty() && name.find("art") == std::string::npos)
        files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
  }
  std::string text;
  for (auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    KOTOBA_CHECK(in, "demo: cannot read '", f.string(), "'");
    std::string line;
    while (std::getline(in, line))
      if (line != "%") text += line + "\n";
  }
  KOTOBA_CHECK(text.size() > 10000, "demo: the corpus is too small (", text.size(), " bytes); need at least 10 kB");
  return text;
}

// Entropy in nats of the byte distribution: the loss of a model that ignores context.
double unigram_entropy(const std::string& text) {
  double counts[256] = {};
  for (unsigned char c : text) counts[c] += 1;
  double h = 0;
  for (double c : counts)
    if (c > 0) h -= c / double(text.size()) * std::log(c / double(text.size()));
  return h;
}

void fill_batch(const std::string& data, int64_t B, int64_t T, Generator& gen, Tensor& x, Tensor& y) {
  int32_t* xi = x.data<int32_t>();
  int32_t* yi = y.data<int32_t>();
  for (int64_t b = 0; b < B; ++b) {
    size_t start = size_t(gen.uniform() * float(data.size() - size_t(T) - 1));
    for (int64_t t = 0; t < T; ++t) {
      xi[b * T + t] = (unsigned char)data[start + size_t(t)];
      yi[b * T + t] = (unsigned char)data[start + size_t(t) + 1];
    }
  }
}

std::string sample(nn::GPT2& model, const std::string& prompt, int new_tokens, float temperature, int top_k,
                   Generator& gen) {
  NoGradGuard no_grad;
  model.eval();
  std::vector<int32_t> ids(prompt.begin(), prompt.end());
  std::string out = prompt;
  int64_t window = model.config().n_positions;
  for (int i = 0; i < new_tokens; ++i) {
    int64_t T = std::min<int64_t>(int64_t(ids.size()), window);
    std::vector<int32_t> ctx(ids.end() - T, ids.end());
    Tensor logits = model.logits(Tensor::from_vector_i32(ctx, {1, T}));
    const float* last = logits.data<float>() + (T - 1) * 256;
    std::vector<std::pair<float, int>> ranked;
    for (int v = 0; v < 256; ++v) ranked.emplace_back(last[v] / temperature, v);
    std::partial_sort(ranked.begin(), ranked.begin() + top_k, ranked.end(), std::greater<>());
    float mx = ranked[0].first, total = 0;
    for (int j = 0; j < top_k; ++j) total += std::exp(ranked[size_t(j)].first - mx);
    float r = gen.uniform() * total;
    int next = ranked[0].second;
    for (int j = 0; j < top_k; ++j) {
      r -= std::exp(ranked[size_t(j)].first - mx);
      if (r <= 0) {
        next = ranked[size_t(j)].second;
        break;
      }
    }
    ids.push_back(next);
    out += char(next);
  }
  model.train();
  return out;
}

int cmd_demo(const std::vector<std::string>& args) {
  if (cli::wants_help(args)) {
    std::cout << "kotoba demo [--text FILE] [--minutes M] [--threads N] [--seed S] [--out DIR]\n"
                 "  Trains a small byte-level GPT-2 on English text (default: Debian's fortunes) for M minutes\n"
                 "  (default 3), printing training and validation loss, then samples text from it.\n"
                 "  Writes DIR/loss.csv and its plot DIR/loss.png (default DIR: ./demo-run).\n";
    return 0;
  }
  Flags f = Flags::parse(args, "demo", {"text", "minutes", "threads", "seed", "out"});
  double minutes = f.num("minutes", 3.0);
  KOTOBA_CHECK(minutes > 0, "demo: --minutes must be positive");
  set_num_threads(int(f.num("threads", 0)));
  uint64_t seed = uint64_t(f.num("seed", 1234));
  fs::path out_dir = f.str("out", "demo-run");
  fs::create_directories(out_dir);

  std::string text = read_corpus(f.str("text", ""));
  size_t split = text.size() * 9 / 10;
  std::string train_text = text.substr(0, split), val_text = text.substr(split);
  double h1 = unigram_entropy(text);
  std::printf("corpus: %.1f MB of text (train %.1f MB, validation %.1f MB); byte unigram entropy %.3f nats\n",
              double(text.size()) / 1e6, double(train_text.size()) / 1e6, double(val_text.size()) / 1e6, h1);

  nn::GPT2Config config{.vocab_size = 256, .n_positions = 128, .n_embd = 192, .n_layer = 4, .n_head = 4,
                        .seed = seed};
  nn::GPT2 model(config);
  const int64_t B = 16, T = config.n_positions;
  std::printf("model: GPT-2, %lld layers x %lld wide, %lld heads, context %lld bytes, %.2fM parameters; "
              "batch %lld x %lld; %d threads, %s kernels\n",
              (long long)config.n_layer, (long long)config.n_embd, (long long)config.n_head, (long long)T,
              double(model.parameter_count()) / 1e6, (long long)B, (long long)T, num_threads(),
              std::string(cpu_isa()).c_str());
  train::AdamW opt(model.named_parameters(), {.lr = 2e-3f, .beta2 = 0.99f, .weight_decay = 0.1f});
  Generator data_gen(seed + 1), sample_gen(seed + 2);
  Tensor x = Tensor::empty({B, T}, DType::i32), y = Tensor::empty({B, T}, DType::i32);

  auto validation_loss = [&] {
    NoGradGuard no_grad;
    model.eval();
    Generator val_gen(99);  // the same validation batches every time
    double total = 0;
    const int batches = 8;
    for (int i = 0; i < batches; ++i) {
      fill_batch(val_text, B, T, val_gen, x, y);
      total += model.loss(x, y).to_vector()[0];
    }
    model.train();
    return total / batches;
  };

  std::ofstream csv(out_dir / "loss.csv");
  csv << "step,seconds,train_loss,val_loss\n";
  train::Series train_curve{.name = "train loss (EMA)", .x = {}, .y = {}};
  train::Series val_curve{.name = "validation loss", .x = {}, .y = {}};
  auto log_val = [&](int64_t at, double seconds, double v) {
    csv << at << "," << seconds << ",," << v << "\n";
    val_curve.x.push_back(double(at)), val_curve.y.push_back(v);
  };
  using clock = std::chrono::steady_clock;
  auto start = clock::now();
  double budget = minutes * 60.0, elapsed = 0;
  int64_t estimated_steps = 1000000, warmup = 30;
  double val = validation_loss();
  std::printf("step     0  val loss %.3f (untrained; ln 256 = %.3f)\n", val, std::log(256.0));
  log_val(0, 0, val);
  float loss_avg = 0;
  int64_t step = 0;
  for (step = 1; elapsed < budget; ++step) {
    if (step == 20) estimated_steps = int64_t(budget / (elapsed / 19.0));  // cosine over the time budget
    float progress = std::min(1.0f, float(step) / float(estimated_steps));
    float lr = step < warmup ? 2e-3f * float(step) / float(warmup)
                             : 2e-4f + 0.5f * (2e-3f - 2e-4f) * (1.0f + std::cos(3.14159265f * progress));
    opt.set_lr(lr);
    fill_batch(train_text, B, T, data_gen, x, y);
    opt.zero_grad();
    Tensor loss = model.loss(x, y);
    float l = loss.to_vector()[0];
    KOTOBA_CHECK(std::isfinite(l), "demo: the training loss became ", l, " at step ", step);
    loss.backward();
    opt.step(train::clip_coefficient(train::global_grad_norm(model.parameters()), 1.0f));
    loss_avg = step == 1 ? l : 0.9f * loss_avg + 0.1f * l;
    train_curve.x.push_back(double(step)), train_curve.y.push_back(loss_avg);  // the plot takes every step
    elapsed = std::chrono::duration<double>(clock::now() - start).count();
    if (step % 25 == 0) {
      double tps = double(step * B * T) / elapsed;
      std::printf("\rstep %5lld  loss %.3f  %7.0f tokens/s  %4.0fs left   ", (long long)step, loss_avg, tps,
                  std::max(0.0, budget - elapsed));
      std::fflush(stdout);
      csv << step << "," << elapsed << "," << loss_avg << ",\n";
    }
    if (step % 200 == 0) {
      val = validation_loss();
      std::printf("\rstep %5lld  loss %.3f  val loss %.3f                         \n", (long long)step, loss_avg, val);
      log_val(step, elapsed, val);
    }
  }
  val = validation_loss();
  log_val(step - 1, elapsed, val);  // the loop exits with step one past the last step taken
  csv.close();
  train::write_line_plot((out_dir / "loss.png").string(), {train_curve, val_curve}, "kotoba demo: byte-level GPT-2",
                         "step", "loss (nats/byte)");
  std::printf("\rdone: %lld steps in %.0fs; validation loss %.3f nats/byte vs unigram entropy %.3f\n",
              (long long)(step - 1), elapsed, val, h1);
  std::printf("loss curve: %s, plotted in %s\n\n", (out_dir / "loss.csv").string().c_str(),
              (out_dir / "loss.png").string().c_str());
  for (const char* prompt : {"The ", "A man ", "Q: What is "}) {
    std::printf("--- sample (temperature 0.8, top-k 40) ---\n%s\n\n",
                sample(model, prompt, 240, 0.8f, 40, sample_gen).c_str());
  }
  return 0;
}

}  // namespace

KOTOBA_COMMAND("demo", "train a small byte-level GPT-2 on English text and sample from it", cmd_demo);
