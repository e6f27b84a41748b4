// Byte-level BPE (GPT-2 style): the merge table and encoder, the trainer (parallel word
// counting, then merges with incremental pair counts), decoding, and HF tokenizer.json I/O.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <queue>
#include <thread>
#include <unistd.h>
#include <unordered_map>
#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"
#include "tokenizer/pretokenize.h"

namespace kotoba::tokenizer {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

// GPT-2's byte-to-unicode map: printable Latin-1 bytes stand for themselves, the other 68
// bytes take the code points from U+0100 upwards in byte order, so every token is printable.
struct ByteAlphabet {
  std::array<char32_t, 256> to_cp{};
  std::array<std::string, 256> to_utf8;
  std::unordered_map<char32_t, uint8_t> from_cp;
  ByteAlphabet() {
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      to_cp[size_t(b)] = printable ? char32_t(b) : char32_t(next++);
      from_cp[to_cp[size_t(b)]] = uint8_t(b);
      to_utf8[size_t(b)] = utf8(to_cp[size_t(b)]);
    }
  }
  static std::string utf8(char32_t cp) {
    std::string s;
    if (cp < 0x80) {
      s += char(cp);
    } else if (cp < 0x800) {
      s += char(0xC0 | (cp >> 6));
      s += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      s += char(0xE0 | (cp >> 12));
      s += char(0x80 | ((cp >> 6) & 0x3F));
      s += char(0x80 | (cp & 0x3F));
    } else {
      s += char(0xF0 | (cp >> 18));
      s += char(0x80 | ((cp >> 12) & 0x3F));
      s += char(0x80 | ((cp >> 6) & 0x3F));
      s += char(0x80 | (cp & 0x3F));
    }
    return s;
  }
  // Raw bytes to the token string stored in tokenizer.json ("Ġthe" for " the").
  std::string encode(std::string_view bytes) const {
    std::string s;
    for (unsigned char b : bytes) s += to_utf8[b];
    return s;
  }
  // Token string (valid UTF-8) back to raw bytes; nullopt when a character is outside the alphabet.
  std::optional<std::string> decode(std::string_view token) const {
    std::string out;
    const auto* s = reinterpret_cast<const unsigned char*>(token.data());
    for (size_t i = 0; i < token.size();) {
      size_t len = 0;
      char32_t cp = detail::decode_utf8(s + i, len);
      auto it = from_cp.find(cp);
      if (it == from_cp.end()) return std::nullopt;
      out += char(it->second);
      i += len;
    }
    return out;
  }
};
const ByteAlphabet& alphabet() {
  static const ByteAlphabet a;
  return a;
}

constexpr uint64_t kNoMerge = ~0ull;
inline uint64_t pair_key(int32_t a, int32_t b) { return uint64_t(uint32_t(a)) << 32 | uint32_t(b); }

// (left id, right id) -> (rank << 32 | merged id), open addressing: the encoder's hot lookup.
class PairTable {
 public:
  void build(const std::vector<std::pair<int32_t, int32_t>>& merges, const std::vector<int32_t>& merged) {
    size_t cap = 16;
    while (cap < merges.size() * 2 + 16) cap <<= 1;
    keys_.assign(cap, kNoMerge);
    vals_.assign(cap, kNoMerge);
    mask_ = cap - 1;
    for (size_t r = 0; r < merges.size(); ++r) {
      uint64_t key = pair_key(merges[r].first, merges[r].second);
      size_t slot = hash(key);
      while (keys_[slot] != kNoMerge && keys_[slot] != key) slot = (slot + 1) & mask_;
      if (keys_[slot] == key) continue;  // a repeated merge keeps its first (lowest) rank
      keys_[slot] = key;
      vals_[slot] = uint64_t(r) << 32 | uint32_t(merged[r]);
    }
  }
  uint64_t find(int32_t a, int32_t b) const {
    if (keys_.empty()) return kNoMerge;
    uint64_t key = pair_key(a, b);
    for (size_t slot = hash(key);; slot = (slot + 1) & mask_) {
      if (keys_[slot] == key) return vals_[slot];
      if (keys_[slot] == kNoMerge) return kNoMerge;
    }
  }

 private:
  size_t hash(uint64_t key) const { return size_t((key * 0x9E3779B97F4A7C15ull) >> 20) & mask_; }
  std::vector<uint64_t> keys_, vals_;
  size_t mask_ = 0;
};

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// Per-thread cache of encoded words; keyed by the owning tokenizer's serial so that a new
// tokenizer at a recycled address never sees another's entries.
struct WordCache {
  uint64_t owner = 0;
  std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> words;
};
constexpr size_t kCacheMaxWordBytes = 64;
constexpr size_t kCacheMaxEntries = 1 << 16;
std::atomic<uint64_t> next_serial{1};

const char* const kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

void check_utf8(std::string_view text, const std::string& where, size_t base_offset = 0) {
  size_t bad = find_invalid_utf8(text);
  KOTOBA_CHECK(bad == std::string_view::npos, where, ": not valid UTF-8 at byte offset ", base_offset + bad);
}

int resolve_threads(int threads) {
  if (threads > 0) return threads;
  unsigned hc = std::thread::hardware_concurrency();
  return hc ? int(hc) : 1;
}

// Runs body(worker) on `threads` threads and rethrows the first exception.
void run_parallel(int threads, const std::function<void(int)>& body) {
  if (threads <= 1) {
    body(0);
    return;
  }
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(threads));
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      try {
        body(t);
      } catch (...) {
        errors[size_t(t)] = std::current_exception();
      }
    });
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace

struct Tokenizer::Impl {
  struct Added {
    std::string content;
    int32_t id = 0;
    bool special = true, lstrip = false, rstrip = false, normalized = false;
  };

  std::vector<std::string> tokens;       // id -> stored token string
  std::vector<std::string> token_bytes;  // id -> the bytes it decodes to
  std::vector<char> in_model_vocab;      // id -> listed in model.vocab (else only in added_tokens)
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> token_ids;
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> bytes_ids;  // ignore_merges
  std::vector<std::pair<int32_t, int32_t>> merges;  // by rank
  PairTable merge_table;
  std::array<int32_t, 256> byte_ids{};
  std::vector<Added> added;  // in file order
  std::vector<size_t> added_by_length;  // indices into `added`, longest first
  bool add_prefix_space = false, ignore_merges = false;
  std::optional<int32_t> unk_id;
  // Sections of a loaded file kotoba does not interpret, written back unchanged on save.
  json post_processor = nullptr, truncation = nullptr, padding = nullptr;
  json pre_tokenizer_json, decoder_json;
  uint64_t serial = next_serial++;

  // Fills the derived tables once tokens, merges and added are set.
  void finalize(const std::string& where) {
    const ByteAlphabet& ab = alphabet();
    token_ids.clear();
    bytes_ids.clear();
    token_bytes.assign(tokens.size(), {});
    std::vector<char> is_added(tokens.size(), 0);
    for (const Added& a : added) is_added[size_t(a.id)] = 1;
    for (size_t id = 0; id < tokens.size(); ++id) {
      token_ids.emplace(tokens[id], int32_t(id));
      if (is_added[id]) {
        token_bytes[id] = tokens[id];
      } else {
        // As HF's ByteLevel decoder: a token with a character outside the alphabet decodes raw.
        auto raw = ab.decode(tokens[id]);
        token_bytes[id] = raw ? *raw : tokens[id];
      }
      bytes_ids.emplace(token_bytes[id], int32_t(id));
    }
    for (int b = 0; b < 256; ++b) {
      auto it = token_ids.find(ab.to_utf8[size_t(b)]);
      byte_ids[size_t(b)] = it == token_ids.end() ? -1 : it->second;
    }
    std::vector<int32_t> merged(merges.size());
    for (size_t r = 0; r < merges.size(); ++r) {
      auto it = token_ids.find(tokens[size_t(merges[r].first)] + tokens[size_t(merges[r].second)]);
      KOTOBA_CHECK(it != token_ids.end(), where, ": field model.merges[", r, "]: '", tokens[size_t(merges[r].first)],
                   tokens[size_t(merges[r].second)], "' (the merged token) is not in model.vocab");
      merged[r] = it->second;
    }
    merge_table.build(merges, merged);
    added_by_length.resize(added.size());
    for (size_t i = 0; i < added.size(); ++i) added_by_length[i] = i;
    std::stable_sort(added_by_length.begin(), added_by_length.end(),
                     [&](size_t x, size_t y) { return added[x].content.size() > added[y].content.size(); });
    serial = next_serial++;
  }

  // BPE on one pre-token: byte symbols, then the lowest-rank adjacent pair (leftmost on ties)
  // merged until none is in the table — HF's order, which a heap gives for long words.
  void encode_word(std::string_view word, std::vector<int32_t>& out, WordCache& cache) const {
    if (word.size() <= kCacheMaxWordBytes) {
      auto it = cache.words.find(word);
      if (it != cache.words.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    size_t first = out.size();
    if (ignore_merges) {
      auto it = bytes_ids.find(word);
      if (it != bytes_ids.end() && it->second < int32_t(in_model_vocab.size()) && in_model_vocab[size_t(it->second)]) {
        out.push_back(it->second);
        remember(word, out, first, cache);
        return;
      }
    }
    std::vector<int32_t> syms;
    syms.reserve(word.size());
    for (unsigned char b : word) {
      int32_t id = byte_ids[b];
      if (id < 0) {
        KOTOBA_CHECK(unk_id.has_value(), "tokenizer: the vocabulary has no token for byte 0x", std::hex, int(b),
                     " and no unk_token");
        id = *unk_id;
      }
      syms.push_back(id);
    }
    if (syms.size() <= 48) merge_small(syms);
    else merge_large(syms);
    out.insert(out.end(), syms.begin(), syms.end());
    remember(word, out, first, cache);
  }

  void remember(std::string_view word, const std::vector<int32_t>& out, size_t first, WordCache& cache) const {
    if (word.size() > kCacheMaxWordBytes) return;
    if (cache.words.size() >= kCacheMaxEntries) cache.words.clear();
    cache.words.emplace(std::string(word), std::vector<int32_t>(out.begin() + std::ptrdiff_t(first), out.end()));
  }

  void merge_small(std::vector<int32_t>& syms) const {
    if (syms.size() < 2) return;
    // ranks[p] describes the pair (syms[p], syms[p+1]): rank << 32 | merged id, or kNoMerge.
    uint64_t ranks[48];
    size_t n = syms.size();
    for (size_t p = 0; p + 1 < n; ++p) ranks[p] = merge_table.find(syms[p], syms[p + 1]);
    while (n > 1) {
      size_t best = 0;
      for (size_t p = 1; p + 1 < n; ++p)
        if (ranks[p] < ranks[best]) best = p;  // strict: the leftmost of equal ranks
      if (ranks[best] == kNoMerge) break;
      syms[best] = int32_t(uint32_t(ranks[best]));
      for (size_t p = best + 1; p + 1 < n; ++p) syms[p] = syms[p + 1];
      for (size_t p = best; p + 2 < n; ++p) ranks[p] = ranks[p + 1];
      --n;
      if (best > 0) ranks[best - 1] = merge_table.find(syms[best - 1], syms[best]);
      if (best + 1 < n) ranks[best] = merge_table.find(syms[best], syms[best + 1]);
    }
    syms.resize(n);
  }

  void merge_large(std::vector<int32_t>& syms) const {
    const size_t n = syms.size();
    std::vector<int32_t> prev(n), next(n);
    for (size_t i = 0; i < n; ++i) {
      prev[i] = int32_t(i) - 1;
      next[i] = i + 1 < n ? int32_t(i + 1) : -1;
    }
    // (rank << 32 | merged id, position): smallest first, so equal ranks go leftmost first.
    using Entry = std::pair<uint64_t, int32_t>;
    std::priority_queue<Entry, std::vector<Entry>, std::greater<>> heap;
    for (size_t i = 0; i + 1 < n; ++i) {
      uint64_t r = merge_table.find(syms[i], syms[i + 1]);
      if (r != kNoMerge) heap.emplace(r, int32_t(i));
    }
    std::vector<char> alive(n, 1);
    while (!heap.empty()) {
      auto [r, pos] = heap.top();
      heap.pop();
      if (!alive[size_t(pos)] || next[size_t(pos)] < 0) continue;
      int32_t nx = next[size_t(pos)];
      if (merge_table.find(syms[size_t(pos)], syms[size_t(nx)]) != r) continue;  // stale entry
      syms[size_t(pos)] = int32_t(uint32_t(r));
      alive[size_t(nx)] = 0;
      next[size_t(pos)] = next[size_t(nx)];
      if (next[size_t(pos)] >= 0) prev[size_t(next[size_t(pos)])] = pos;
      if (prev[size_t(pos)] >= 0) {
        uint64_t left = merge_table.find(syms[size_t(prev[size_t(pos)])], syms[size_t(pos)]);
        if (left != kNoMerge) heap.emplace(left, prev[size_t(pos)]);
      }
      if (next[size_t(pos)] >= 0) {
        uint64_t right = merge_table.find(syms[size_t(pos)], syms[size_t(next[size_t(pos)])]);
        if (right != kNoMerge) heap.emplace(right, pos);
      }
    }
    size_t w = 0;
    for (int32_t i = 0; i >= 0; i = next[size_t(i)]) syms[w++] = syms[size_t(i)];
    syms.resize(w);
  }

  // Text without added tokens: pre-tokens, then BPE on each.
  void encode_plain(std::string_view text, std::vector<int32_t>& out, WordCache& cache) const {
    if (text.empty()) return;
    auto word = [&](std::string_view w) { encode_word(w, out, cache); };
    if (add_prefix_space && text.front() != ' ') {
      std::string prefixed = " " + std::string(text);
      pretokenize_gpt2(prefixed, word);
    } else {
      pretokenize_gpt2(text, word);
    }
  }

  void encode(std::string_view text, std::vector<int32_t>& out) const {
    size_t bad = find_invalid_utf8(text);
    KOTOBA_CHECK(bad == std::string_view::npos, "tokenizer: the text to encode is not valid UTF-8 at byte offset ",
                 bad);
    thread_local WordCache cache;
    if (cache.owner != serial) {
      cache.words.clear();
      cache.owner = serial;
    }
    if (added.empty()) {
      encode_plain(text, out, cache);
      return;
    }
    // Added tokens are found first, leftmost-longest; the text between them is encoded as usual.
    std::vector<size_t> next_at(added.size(), 0);
    std::vector<char> searched(added.size(), 0);
    size_t pos = 0;
    while (pos < text.size()) {
      size_t best_at = std::string_view::npos, best = 0;
      for (size_t k : added_by_length) {
        const std::string& c = added[k].content;
        if (c.empty()) continue;
        if (!searched[k] || (next_at[k] != std::string_view::npos && next_at[k] < pos)) {
          next_at[k] = text.find(c, pos);
          searched[k] = 1;
        }
        if (next_at[k] < best_at) best_at = next_at[k], best = k;  // longest first: ties keep it
      }
      if (best_at == std::string_view::npos) break;
      size_t start = best_at, end = best_at + added[best].content.size();
      if (added[best].lstrip)
        while (start > pos && is_space_before(text, start)) start = step_back(text, start);
      if (added[best].rstrip)
        while (end < text.size() && is_space_at(text, end)) end = step_forward(text, end);
      encode_plain(text.substr(pos, start - pos), out, cache);
      out.push_back(added[best].id);
      pos = end;
    }
    if (pos < text.size()) encode_plain(text.substr(pos), out, cache);
  }

  static size_t step_back(std::string_view t, size_t i) {
    do --i;
    while (i > 0 && (static_cast<unsigned char>(t[i]) & 0xC0) == 0x80);
    return i;
  }
  static size_t step_forward(std::string_view t, size_t i) {
    size_t len = 0;
    detail::decode_utf8(reinterpret_cast<const unsigned char*>(t.data()) + i, len);
    return i + len;
  }
  static bool is_space_at(std::string_view t, size_t i) {
    size_t len = 0;
    return detail::class_at(reinterpret_cast<const unsigned char*>(t.data()) + i, len) == CharClass::space;
  }
  static bool is_space_before(std::string_view t, size_t i) { return is_space_at(t, step_back(t, i)); }
};

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  impl_->encode(text, out);
  return out;
}

std::vector<std::vector<int32_t>> Tokenizer::encode_batch(const std::vector<std::string_view>& texts,
                                                          int threads) const {
  std::vector<std::vector<int32_t>> out(texts.size());
  const int t = std::min<int>(resolve_threads(threads), int(std::max<size_t>(texts.size(), 1)));
  // OpenMP keeps its worker threads between calls, so their word caches stay warm across batches.
  std::vector<std::string> errors(texts.size());
  std::atomic<bool> failed{false};
#pragma omp parallel for schedule(dynamic, 1) num_threads(t)
  for (size_t i = 0; i < texts.size(); ++i) {
    if (failed.load(std::memory_order_relaxed)) continue;
    try {
      out[i] = encode(texts[i]);
    } catch (const std::exception& e) {
      errors[i] = e.what();
      failed = true;
    }
  }
  if (failed)
    for (size_t i = 0; i < texts.size(); ++i)
      if (!errors[i].empty()) throw Error(kotoba::detail::concat("tokenizer: document ", i, " of the batch: ", errors[i]));
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  const int32_t n = vocab_size();
  for (size_t i = 0; i < ids.size(); ++i) {
    int32_t id = ids[i];
    KOTOBA_CHECK(id >= 0 && id < n, "tokenizer: decode: id ", id, " at position ", i, " is outside the vocabulary [0, ",
                 n, ")");
    out += impl_->token_bytes[size_t(id)];
  }
  return out;
}

int32_t Tokenizer::vocab_size() const { return int32_t(impl_->tokens.size()); }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  auto it = impl_->token_ids.find(token);
  if (it == impl_->token_ids.end()) return std::nullopt;
  return it->second;
}

std::string Tokenizer::id_to_token(int32_t id) const {
  KOTOBA_CHECK(id >= 0 && id < vocab_size(), "tokenizer: id ", id, " is outside the vocabulary [0, ", vocab_size(),
               ")");
  return impl_->tokens[size_t(id)];
}

std::optional<int32_t> Tokenizer::eos_id() const {
  for (const auto& a : impl_->added)
    if (a.special) return a.id;
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// Training

namespace {

using WordCounts = std::unordered_map<std::string, int64_t, StringHash, std::equal_to<>>;
using ViewCounts = std::unordered_map<std::string_view, int64_t>;

// Counts the pre-tokens of `text` line by line (as HF's trainer reads files), skipping special
// tokens so that they are never merged into ordinary words.
void count_words(std::string_view text, const std::vector<std::string>& specials, ViewCounts& counts) {
  auto count_plain = [&](std::string_view part) {
    pretokenize_gpt2(part, [&](std::string_view w) { ++counts[w]; });
  };
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    size_t end = eol == std::string_view::npos ? text.size() : eol + 1;
    std::string_view line = text.substr(pos, end - pos);
    pos = end;
    if (specials.empty()) {
      count_plain(line);
      continue;
    }
    size_t p = 0;
    while (p < line.size()) {
      size_t best_at = std::string_view::npos, best_len = 0;
      for (const auto& s : specials) {
        size_t at = line.find(s, p);
        if (at < best_at || (at == best_at && at != std::string_view::npos && s.size() > best_len))
          best_at = at, best_len = s.size();
      }
      if (best_at == std::string_view::npos) break;
      count_plain(line.substr(p, best_at - p));
      p = best_at + best_len;
    }
    count_plain(line.substr(p));
  }
}

// Splits text into about `parts` pieces that end at line ends.
std::vector<std::string_view> split_lines(std::string_view text, int parts) {
  std::vector<std::string_view> out;
  size_t pos = 0, target = text.size() / size_t(std::max(parts, 1)) + 1;
  while (pos < text.size()) {
    size_t end = std::min(text.size(), pos + target);
    if (end < text.size()) {
      size_t eol = text.find('\n', end);
      end = eol == std::string_view::npos ? text.size() : eol + 1;
    }
    out.push_back(text.substr(pos, end - pos));
    pos = end;
  }
  return out;
}

void count_block(std::string_view block, const std::vector<std::string>& specials, int threads, WordCounts& total) {
  auto pieces = split_lines(block, threads);
  std::vector<ViewCounts> partial(pieces.size());
  std::atomic<size_t> next{0};
  run_parallel(std::min<int>(threads, int(pieces.size())), [&](int) {
    for (size_t i = next++; i < pieces.size(); i = next++) count_words(pieces[i], specials, partial[i]);
  });
  for (auto& part : partial)
    for (auto& [w, c] : part) {
      auto it = total.find(w);
      if (it == total.end()) total.emplace(std::string(w), c);
      else it->second += c;
    }
}

// Reads a file in blocks of about 64 MiB cut at line ends and counts its words.
void count_file(const std::string& path, const std::vector<std::string>& specials, int threads, WordCounts& total) {
  bool jsonl = path.size() >= 6 && path.compare(path.size() - 6, 6, ".jsonl") == 0;
  std::ifstream in(path, std::ios::binary);
  KOTOBA_CHECK(in, "tokenizer train: cannot open '", path, "'");
  constexpr size_t kBlock = size_t(64) << 20;
  std::string carry, block;
  size_t offset = 0, line_number = 0;
  while (true) {
    block = std::move(carry);
    carry.clear();
    size_t have = block.size();
    block.resize(have + kBlock);
    in.read(block.data() + have, std::streamsize(kBlock));
    block.resize(have + size_t(in.gcount()));
    KOTOBA_CHECK(!in.bad(), "tokenizer train: error reading '", path, "'");
    bool last = !in;
    if (!last) {
      size_t eol = block.rfind('\n');
      if (eol != std::string::npos) {
        carry = block.substr(eol + 1);
        block.resize(eol + 1);
      } else {
        carry = std::move(block);
        continue;
      }
    }
    check_utf8(block, "tokenizer train: '" + path + "'", offset);
    offset += block.size();
    if (jsonl) {
      std::string texts;
      size_t pos = 0;
      while (pos < block.size()) {
        size_t eol = block.find('\n', pos);
        if (eol == std::string::npos) eol = block.size();
        std::string_view line(block.data() + pos, eol - pos);
        pos = eol + 1;
        ++line_number;
        if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
        json doc;
        try {
          doc = json::parse(line);
        } catch (const json::exception& e) {
          throw Error(kotoba::detail::concat("tokenizer train: '", path, "' line ", line_number, ": not valid JSON (", e.what(),
                                     ")"));
        }
        KOTOBA_CHECK(doc.is_object() && doc.contains("text") && doc["text"].is_string(), "tokenizer train: '", path,
                     "' line ", line_number, ": expected an object with a string field \"text\"");
        texts += doc["text"].get<std::string>();
        if (texts.empty() || texts.back() != '\n') texts += '\n';
      }
      count_block(texts, specials, threads, total);
    } else {
      count_block(block, specials, threads, total);
    }
    if (last) break;
  }
}

struct QueueEntry {
  int64_t count;
  uint64_t pair;
  // The max-heap's top is the most frequent pair; equal counts go to the smaller (left, right)
  // id pair — HF's BpeTrainer rule, which makes training deterministic.
  bool operator<(const QueueEntry& o) const { return count < o.count || (count == o.count && pair > o.pair); }
};

}  // namespace

Tokenizer Tokenizer::train(const std::vector<std::string>& files, const TrainOptions& options) {
  using clock = std::chrono::steady_clock;
  auto t0 = clock::now();
  KOTOBA_CHECK(!files.empty(), "tokenizer train: no input files");
  const int threads = resolve_threads(options.threads);
  std::vector<std::string> specials;
  for (const auto& s : options.special_tokens) {
    KOTOBA_CHECK(!s.empty(), "tokenizer train: a special token is empty");
    check_utf8(s, "tokenizer train: special token '" + s + "'");
    if (std::find(specials.begin(), specials.end(), s) == specials.end()) specials.push_back(s);
  }
  const int64_t base = int64_t(specials.size()) + 256;
  KOTOBA_CHECK(options.vocab_size >= base, "tokenizer train: vocab_size ", options.vocab_size,
               " is below the 256 byte tokens plus ", specials.size(), " special tokens");

  WordCounts word_counts;
  for (const auto& f : files) count_file(f, specials, threads, word_counts);
  auto t_count = clock::now();

  // Ids: the special tokens, then the 256 bytes in the order of their characters' code points
  // (as HF's trainer orders its alphabet), then one per merge.
  Tokenizer tok;
  Impl& im = *tok.impl_;
  const ByteAlphabet& ab = alphabet();
  std::vector<std::string> tok_bytes;
  WordCounts bytes_to_id;
  for (const auto& s : specials) {
    im.added.push_back({.content = s, .id = int32_t(tok_bytes.size())});
    im.tokens.push_back(s);
    bytes_to_id.emplace(s, int32_t(tok_bytes.size()));
    tok_bytes.push_back(s);
  }
  std::vector<int> bytes_by_cp(256);
  for (int b = 0; b < 256; ++b) bytes_by_cp[size_t(b)] = b;
  std::sort(bytes_by_cp.begin(), bytes_by_cp.end(),
            [&](int x, int y) { return ab.to_cp[size_t(x)] < ab.to_cp[size_t(y)]; });
  std::array<int32_t, 256> byte_id{};
  for (int b : bytes_by_cp) {
    byte_id[size_t(b)] = int32_t(tok_bytes.size());
    im.tokens.push_back(ab.to_utf8[size_t(b)]);
    std::string raw(1, char(b));
    bytes_to_id.emplace(raw, int32_t(tok_bytes.size()));
    tok_bytes.push_back(raw);
  }

  // Words as spans of one flat symbol array (in a fixed order so that training is deterministic).
  std::vector<std::pair<std::string_view, int64_t>> sorted_words(word_counts.begin(), word_counts.end());
  std::sort(sorted_words.begin(), sorted_words.end());
  const size_t W = sorted_words.size();
  std::vector<int32_t> symbols;
  std::vector<size_t> word_start(W);
  std::vector<uint32_t> word_len(W);
  std::vector<int64_t> word_count(W);
  for (size_t w = 0; w < W; ++w) {
    word_start[w] = symbols.size();
    word_len[w] = uint32_t(sorted_words[w].first.size());
    word_count[w] = sorted_words[w].second;
    for (unsigned char b : sorted_words[w].first) symbols.push_back(byte_id[b]);
  }
  sorted_words.clear();
  word_counts.clear();

  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>> where;
  for (size_t w = 0; w < W; ++w) {
    const int32_t* s = symbols.data() + word_start[w];
    for (uint32_t p = 0; p + 1 < word_len[w]; ++p) {
      uint64_t key = pair_key(s[p], s[p + 1]);
      pair_count[key] += word_count[w];
      auto& list = where[key];
      if (list.empty() || list.back() != int32_t(w)) list.push_back(int32_t(w));
    }
  }
  std::priority_queue<QueueEntry> queue;
  for (auto& [key, c] : pair_count) queue.push({c, key});

  const int64_t min_frequency = std::max<int64_t>(options.min_frequency, 1);
  std::vector<uint32_t> stamp(W, 0);
  std::vector<uint64_t> grown;
  uint32_t step = 0;
  while (int64_t(tok_bytes.size()) < options.vocab_size && !queue.empty()) {
    QueueEntry top = queue.top();
    queue.pop();
    auto pc = pair_count.find(top.pair);
    int64_t actual = pc == pair_count.end() ? 0 : pc->second;
    if (actual != top.count) {  // stale: counts changed since it was queued
      if (actual > 0) queue.push({actual, top.pair});
      continue;
    }
    if (actual < min_frequency) break;
    ++step;
    const int32_t a = int32_t(top.pair >> 32), b = int32_t(uint32_t(top.pair));
    std::string merged = tok_bytes[size_t(a)] + tok_bytes[size_t(b)];
    int32_t new_id;
    if (auto it = bytes_to_id.find(merged); it != bytes_to_id.end()) {
      new_id = it->second;  // the same string reached by another pair: no new token
    } else {
      new_id = int32_t(tok_bytes.size());
      bytes_to_id.emplace(merged, new_id);
      im.tokens.push_back(ab.encode(merged));
      tok_bytes.push_back(std::move(merged));
    }
    im.merges.emplace_back(a, b);

    std::vector<int32_t> affected = std::move(where[top.pair]);
    where.erase(top.pair);
    grown.clear();
    for (int32_t w : affected) {
      if (stamp[size_t(w)] == step) continue;
      stamp[size_t(w)] = step;
      int32_t* s = symbols.data() + word_start[size_t(w)];
      uint32_t len = word_len[size_t(w)];
      bool present = false;
      for (uint32_t p = 0; p + 1 < len && !present; ++p) present = s[p] == a && s[p + 1] == b;
      if (!present) continue;
      const int64_t c = word_count[size_t(w)];
      // Withdraw the word's pairs, merge, then add its new pairs back: words are short, and
      // this stays exact when occurrences overlap ("aaa").
      for (uint32_t p = 0; p + 1 < len; ++p) {
        auto it = pair_count.find(pair_key(s[p], s[p + 1]));
        if ((it->second -= c) == 0) pair_count.erase(it);
      }
      uint32_t out = 0;
      for (uint32_t p = 0; p < len;) {
        if (p + 1 < len && s[p] == a && s[p + 1] == b) {
          s[out++] = new_id;
          p += 2;
        } else {
          s[out++] = s[p++];
        }
      }
      word_len[size_t(w)] = len = out;
      for (uint32_t p = 0; p + 1 < len; ++p) {
        uint64_t key = pair_key(s[p], s[p + 1]);
        pair_count[key] += c;
        if (s[p] == new_id || s[p + 1] == new_id) {
          auto& list = where[key];
          if (list.empty() || list.back() != w) list.push_back(w);
          grown.push_back(key);
        }
      }
    }
    std::sort(grown.begin(), grown.end());
    grown.erase(std::unique(grown.begin(), grown.end()), grown.end());
    for (uint64_t key : grown) {
      auto it = pair_count.find(key);
      if (it != pair_count.end()) queue.push({it->second, key});
    }
    if (options.show_progress && step % 1000 == 0 && isatty(2))
      std::fprintf(stderr, "\rtokenizer train: %u merges, vocabulary %zu / %d", step, tok_bytes.size(),
                   options.vocab_size);
  }
  if (options.show_progress) {
    double count_s = std::chrono::duration<double>(t_count - t0).count();
    double total_s = std::chrono::duration<double>(clock::now() - t0).count();
    std::fprintf(stderr,
                 "\rtokenizer train: %zu distinct words counted in %.2fs; %zu merges, vocabulary %zu, in %.2fs total\n",
                 W, count_s, im.merges.size(), tok_bytes.size(), total_s);
  }
  im.in_model_vocab.assign(im.tokens.size(), 1);
  im.finalize("tokenizer train");
  return tok;
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json

namespace {

ordered_json default_byte_level(bool add_prefix_space, bool trim_offsets) {
  return ordered_json{{"type", "ByteLevel"},
                      {"add_prefix_space", add_prefix_space},
                      {"trim_offsets", trim_offsets},
                      {"use_regex", true}};
}

// Field access with errors that name the file and the field.
struct JsonReader {
  std::string path;
  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    throw Error(kotoba::detail::concat("tokenizer.json '", path, "': field ", field, ": ", what));
  }
  const json& get(const json& obj, const std::string& key, const std::string& field) const {
    if (!obj.is_object() || !obj.contains(key)) fail(field, "missing");
    return obj.at(key);
  }
  bool flag(const json& obj, const std::string& key, const std::string& field, bool fallback) const {
    if (!obj.is_object() || !obj.contains(key) || obj.at(key).is_null()) return fallback;
    if (!obj.at(key).is_boolean()) fail(field + "." + key, "expected true or false");
    return obj.at(key).get<bool>();
  }
  std::string type_of(const json& obj, const std::string& field) const {
    const json& t = get(obj, "type", field + ".type");
    if (!t.is_string()) fail(field + ".type", "expected a string");
    return t.get<std::string>();
  }
};

}  // namespace

Tokenizer Tokenizer::load(const std::string& path) {
  JsonReader r{path};
  std::string text;
  {
    std::ifstream in(path, std::ios::binary);
    KOTOBA_CHECK(in, "tokenizer.json '", path, "': cannot open the file");
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(kotoba::detail::concat("tokenizer.json '", path, "': not valid JSON (", e.what(), ")"));
  }
  if (!doc.is_object()) r.fail("(top level)", "expected an object");

  Tokenizer tok;
  Impl& im = *tok.impl_;

  // model
  const json& model = r.get(doc, "model", "model");
  if (!model.is_object()) r.fail("model", "expected an object");
  if (model.contains("type")) {
    std::string type = r.type_of(model, "model");
    if (type != "BPE") r.fail("model.type", "'" + type + "' is not supported (kotoba reads byte-level \"BPE\")");
  }
  if (model.contains("dropout") && !model["dropout"].is_null() &&
      !(model["dropout"].is_number() && model["dropout"].get<double>() == 0.0))
    r.fail("model.dropout", "BPE dropout is not supported (expected null)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (model.contains(key) && !model[key].is_null() && !(model[key].is_string() && model[key].get<std::string>().empty()))
      r.fail(std::string("model.") + key, "not supported by a byte-level BPE (expected null)");
  if (r.flag(model, "byte_fallback", "model", false)) r.fail("model.byte_fallback", "not supported (expected false)");
  im.ignore_merges = r.flag(model, "ignore_merges", "model", false);

  const json& vocab = r.get(model, "vocab", "model.vocab");
  if (!vocab.is_object()) r.fail("model.vocab", "expected an object of token: id");
  std::vector<std::optional<std::string>> by_id;
  auto place = [&](const std::string& token, int64_t id, const std::string& field) {
    if (id < 0 || id >= (int64_t(1) << 31) - 1) r.fail(field, "id " + std::to_string(id) + " is out of range");
    if (size_t(id) >= by_id.size()) by_id.resize(size_t(id) + 1);
    if (by_id[size_t(id)] && *by_id[size_t(id)] != token)
      r.fail(field, "id " + std::to_string(id) + " is given to both '" + *by_id[size_t(id)] + "' and '" + token + "'");
    by_id[size_t(id)] = token;
  };
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer()) r.fail("model.vocab[\"" + it.key() + "\"]", "expected an integer id");
    place(it.key(), it.value().get<int64_t>(), "model.vocab[\"" + it.key() + "\"]");
  }
  size_t model_size = by_id.size();

  // added_tokens
  if (doc.contains("added_tokens") && !doc["added_tokens"].is_null()) {
    const json& added = doc["added_tokens"];
    if (!added.is_array()) r.fail("added_tokens", "expected an array");
    for (size_t i = 0; i < added.size(); ++i) {
      std::string field = "added_tokens[" + std::to_string(i) + "]";
      const json& a = added[i];
      const json& id = r.get(a, "id", field + ".id");
      const json& content = r.get(a, "content", field + ".content");
      if (!id.is_number_integer()) r.fail(field + ".id", "expected an integer");
      if (!content.is_string() || content.get<std::string>().empty()) r.fail(field + ".content", "expected a non-empty string");
      if (r.flag(a, "single_word", field, false)) r.fail(field + ".single_word", "true is not supported");
      Impl::Added entry{.content = content.get<std::string>(),
                        .id = int32_t(id.get<int64_t>()),
                        .special = r.flag(a, "special", field, false),
                        .lstrip = r.flag(a, "lstrip", field, false),
                        .rstrip = r.flag(a, "rstrip", field, false),
                        .normalized = r.flag(a, "normalized", field, false)};
      if (find_invalid_utf8(entry.content) != std::string_view::npos) r.fail(field + ".content", "not valid UTF-8");
      place(entry.content, id.get<int64_t>(), field + ".id");
      im.added.push_back(std::move(entry));
    }
  }
  im.tokens.resize(by_id.size());
  im.in_model_vocab.assign(by_id.size(), 0);
  for (size_t id = 0; id < by_id.size(); ++id) {
    if (!by_id[id]) r.fail("model.vocab", "no token has id " + std::to_string(id) + " (ids must be 0..N-1)");
    im.tokens[id] = *by_id[id];
  }
  for (auto it = vocab.begin(); it != vocab.end(); ++it) im.in_model_vocab[size_t(it.value().get<int64_t>())] = 1;
  (void)model_size;

  std::unordered_map<std::string, int32_t> vocab_ids;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) vocab_ids[it.key()] = int32_t(it.value().get<int64_t>());
  const json& merges = r.get(model, "merges", "model.merges");
  if (!merges.is_array()) r.fail("model.merges", "expected an array");
  im.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    std::string field = "model.merges[" + std::to_string(i) + "]";
    const json& m = merges[i];
    std::string left, right;
    if (m.is_string()) {  // "left right"
      const std::string& s = m.get_ref<const std::string&>();
      size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        r.fail(field, "expected \"left right\" (two tokens and one space), got '" + s + "'");
      left = s.substr(0, sp);
      right = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {  // ["left", "right"]
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      r.fail(field, "expected \"left right\" or [\"left\", \"right\"]");
    }
    auto li = vocab_ids.find(left), ri = vocab_ids.find(right);
    if (li == vocab_ids.end()) r.fail(field, "'" + left + "' is not in model.vocab");
    if (ri == vocab_ids.end()) r.fail(field, "'" + right + "' is not in model.vocab");
    im.merges.emplace_back(li->second, ri->second);
  }
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    auto it = vocab_ids.find(model["unk_token"].get<std::string>());
    if (it != vocab_ids.end()) im.unk_id = it->second;
  }

  // normalizer: none (byte-level BPE works on the raw text)
  if (doc.contains("normalizer") && !doc["normalizer"].is_null())
    r.fail("normalizer", "'" + (doc["normalizer"].is_object() && doc["normalizer"].contains("type")
                                    ? doc["normalizer"]["type"].dump()
                                    : doc["normalizer"].dump()) +
                             "' is not supported (expected null)");

  // pre_tokenizer: ByteLevel(use_regex), or Sequence[Split(GPT-2 pattern, Isolated), ByteLevel(no regex)]
  const json& pre = r.get(doc, "pre_tokenizer", "pre_tokenizer");
  if (!pre.is_object()) r.fail("pre_tokenizer", "expected an object (a ByteLevel pre-tokenizer)");
  std::string pre_type = r.type_of(pre, "pre_tokenizer");
  if (pre_type == "ByteLevel") {
    if (!r.flag(pre, "use_regex", "pre_tokenizer", true))
      r.fail("pre_tokenizer.use_regex", "false is not supported (the GPT-2 split is required)");
    im.add_prefix_space = r.flag(pre, "add_prefix_space", "pre_tokenizer", true);
  } else if (pre_type == "Sequence") {
    const json& list = r.get(pre, "pretokenizers", "pre_tokenizer.pretokenizers");
    if (!list.is_array() || list.size() != 2)
      r.fail("pre_tokenizer.pretokenizers", "expected [Split(GPT-2 pattern), ByteLevel(use_regex=false)]");
    const json& split = list[0];
    if (r.type_of(split, "pre_tokenizer.pretokenizers[0]") != "Split")
      r.fail("pre_tokenizer.pretokenizers[0].type", "expected \"Split\"");
    const json& pattern = r.get(split, "pattern", "pre_tokenizer.pretokenizers[0].pattern");
    if (!pattern.is_object() || !pattern.contains("Regex") || !pattern["Regex"].is_string() ||
        pattern["Regex"].get<std::string>() != kGpt2Pattern)
      r.fail("pre_tokenizer.pretokenizers[0].pattern", "only the GPT-2 regex is supported");
    if (split.contains("behavior") && split["behavior"] != "Isolated")
      r.fail("pre_tokenizer.pretokenizers[0].behavior", "expected \"Isolated\"");
    if (r.flag(split, "invert", "pre_tokenizer.pretokenizers[0]", false))
      r.fail("pre_tokenizer.pretokenizers[0].invert", "expected false");
    const json& bl = list[1];
    if (r.type_of(bl, "pre_tokenizer.pretokenizers[1]") != "ByteLevel")
      r.fail("pre_tokenizer.pretokenizers[1].type", "expected \"ByteLevel\"");
    if (r.flag(bl, "use_regex", "pre_tokenizer.pretokenizers[1]", true))
      r.fail("pre_tokenizer.pretokenizers[1].use_regex", "expected false (the Split already applies the regex)");
    // The Split runs before ByteLevel adds its prefix space, which kotoba does not model.
    if (r.flag(bl, "add_prefix_space", "pre_tokenizer.pretokenizers[1]", true))
      r.fail("pre_tokenizer.pretokenizers[1].add_prefix_space", "true is not supported here");
  } else {
    r.fail("pre_tokenizer.type", "'" + pre_type + "' is not supported (expected \"ByteLevel\")");
  }
  im.pre_tokenizer_json = pre;

  if (doc.contains("decoder") && !doc["decoder"].is_null()) {
    std::string dec = r.type_of(doc["decoder"], "decoder");
    if (dec != "ByteLevel") r.fail("decoder.type", "'" + dec + "' is not supported (expected \"ByteLevel\")");
    im.decoder_json = doc["decoder"];
  }
  for (auto [key, slot] : {std::pair{"post_processor", &im.post_processor}, std::pair{"truncation", &im.truncation},
                           std::pair{"padding", &im.padding}})
    if (doc.contains(key)) *slot = doc[key];

  for (size_t id = 0; id < im.tokens.size(); ++id)
    if (find_invalid_utf8(im.tokens[id]) != std::string_view::npos)
      r.fail("model.vocab", "token with id " + std::to_string(id) + " is not valid UTF-8");
  im.finalize("tokenizer.json '" + path + "'");
  return tok;
}

void Tokenizer::save(const std::string& path) const {
  const Impl& im = *impl_;
  ordered_json doc;
  doc["version"] = "1.0";
  doc["truncation"] = im.truncation;
  doc["padding"] = im.padding;
  ordered_json added = ordered_json::array();
  for (const auto& a : im.added)
    added.push_back(ordered_json{{"id", a.id},
                                 {"content", a.content},
                                 {"single_word", false},
                                 {"lstrip", a.lstrip},
                                 {"rstrip", a.rstrip},
                                 {"normalized", a.normalized},
                                 {"special", a.special}});
  doc["added_tokens"] = added;
  doc["normalizer"] = nullptr;
  doc["pre_tokenizer"] = im.pre_tokenizer_json.is_null() ? default_byte_level(false, true)
                                                         : ordered_json::parse(im.pre_tokenizer_json.dump());
  doc["post_processor"] = ordered_json::parse(im.post_processor.dump());
  doc["decoder"] = im.decoder_json.is_null() ? default_byte_level(true, true)
                                             : ordered_json::parse(im.decoder_json.dump());
  ordered_json vocab = ordered_json::object();
  for (size_t id = 0; id < im.tokens.size(); ++id)
    if (im.in_model_vocab[id])  // appended directly: ordered_json's operator[] searches linearly
      vocab.get_ref<ordered_json::object_t&>().emplace_back(im.tokens[id], id);
  ordered_json merges = ordered_json::array();
  for (auto [a, b] : im.merges) merges.push_back(im.tokens[size_t(a)] + " " + im.tokens[size_t(b)]);
  doc["model"] = ordered_json{{"type", "BPE"},
                              {"dropout", nullptr},
                              {"unk_token", im.unk_id ? ordered_json(im.tokens[size_t(*im.unk_id)]) : ordered_json()},
                              {"continuing_subword_prefix", nullptr},
                              {"end_of_word_suffix", nullptr},
                              {"fuse_unk", false},
                              {"byte_fallback", false},
                              {"ignore_merges", im.ignore_merges},
                              {"vocab", vocab},
                              {"merges", merges}};
  write_file_atomically(path, doc.dump(2) + "\n");
}

}  // namespace kotoba::tokenizer
