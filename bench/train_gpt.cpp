// Training-throughput benchmark: GPT-2 + AdamW steps on random tokens from a JSON config, and
// OpenBLAS sgemm 2048^3 in the same process as the machine's f32 GEMM peak. Last line: JSON.
//
//   bench_train_gpt CONFIG.json [--steps N] [--warmup N] [--profile] [--device cpu|cuda]
//                   [--precision f32|bf16]
//
// bench/train_gpt runs this and the PyTorch peer (bench/train_gpt_peer.py) and compares them.
#include <cblas.h>
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/parallel.h"
#include "core/rng.h"
#include "nn/gpt2.h"
#include "ops/backend.h"
#include "train/optim.h"

using namespace kotoba;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

namespace {

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double peak_rss_mb() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

// ---- config ----

struct BenchConfig {
  std::string name;  // file stem, e.g. "gpt-small"
  int64_t n_layer = 0, n_head = 0, n_embd = 0, block = 0, vocab = 0, batch = 0, threads = 0;
};

int64_t positive_int(const json& j, const std::string& path, const char* key) {
  KOTOBA_CHECK(j.contains(key), path, ": missing key '", key, "'");
  const json& v = j.at(key);
  KOTOBA_CHECK(v.is_number_integer(), path, ": key '", key, "' must be an integer, got ", v.dump());
  int64_t x = v.get<int64_t>();
  KOTOBA_CHECK(x > 0, path, ": key '", key, "' must be positive, got ", x);
  return x;
}

void expect_string(const json& j, const std::string& path, const char* key, const char* want) {
  KOTOBA_CHECK(j.contains(key), path, ": missing key '", key, "'");
  const json& v = j.at(key);
  KOTOBA_CHECK(v.is_string() && v.get<std::string>() == want, path, ": key '", key, "' must be \"", want,
               "\" for this benchmark, got ", v.dump());
}

BenchConfig read_config(const std::string& path) {
  std::ifstream in(path);
  KOTOBA_CHECK(in.good(), path, ": cannot open the benchmark config");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw Error(path + ": not valid JSON: " + e.what());
  }
  KOTOBA_CHECK(j.is_object(), path, ": the config must be a JSON object");
  expect_string(j, path, "arch", "gpt2");
  expect_string(j, path, "optimizer", "adamw");
  expect_string(j, path, "dtype", "f32");
  BenchConfig c;
  c.n_layer = positive_int(j, path, "n_layer");
  c.n_head = positive_int(j, path, "n_head");
  c.n_embd = positive_int(j, path, "n_embd");
  c.block = positive_int(j, path, "block");
  c.vocab = positive_int(j, path, "vocab");
  c.batch = positive_int(j, path, "batch");
  c.threads = positive_int(j, path, "threads");
  KOTOBA_CHECK(c.n_embd % c.n_head == 0, path, ": key 'n_embd' (", c.n_embd, ") must be divisible by 'n_head' (",
               c.n_head, ")");
  KOTOBA_CHECK(c.vocab <= INT32_MAX, path, ": key 'vocab' does not fit token ids of type i32");
  size_t slash = path.find_last_of('/');
  c.name = path.substr(slash == std::string::npos ? 0 : slash + 1);
  if (size_t dot = c.name.rfind(".json"); dot != std::string::npos) c.name.resize(dot);
  return c;
}

struct Options {
  std::string config_path;
  int steps = 10;
  int warmup = 2;
  bool profile = false;
  Device device = Device::cpu;
  DType precision = DType::f32;  // bf16: mixed precision (AutocastScope), f32 master weights
};

int parse_count(const char* flag, const char* value, int min) {
  KOTOBA_CHECK(value != nullptr, flag, " needs a number");
  char* end = nullptr;
  long v = std::strtol(value, &end, 10);
  KOTOBA_CHECK(end != value && *end == '\0' && v >= min && v <= 1000000, flag,
               " must be an integer >= ", min, ", got '", value, "'");
  return int(v);
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    const char* next = i + 1 < argc ? argv[i + 1] : nullptr;
    if (a == "--steps") o.steps = parse_count("--steps", next, 1), ++i;
    else if (a == "--warmup") o.warmup = parse_count("--warmup", next, 0), ++i;
    else if (a == "--profile") o.profile = true;
    else if (a == "--device") {
      KOTOBA_CHECK(next != nullptr, "--device needs cpu or cuda");
      o.device = parse_device(next, "--device"), ++i;
    } else if (a == "--precision") {
      KOTOBA_CHECK(next != nullptr, "--precision needs f32 or bf16");
      o.precision = parse_precision(next, "--precision"), ++i;
    }
    else if (a == "-h" || a == "--help") {
      std::cout << "usage: bench_train_gpt CONFIG.json [--steps N] [--warmup N] [--profile] [--device cpu|cuda]\n"
                   "                       [--precision f32|bf16]\n";
      std::exit(0);
    } else {
      KOTOBA_CHECK(a.rfind("--", 0) != 0, "unknown flag '", a, "'");
      KOTOBA_CHECK(o.config_path.empty(), "more than one config path given ('", o.config_path,
                   "', '", a, "')");
      o.config_path = a;
    }
  }
  KOTOBA_CHECK(!o.config_path.empty(), "no config given (usage: bench_train_gpt CONFIG.json "
               "[--steps N] [--warmup N] [--profile])");
  return o;
}

// ---- per-kernel profile: wraps every function of the device's kernel table with a timer ----
// Lives here, not in the library: the bench installs a copy of the table whose entries time
// the original kernels. Host kernels return when done; on a GPU each timed kernel is bracketed
// by waits for the stream, so it measures that kernel's device time (and serialises launches:
// the profiled step is slower than a plain one, the shares are what it is for).

struct KernelTime {
  double seconds = 0;
  int64_t calls = 0;
  double flops = 0;  // gemm only
};
std::map<std::string, KernelTime> g_kernel_times;
bool g_profiling = false;
Backend g_timed_backend;
const Backend* g_original_backend = nullptr;

template <typename Args>
void account(const char* name, const Args&, double s) {
  KernelTime& t = g_kernel_times[name];
  t.seconds += s, t.calls += 1;
}

// gemm is split by shape, since its calls dominate and differ in efficiency.
void account(const char*, const GemmArgs& a, double s) {
  char key[128];
  std::snprintf(key, sizeof key, "gemm %c%c %s>%s m%lld n%lld k%lld b%lld", a.trans_a ? 'T' : 'N',
                a.trans_b ? 'T' : 'N', std::string(dtype_name(a.dtype_ab)).c_str(),
                std::string(dtype_name(a.dtype_c)).c_str(), (long long)a.m, (long long)a.n, (long long)a.k,
                (long long)a.batch);
  KernelTime& t = g_kernel_times[key];
  t.seconds += s, t.calls += 1, t.flops += 2.0 * double(a.m) * double(a.n) * double(a.k) * double(a.batch);
}

void wait_for_device() {
  if (g_original_backend->synchronize) g_original_backend->synchronize();
}

#define KOTOBA_TIMED_KERNEL(name, Args)                                \
  void timed_##name(const Args& args) {                                \
    if (!g_profiling) return g_original_backend->name(args);          \
    wait_for_device();                                                 \
    auto t0 = Clock::now();                                            \
    g_original_backend->name(args);                                    \
    wait_for_device();                                                 \
    account(#name, args, seconds_since(t0));                           \
  }
KOTOBA_KERNELS(KOTOBA_TIMED_KERNEL)
#undef KOTOBA_TIMED_KERNEL

void install_kernel_timers(Device device) {
  g_original_backend = &backend_for(device);
  g_timed_backend = *g_original_backend;
#define KOTOBA_INSTALL_TIMER(name, Args) \
  if (g_original_backend->name) g_timed_backend.name = timed_##name;
  KOTOBA_KERNELS(KOTOBA_INSTALL_TIMER)
#undef KOTOBA_INSTALL_TIMER
  register_backend(device, &g_timed_backend);
}

void print_profile(int steps, double step_seconds_total) {
  std::vector<std::pair<std::string, KernelTime>> rows(g_kernel_times.begin(), g_kernel_times.end());
  std::sort(rows.begin(), rows.end(), [](auto& a, auto& b) { return a.second.seconds > b.second.seconds; });
  double kernels = 0, gemm_s = 0, gemm_flops = 0;
  for (auto& [name, t] : rows) {
    kernels += t.seconds;
    if (name.rfind("gemm", 0) == 0) gemm_s += t.seconds, gemm_flops += t.flops;
  }
  std::printf("profile: %d steps, time per step by kernel (ms), share of the step\n", steps);
  for (auto& [name, t] : rows) {
    std::printf("  %-34s %9.2f ms %5.1f%%  %5lld calls", name.c_str(), 1e3 * t.seconds / steps,
                100.0 * t.seconds / step_seconds_total, (long long)(t.calls / steps));
    if (t.flops > 0) std::printf("  %6.1f GFLOP/s", t.flops / t.seconds * 1e-9);
    std::printf("\n");
  }
  std::printf("  %-34s %9.2f ms %5.1f%%  (%.1f GFLOP/s)\n", "all gemm", 1e3 * gemm_s / steps,
              100.0 * gemm_s / step_seconds_total, gemm_flops / gemm_s * 1e-9);
  std::printf("  %-34s %9.2f ms %5.1f%%\n", "outside kernels (tape, alloc, glue)",
              1e3 * (step_seconds_total - kernels) / steps, 100.0 * (step_seconds_total - kernels) / step_seconds_total);
}

// ---- OpenBLAS sgemm 2048^3: the f32 GEMM peak the training run is compared with ----

struct SgemmResult {
  double best_gflops, median_gflops;
};

SgemmResult sgemm_peak(int64_t n, int warmup, int runs) {
  std::vector<float> a(size_t(n * n)), b(size_t(n * n)), c(size_t(n * n), 0.0f);
  for (size_t i = 0; i < a.size(); ++i) {
    a[i] = uniform_at(7, i) - 0.5f;
    b[i] = uniform_at(8, i) - 0.5f;
  }
  std::vector<double> gflops;
  for (int r = 0; r < warmup + runs; ++r) {
    auto t0 = Clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), int(n), int(n), 1.0f, a.data(), int(n), b.data(),
                int(n), 0.0f, c.data(), int(n));
    double s = seconds_since(t0);
    if (r >= warmup) gflops.push_back(2.0 * double(n) * double(n) * double(n) / s * 1e-9);
  }
  return {*std::max_element(gflops.begin(), gflops.end()), median(gflops)};
}

// Token ids from the counter-based mix64, so the peer (bench/train_gpt_peer.py) can draw the
// very same batches: id = mix64(seed * 1000003 + index) % V.
void fill_tokens(Tensor& t, uint64_t seed, int64_t vocab) {
  int32_t* p = t.data<int32_t>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = int32_t(mix64(seed * 1000003ull + uint64_t(i)) % uint64_t(vocab));
}

int run(const Options& opt) {
  BenchConfig cfg = read_config(opt.config_path);
  set_num_threads(int(cfg.threads));
  double rss_start_mb = peak_rss_mb();

  nn::GPT2 model(nn::GPT2Config{.vocab_size = cfg.vocab,
                                .n_positions = cfg.block,
                                .n_embd = cfg.n_embd,
                                .n_layer = cfg.n_layer,
                                .n_head = cfg.n_head,
                                .dropout = 0.0f});
  model.train();
  model.to(opt.device);
  train::AdamW optim(model.named_parameters(), train::AdamWConfig{.lr = 3e-4f, .weight_decay = 0.1f});
  std::vector<Tensor> params = model.parameters();

  // Model FLOPs per token (nanoGPT's estimate_mfu, after PaLM appendix B):
  //   6 N + 12 L H (C/H) T,  N = every parameter except the position table, the tied wte
  //   counted once (as the LM head matmul); 12 L H (C/H) T is QK^T and AV, forward + backward,
  //   counted without the causal half-saving.
  int64_t n_params = model.parameter_count();
  int64_t n_flop_params = n_params - model.wpe.weight.numel();
  double flops_per_token = 6.0 * double(n_flop_params) + 12.0 * double(cfg.n_layer * cfg.n_embd * cfg.block);

  const int64_t B = cfg.batch, T = cfg.block;
  Tensor ids = Tensor::empty({B, T}, DType::i32), targets = Tensor::empty({B, T}, DType::i32);

  if (opt.profile) install_kernel_timers(opt.device);

  std::vector<double> step_s, fwd_s, bwd_s, opt_s;
  float first_loss = 0, last_loss = 0;
  for (int s = 0; s < opt.warmup + opt.steps; ++s) {
    bool timed = s >= opt.warmup;
    fill_tokens(ids, 2 * uint64_t(s) + 1, cfg.vocab);
    fill_tokens(targets, 2 * uint64_t(s) + 2, cfg.vocab);
    g_profiling = opt.profile && timed;

    auto t0 = Clock::now();
    optim.zero_grad();
    Tensor loss;
    {
      AutocastScope autocast(opt.precision);
      loss = model.loss(on_device(ids, opt.device), on_device(targets, opt.device));
    }
    auto t1 = Clock::now();
    loss.backward();
    auto t2 = Clock::now();
    float norm = train::global_grad_norm(params);
    optim.step(train::clip_coefficient(norm, 1.0f));
    float l = loss.to_vector()[0];  // on a GPU this waits for the step to finish
    auto t3 = Clock::now();

    KOTOBA_CHECK(std::isfinite(l), "the loss became non-finite at step ", s);
    if (s == 0) first_loss = l;
    last_loss = l;
    if (timed) {
      step_s.push_back(std::chrono::duration<double>(t3 - t0).count());
      fwd_s.push_back(std::chrono::duration<double>(t1 - t0).count());
      bwd_s.push_back(std::chrono::duration<double>(t2 - t1).count());
      opt_s.push_back(std::chrono::duration<double>(t3 - t2).count());
    }
  }
  g_profiling = false;
  double train_peak_rss_mb = peak_rss_mb();  // before the sgemm buffers below

  double step = median(step_s);
  double tokens_per_s = double(B * T) / step;
  double gflops = tokens_per_s * flops_per_token * 1e-9;
  SgemmResult peak = sgemm_peak(2048, 2, 7);

  for (size_t i = 0; i < step_s.size(); ++i)
    std::printf("step %zu: %.1f ms (forward %.1f, backward %.1f, clip+adamw %.1f)\n", i, 1e3 * step_s[i],
                1e3 * fwd_s[i], 1e3 * bwd_s[i], 1e3 * opt_s[i]);
  if (opt.profile) {
    double total = 0;
    for (double x : step_s) total += x;
    print_profile(opt.steps, total);
  }

  json out = {
      {"bench", "train_gpt"},
      {"impl", "kotoba"},
      {"config", cfg.name},
      {"isa", std::string(cpu_isa())},
      {"device", std::string(device_name(opt.device))},
      {"precision", std::string(dtype_name(opt.precision))},
      {"attention", attention_algorithm() == AttentionAlgorithm::fused    ? "fused"
                    : attention_algorithm() == AttentionAlgorithm::matmul ? "matmul"
                                                                          : "automatic"},
      {"threads", cfg.threads},
      {"batch", B},
      {"seq", T},
      {"params", n_params},
      {"flops_per_token", flops_per_token},
      {"warmup", opt.warmup},
      {"steps", opt.steps},
      {"step_ms_median", 1e3 * step},
      {"step_ms_min", 1e3 * *std::min_element(step_s.begin(), step_s.end())},
      {"forward_ms", 1e3 * median(fwd_s)},
      {"backward_ms", 1e3 * median(bwd_s)},
      {"optimizer_ms", 1e3 * median(opt_s)},
      {"tokens_per_s", tokens_per_s},
      {"gflops", gflops},
      {"sgemm_gflops", peak.best_gflops},
      {"sgemm_gflops_median", peak.median_gflops},
      {"peak_share", gflops / peak.best_gflops},
      {"peak_rss_mb", train_peak_rss_mb},
      {"start_rss_mb", rss_start_mb},
      {"loss_first", first_loss},
      {"loss_last", last_loss},
  };
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "bench_train_gpt: error: %s\n", e.what());
    return 1;
  }
}
