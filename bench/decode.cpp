// Decode speed of kotoba's batched generation with the KV cache: a model directory, a prompt of
// --prompt-tokens ids (the same fixed ids in every row), greedy decoding of --new-tokens tokens
// with no EOS (every row runs to the limit), at each batch size of --batches. Prints one JSON line
// per batch size; bench/decode.sh runs it beside llama.cpp (bench/decode_peer.py). --device cuda
// moves the model to the GPU after loading (decoding, the KV cache included, then runs there;
// each step still reads its logits back to the host, as `kotoba generate` does; --threads sizes
// the CPU's share). The JSON line names the device.
//
//   bench_decode MODEL_DIR [--prompt-tokens 512] [--new-tokens 128] [--batches 1,8] [--threads 2]
//                [--repeat 2] [--device cpu|cuda]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/parallel.h"
#include "infer/generate.h"
#include "io/model_dir.h"

using namespace kotoba;

int main(int argc, char** argv) try {
  bound_openmp_spinning(argv);  // as the kotoba command does
  std::string dir;
  int64_t prompt_tokens = 512, new_tokens = 128, threads = 2, repeat = 2;
  std::vector<int64_t> batches = {1, 8};
  Device device = Device::cpu;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      KOTOBA_CHECK(i + 1 < argc, "bench_decode: ", a, " needs a value");
      return argv[++i];
    };
    if (a == "--prompt-tokens") prompt_tokens = std::stoll(value());
    else if (a == "--new-tokens") new_tokens = std::stoll(value());
    else if (a == "--threads") threads = std::stoll(value());
    else if (a == "--repeat") repeat = std::stoll(value());
    else if (a == "--device") device = parse_device(value(), "bench_decode: --device");
    else if (a == "--batches") {
      batches.clear();
      std::string list = value();
      for (size_t b = 0; b < list.size();) {
        size_t e = std::min(list.find(',', b), list.size());
        batches.push_back(std::stoll(list.substr(b, e - b)));
        b = e + 1;
      }
    } else if (a.rfind("--", 0) != 0 && dir.empty()) dir = a;
    else throw Error(detail::concat("bench_decode: unknown argument '", a, "'"));
  }
  KOTOBA_CHECK(!dir.empty(), "bench_decode: expected MODEL_DIR");
  KOTOBA_CHECK(prompt_tokens >= 1 && new_tokens >= 2 && repeat >= 1, "bench_decode: bad sizes");
  set_num_threads(int(threads));
  LoadedModel loaded = load_model_dir(dir);
  nn::CausalLM& model = *loaded.model;
  if (device != Device::cpu) model.to(device);
  const int64_t V = model.vocab_size();
  int64_t params = 0;
  for (const Tensor& t : model.parameters()) params += t.numel();
  // The same ids as bench/decode_peer.py: a fixed arithmetic walk through the vocabulary.
  std::vector<int32_t> prompt;
  for (int64_t i = 0; i < prompt_tokens; ++i) prompt.push_back(int32_t((i * 7919 + 13) % V));

  infer::GenerationOptions o;
  o.do_sample = false;
  o.max_new_tokens = new_tokens;
  o.eos_token_ids = {};  // no EOS: every row decodes exactly new_tokens tokens
  for (int64_t b : batches) {
    const std::vector<std::vector<int32_t>> prompts(size_t(b), prompt);
    {  // warm-up: buffers, caches, thread pool
      infer::GenerationOptions w = o;
      w.max_new_tokens = 4;
      infer::generate_batch(model, prompts, w);
    }
    // The best of `repeat` runs: the machine is shared, the fastest run is the least disturbed.
    double best_decode = 1e300, best_prefill = 1e300;
    std::vector<int32_t> row0;  // row 0's tokens, to check both sides decode the same model
    for (int64_t r = 0; r < repeat; ++r) {
      std::vector<infer::GenerationResult> res = infer::generate_batch(model, prompts, o);
      for (const auto& x : res)
        KOTOBA_CHECK(int64_t(x.ids.size()) == new_tokens, "bench_decode: a row stopped early");
      best_decode = std::min(best_decode, res[0].decode_seconds);
      best_prefill = std::min(best_prefill, res[0].prefill_seconds);
      row0 = res[0].ids;
    }
    // decode_seconds runs from the first generated token to the last: new_tokens - 1 steps.
    nlohmann::json out{{"side", "kotoba"},
                       {"device", std::string(device_name(device))},
                       {"batch", b},
                       {"threads", threads},
                       {"prompt_tokens", prompt_tokens},
                       {"new_tokens", new_tokens},
                       {"decode_tokens_per_s", double(b * (new_tokens - 1)) / best_decode},
                       {"prefill_tokens_per_s", double(b * prompt_tokens) / best_prefill},
                       {"params", params},
                       {"ids", row0}};
    std::cout << out.dump() << std::endl;
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
