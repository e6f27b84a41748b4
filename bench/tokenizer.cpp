// Byte-level BPE speed: training time, encode and decode MB/s on English text (Debian's
// fortunes by default), one thread and all. bench/tokenizer.sh runs HF tokenizers on the same
// tokenizer.json and documents (bench/tokenizer_peer.py) and prints the ratios.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using kotoba::tokenizer::Tokenizer;
using clock_type = std::chrono::steady_clock;

namespace {

std::string fortunes() {
  fs::path dir = "/usr/share/games/fortunes";
  KOTOBA_CHECK(fs::is_directory(dir), "bench_tokenizer: ", dir.string(),
               " is missing (apt-get install fortunes, or pass --text FILE)");
  std::vector<fs::path> files;
  for (auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && e.path().extension().empty()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::string text;
  for (auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::string line;
    while (std::getline(in, line))
      if (line != "%") text += line + "\n";
  }
  return text;
}

double seconds_since(clock_type::time_point t) { return std::chrono::duration<double>(clock_type::now() - t).count(); }

// Best of `reps` runs of fn, in seconds.
template <typename Fn>
double best_of(int reps, Fn&& fn) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    auto t = clock_type::now();
    fn();
    best = std::min(best, seconds_since(t));
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string text_path, out_dir = "bench-tokenizer";
    int vocab = 8192, repeat = 4, threads = 2;
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      auto value = [&] {
        KOTOBA_CHECK(i + 1 < argc, "bench_tokenizer: ", a, " needs a value");
        return std::string(argv[++i]);
      };
      if (a == "--text") text_path = value();
      else if (a == "--out") out_dir = value();
      else if (a == "--vocab-size") vocab = std::stoi(value());
      else if (a == "--repeat") repeat = std::stoi(value());
      else if (a == "--threads") threads = std::stoi(value());
      else throw kotoba::Error("bench_tokenizer: unknown argument '" + a +
                               "' (--text FILE --out DIR --vocab-size N --repeat R --threads T)");
    }
    std::string text;
    if (text_path.empty()) {
      text = fortunes();
    } else {
      std::ifstream in(text_path, std::ios::binary);
      KOTOBA_CHECK(in, "bench_tokenizer: cannot read '", text_path, "'");
      text.assign(std::istreambuf_iterator<char>(in), {});
    }
    fs::create_directories(out_dir);
    // The training corpus: the text `repeat` times over (tens of MB); counting scales with it.
    fs::path corpus = fs::path(out_dir) / "corpus.txt";
    {
      std::ofstream out(corpus, std::ios::binary);
      for (int r = 0; r < repeat; ++r) out << text;
    }
    double corpus_mb = double(text.size()) * repeat / 1e6;
    auto t = clock_type::now();
    Tokenizer tok = Tokenizer::train({corpus.string()}, {.vocab_size = vocab, .threads = threads, .show_progress = false});
    double train_s = seconds_since(t);
    fs::path tok_path = fs::path(out_dir) / "tokenizer.json";
    tok.save(tok_path.string());

    // Documents of about 4 KiB cut at line ends, written for the peer too.
    std::vector<std::string> docs;
    for (size_t pos = 0; pos < text.size();) {
      size_t end = std::min(text.size(), pos + 4096);
      size_t eol = text.find('\n', end);
      end = eol == std::string::npos ? text.size() : eol + 1;
      docs.push_back(text.substr(pos, end - pos));
      pos = end;
    }
    {
      std::ofstream out(fs::path(out_dir) / "docs.json");
      out << nlohmann::json(docs).dump();
    }
    std::vector<std::string_view> views(docs.begin(), docs.end());
    double mb = double(text.size()) / 1e6;
    size_t n_tokens = 0;
    double encode_1 = best_of(3, [&] {
      n_tokens = 0;
      auto ids = tok.encode_batch(views, 1);
      for (auto& d : ids) n_tokens += d.size();
    });
    double encode_n = best_of(3, [&] { tok.encode_batch(views, threads); });
    std::vector<int32_t> all;
    nlohmann::json per_doc = nlohmann::json::array();
    for (auto& d : docs) {
      auto ids = tok.encode(d);
      all.insert(all.end(), ids.begin(), ids.end());
      per_doc.push_back(ids);
    }
    {
      std::ofstream out(fs::path(out_dir) / "kotoba_ids.json");
      out << per_doc.dump();
    }
    std::string back;
    double decode_1 = best_of(3, [&] { back = tok.decode(all); });
    KOTOBA_CHECK(back == text, "bench_tokenizer: decode(encode(text)) != text");
    nlohmann::json result = {{"corpus_mb", corpus_mb},
                             {"train_seconds", train_s},
                             {"vocab_size", tok.vocab_size()},
                             {"text_mb", mb},
                             {"tokens", n_tokens},
                             {"bytes_per_token", double(text.size()) / double(n_tokens)},
                             {"encode_mb_s_1thread", mb / encode_1},
                             {"encode_mb_s_threads", mb / encode_n},
                             {"threads", threads},
                             {"decode_mb_s_1thread", mb / decode_1}};
    std::printf("kotoba: trained %d tokens on %.1f MB in %.2fs (%d threads); encode %.1f MB/s on 1 thread, "
                "%.1f MB/s on %d; decode %.0f MB/s; %.2f bytes/token\n",
                tok.vocab_size(), corpus_mb, train_s, threads, mb / encode_1, mb / encode_n, threads, mb / decode_1,
                double(text.size()) / double(n_tokens));
    std::printf("%s\n", result.dump().c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_tokenizer: error: %s\n", e.what());
    return 1;
  }
}
