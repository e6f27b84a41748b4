// Tokenizer: the BPE encoder (byte-level and character-level with byte fallback) behind HF's
// pipeline of added tokens, normalizer, pre-tokenizer, model and post-processor; decoding; and
// the byte-level trainer (parallel word counting, then merges with incremental pair counts).
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
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/unicode_norm.h"

namespace kotoba::tokenizer {

namespace internal {

std::atomic<uint64_t> next_serial{1};

std::string utf8_encode(char32_t cp) {
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

ByteAlphabet::ByteAlphabet() {
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    to_cp[size_t(b)] = printable ? char32_t(b) : char32_t(next++);
    from_cp[to_cp[size_t(b)]] = uint8_t(b);
    to_utf8[size_t(b)] = utf8_encode(to_cp[size_t(b)]);
  }
}

std::string ByteAlphabet::encode(std::string_view bytes) const {
  std::string s;
  for (unsigned char b : bytes) s += to_utf8[b];
  return s;
}

std::optional<std::string> ByteAlphabet::decode(std::string_view token) const {
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

const ByteAlphabet& alphabet() {
  static const ByteAlphabet a;
  return a;
}

void PairTable::build(const std::vector<std::pair<int32_t, int32_t>>& merges, const std::vector<int32_t>& merged) {
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

}  // namespace internal

using namespace internal;

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

constexpr size_t kCacheMaxWordBytes = 64;
constexpr size_t kCacheMaxEntries = 1 << 16;

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

size_t step_back(std::string_view t, size_t i) {
  do --i;
  while (i > 0 && (static_cast<unsigned char>(t[i]) & 0xC0) == 0x80);
  return i;
}
CharClass class_at(std::string_view t, size_t i) {
  size_t len = 0;
  return detail::class_at(reinterpret_cast<const unsigned char*>(t.data()) + i, len);
}
size_t char_length(std::string_view t, size_t i) {
  size_t len = 0;
  detail::decode_utf8(reinterpret_cast<const unsigned char*>(t.data()) + i, len);
  return len;
}
// Rust's char::is_alphanumeric, which HF's single_word test uses, approximated by L*/N*.
bool is_word_char(CharClass c) { return c == CharClass::letter || c == CharClass::number; }

std::string replace_all(std::string_view text, std::string_view from, std::string_view to) {
  if (from.empty()) return std::string(text);
  std::string out;
  size_t pos = 0;
  for (size_t at; (at = text.find(from, pos)) != std::string_view::npos; pos = at + from.size()) {
    out.append(text.substr(pos, at - pos));
    out.append(to);
  }
  out.append(text.substr(pos));
  return out;
}

// "<0xAB>" -> 0xAB, as HF's ByteFallback decoder reads it (Rust's u8::from_str_radix, which
// also takes a leading '+').
std::optional<uint8_t> byte_token_value(std::string_view token) {
  if (token.size() != 6 || token.substr(0, 3) != "<0x" || token[5] != '>') return std::nullopt;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  int hi = hex(token[3]), lo = hex(token[4]);
  if (token[3] == '+' && lo >= 0) return uint8_t(lo);
  if (hi < 0 || lo < 0) return std::nullopt;
  return uint8_t(hi * 16 + lo);
}

// A file's normalizer or decoder may chain replacements that each grow the text (a -> aa, forty
// times); real ones stay within a small factor (NFKD's largest expansion is 18 characters).
void check_growth(size_t before, size_t after, const char* what) {
  KOTOBA_CHECK(after <= 32 * before + 1024, "tokenizer: the ", what, " grows ", before, " bytes to ", after,
               " (more than 32-fold); the tokenizer file's ", what, " is not usable");
}

}  // namespace

std::string Tokenizer::Impl::normalize(std::string_view text) const {
  std::string normalized(text);
  for (const NormalizerStep& step : normalizer) {
    normalized = apply_normalizer(step, normalized);
    check_growth(text.size(), normalized.size(), "normalizer");
  }
  return normalized;
}

// Fills the derived tables once tokens, merges and added are set.
void Tokenizer::Impl::finalize(const std::string& where) {
  const ByteAlphabet& ab = alphabet();
  token_ids.clear();
  bytes_ids.clear();
  token_bytes.assign(tokens.size(), {});
  std::vector<char> is_added(tokens.size(), 0);
  for (const Added& a : added) is_added[size_t(a.id)] = 1;
  for (size_t id = 0; id < tokens.size(); ++id) {
    token_ids.emplace(tokens[id], int32_t(id));
    if (!byte_level) continue;
    // As HF's ByteLevel decoder, added tokens included: a token with a character outside the
    // alphabet decodes raw, any other through the alphabet.
    auto raw = ab.decode(tokens[id]);
    token_bytes[id] = raw ? *raw : tokens[id];
    if (!is_added[id] || in_model_vocab[id]) bytes_ids.emplace(token_bytes[id], int32_t(id));
  }
  auto model_id = [&](const std::string& token) -> int32_t {
    auto it = token_ids.find(token);
    return it != token_ids.end() && in_model_vocab[size_t(it->second)] ? it->second : -1;
  };
  for (int b = 0; b < 256; ++b) {
    if (byte_level) {
      auto it = token_ids.find(ab.to_utf8[size_t(b)]);
      byte_ids[size_t(b)] = it == token_ids.end() ? -1 : it->second;
    } else {
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      byte_ids[size_t(b)] = model_id(name);
    }
  }
  std::vector<int32_t> merged(merges.size());
  for (size_t r = 0; r < merges.size(); ++r) {
    auto it = token_ids.find(tokens[size_t(merges[r].first)] + tokens[size_t(merges[r].second)]);
    KOTOBA_CHECK(it != token_ids.end(), where, ": field model.merges[", r, "]: '", tokens[size_t(merges[r].first)],
                 tokens[size_t(merges[r].second)], "' (the merged token) is not in model.vocab");
    merged[r] = it->second;
  }
  merge_table.build(merges, merged);
  // Tokens marked `normalized` are looked for in the normalized text, as normalized themselves.
  raw_added.clear();
  normalized_added.clear();
  for (size_t i = 0; i < added.size(); ++i) {
    Added& a = added[i];
    a.match = a.content;
    if (a.normalized && !normalizer.empty()) a.match = normalize(a.content);
    (a.normalized ? normalized_added : raw_added).push_back(i);
  }
  for (auto* list : {&raw_added, &normalized_added})
    std::stable_sort(list->begin(), list->end(),
                     [&](size_t x, size_t y) { return added[x].match.size() > added[y].match.size(); });
  if (byte_level && decoder.empty() && decoder_json.is_null()) decoder.push_back({.kind = DecoderStep::Kind::byte_level});
  serial = next_serial++;
}

std::string Tokenizer::Impl::apply_normalizer(const NormalizerStep& step, std::string_view text) {
  switch (step.kind) {
    case NormalizerStep::Kind::nfc: return normalize_unicode(text, NormalForm::nfc);
    case NormalizerStep::Kind::nfd: return normalize_unicode(text, NormalForm::nfd);
    case NormalizerStep::Kind::nfkc: return normalize_unicode(text, NormalForm::nfkc);
    case NormalizerStep::Kind::nfkd: return normalize_unicode(text, NormalForm::nfkd);
    case NormalizerStep::Kind::prepend: return text.empty() ? std::string() : step.text + std::string(text);
    case NormalizerStep::Kind::replace: return replace_all(text, step.text, step.with);
  }
  return std::string(text);
}

// The symbols BPE starts from: bytes (byte-level), or characters, each its vocabulary token,
// else its <0xXX> byte tokens (byte_fallback), else unk (runs fused with fuse_unk), else dropped
// — HF's BPE::merge_word.
void Tokenizer::Impl::word_symbols(std::string_view word, std::vector<int32_t>& syms) const {
  std::optional<int32_t> pending_unk;
  auto flush_unk = [&] {
    if (pending_unk) syms.push_back(*pending_unk);
    pending_unk.reset();
  };
  auto unknown = [&] {
    if (!unk_id) return false;
    if (!(pending_unk && fuse_unk)) {
      flush_unk();
      pending_unk = *unk_id;
    }
    return true;
  };
  if (byte_level) {
    size_t known = 0;  // every byte has its token in any real vocabulary: no unk bookkeeping
    while (known < word.size() && byte_ids[static_cast<unsigned char>(word[known])] >= 0)
      syms.push_back(byte_ids[static_cast<unsigned char>(word[known++])]);
    if (known == word.size()) return;
    for (unsigned char b : word.substr(known)) {
      int32_t id = byte_ids[b];
      if (id >= 0) {
        flush_unk();
        syms.push_back(id);
        continue;
      }
      KOTOBA_CHECK(unknown(), "tokenizer: the vocabulary has no token for byte 0x", std::hex, int(b),
                   " and no unk_token");
    }
    flush_unk();
    return;
  }
  for (size_t i = 0; i < word.size();) {
    size_t len = char_length(word, i);
    std::string_view ch = word.substr(i, len);
    i += len;
    auto it = token_ids.find(ch);
    if (it != token_ids.end() && in_model_vocab[size_t(it->second)]) {
      flush_unk();
      syms.push_back(it->second);
      continue;
    }
    if (byte_fallback) {
      bool all = true;
      for (unsigned char b : ch) all = all && byte_ids[b] >= 0;
      if (all) {
        flush_unk();  // HF keeps a pending unk until a known token; a byte run ends it too
        for (unsigned char b : ch) syms.push_back(byte_ids[b]);
        continue;
      }
    }
    unknown();
  }
  flush_unk();
}

// BPE on one pre-token: the lowest-rank adjacent pair (leftmost on ties) merged until none is in
// the table — HF's order, which a heap gives for long words.
void Tokenizer::Impl::encode_word(std::string_view word, std::vector<int32_t>& out, WordCache& cache) const {
  if (word.size() <= kCacheMaxWordBytes) {
    auto it = cache.words.find(word);
    if (it != cache.words.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  size_t first = out.size();
  if (ignore_merges) {
    const IdMap& whole = byte_level ? bytes_ids : token_ids;
    auto it = whole.find(word);
    if (it != whole.end() && it->second < int32_t(in_model_vocab.size()) && in_model_vocab[size_t(it->second)]) {
      out.push_back(it->second);
      remember(word, out, first, cache);
      return;
    }
  }
  std::vector<int32_t> syms;
  syms.reserve(word.size());
  word_symbols(word, syms);
  if (syms.size() <= 48) merge_small(syms);
  else merge_large(syms);
  out.insert(out.end(), syms.begin(), syms.end());
  remember(word, out, first, cache);
}

void Tokenizer::Impl::remember(std::string_view word, const std::vector<int32_t>& out, size_t first,
                               WordCache& cache) const {
  if (word.size() > kCacheMaxWordBytes) return;
  if (cache.words.size() >= kCacheMaxEntries) cache.words.clear();
  cache.words.emplace(std::string(word), std::vector<int32_t>(out.begin() + std::ptrdiff_t(first), out.end()));
}

void Tokenizer::Impl::merge_small(std::vector<int32_t>& syms) const {
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

void Tokenizer::Impl::merge_large(std::vector<int32_t>& syms) const {
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
  if (n == 0) return;
  size_t w = 0;
  for (int32_t i = 0; i >= 0; i = next[size_t(i)]) syms[w++] = syms[size_t(i)];
  syms.resize(w);
}

// Runs pre-tokenizer steps [step, end) on `piece`, then the model on each resulting word.
// at_start: the piece begins the text (Metaspace's prepend_scheme "first").
void Tokenizer::Impl::pre_tokenize(size_t step, std::string_view piece, bool at_start, std::vector<int32_t>& out,
                                   WordCache& cache) const {
  if (piece.empty()) return;
  if (step == pre_tokenizer.size()) {
    encode_word(piece, out, cache);
    return;
  }
  const PreTokenizerStep& st = pre_tokenizer[step];
  auto next = [&](std::string_view p) { pre_tokenize(step + 1, p, at_start && p.data() == piece.data(), out, cache); };
  // The common last step, a regex split, hands its pieces straight to the model.
  auto model = [&](std::string_view p) { encode_word(p, out, cache); };
  const bool last = step + 1 == pre_tokenizer.size();
  switch (st.kind) {
    case PreTokenizerStep::Kind::split_gpt2:
      if (last) pretokenize_gpt2(piece, model);
      else pretokenize_gpt2(piece, next);
      return;
    case PreTokenizerStep::Kind::split_llama3:
      if (last) pretokenize_llama3(piece, 3, model);
      else pretokenize_llama3(piece, 3, next);
      return;
    case PreTokenizerStep::Kind::split_qwen2:
      if (last) pretokenize_llama3(piece, 1, model);
      else pretokenize_llama3(piece, 1, next);
      return;
    case PreTokenizerStep::Kind::prefix_space:
      if (piece.front() == ' ') {
        pre_tokenize(step + 1, piece, at_start, out, cache);
      } else {
        std::string prefixed = " " + std::string(piece);
        pre_tokenize(step + 1, prefixed, at_start, out, cache);
      }
      return;
    case PreTokenizerStep::Kind::metaspace: {
      std::string text = replace_all(piece, " ", st.replacement);
      bool starts = text.compare(0, st.replacement.size(), st.replacement) == 0;
      if (!starts && (st.prepend == PreTokenizerStep::Prepend::always ||
                      (st.prepend == PreTokenizerStep::Prepend::first && at_start)))
        text.insert(0, st.replacement);
      std::string_view view = text;
      if (!st.split || st.replacement.empty()) {
        pre_tokenize(step + 1, view, at_start, out, cache);
        return;
      }
      // Split before every replacement character, which stays with what follows it.
      size_t begin = 0;
      while (begin < view.size()) {
        size_t at = view.find(st.replacement, begin + 1);
        if (at == std::string_view::npos) at = view.size();
        pre_tokenize(step + 1, view.substr(begin, at - begin), at_start && begin == 0, out, cache);
        begin = at;
      }
      return;
    }
  }
}

// A stretch of text between added tokens that are matched before normalization.
void Tokenizer::Impl::encode_segment(std::string_view text, bool at_start, std::vector<int32_t>& out,
                                     WordCache& cache) const {
  std::string normalized;
  std::string_view view = text;
  if (!normalizer.empty()) {
    normalized = normalize(text);
    view = normalized;
  }
  if (!normalized_added.empty()) encode_added(view, at_start, normalized_added, true, out, cache);
  else pre_tokenize(0, view, at_start, out, cache);
}

// HF's AddedVocabulary::find_matches: leftmost-longest matches of the candidates (the
// search goes on after a match's own end), single_word / lstrip / rstrip applied to each; the
// stretches between them are encoded as ordinary text.
void Tokenizer::Impl::encode_added(std::string_view text, bool at_start, const std::vector<size_t>& candidates,
                                   bool normalized_pass, std::vector<int32_t>& out, WordCache& cache) const {
  auto plain = [&](size_t from, size_t to) {
    std::string_view part = text.substr(from, to - from);
    if (normalized_pass) pre_tokenize(0, part, at_start && from == 0, out, cache);
    else encode_segment(part, at_start && from == 0, out, cache);
  };
  std::vector<size_t> next_at(added.size(), std::string_view::npos);
  std::vector<char> searched(added.size(), 0);
  size_t search = 0, done = 0;
  while (search < text.size()) {
    size_t best_at = std::string_view::npos, best = 0;
    for (size_t k : candidates) {
      const std::string& c = added[k].match;
      if (c.empty()) continue;
      if (!searched[k] || (next_at[k] != std::string_view::npos && next_at[k] < search)) {
        next_at[k] = text.find(c, search);
        searched[k] = 1;
      }
      if (next_at[k] < best_at) best_at = next_at[k], best = k;  // longest first: ties keep it
    }
    if (best_at == std::string_view::npos) break;
    const Added& a = added[best];
    size_t start = best_at, stop = best_at + a.match.size();
    search = stop;
    if (a.single_word) {
      bool word_before = start > 0 && is_word_char(class_at(text, step_back(text, start)));
      bool word_after = stop < text.size() && is_word_char(class_at(text, stop));
      if (word_before || word_after) continue;
    }
    if (a.lstrip) {
      size_t s = start;
      while (s > 0 && class_at(text, step_back(text, s)) == CharClass::space) s = step_back(text, s);
      start = std::max(s, done);
    }
    if (a.rstrip)
      while (stop < text.size() && class_at(text, stop) == CharClass::space) stop += char_length(text, stop);
    if (start > done) plain(done, start);
    out.push_back(a.id);
    done = stop;
  }
  if (done < text.size()) plain(done, text.size());
}

void Tokenizer::Impl::encode(std::string_view text, std::vector<int32_t>& out) const {
  size_t bad = find_invalid_utf8(text);
  KOTOBA_CHECK(bad == std::string_view::npos, "tokenizer: the text to encode is not valid UTF-8 at byte offset ",
               bad);
  if (wordpiece) return wordpiece->encode(text, out);
  if (sentencepiece) {
    std::vector<int32_t> ids = sentencepiece->encode(text);
    out.insert(out.end(), ids.begin(), ids.end());
    return;
  }
  if (text.empty()) return;
  thread_local WordCache cache;
  if (cache.owner != serial) {
    cache.words.clear();
    cache.owner = serial;
  }
  if (raw_added.empty()) encode_segment(text, true, out, cache);
  else encode_added(text, true, raw_added, false, out, cache);
}

// HF's decoder chain over the tokens' strings; byte-level BPE's plain ByteLevel decoder keeps the
// raw bytes (no U+FFFD), so that a slice of an encoding decodes to its exact bytes.
std::string Tokenizer::Impl::decode(std::span<const int32_t> ids) const {
  if (sentencepiece) return sentencepiece->decode(ids);
  if (wordpiece) return wordpiece->decode(ids);
  std::string out;
  const int32_t n = int32_t(tokens.size());
  auto bad_id = [&](size_t i) {
    return Error(kotoba::detail::concat("tokenizer: decode: id ", ids[i], " at position ", i,
                                        " is outside the vocabulary [0, ", n, ")"));
  };
  if (byte_level && decoder.size() == 1 && decoder[0].kind == DecoderStep::Kind::byte_level) {
    out.reserve(ids.size() * 4);  // tokens average 3-4 bytes of text
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || ids[i] >= n) throw bad_id(i);
      out += token_bytes[size_t(ids[i])];
    }
    return out;
  }
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= n) throw bad_id(i);
  std::vector<std::string> parts;
  parts.reserve(ids.size());
  size_t token_text_size = 0;
  for (int32_t id : ids) {
    parts.push_back(tokens[size_t(id)]);
    token_text_size += parts.back().size();
  }
  if (!has_decoder) {
    for (size_t i = 0; i < parts.size(); ++i) out += (i ? " " : "") + parts[i];
    return out;
  }
  const ByteAlphabet& ab = alphabet();
  for (const DecoderStep& step : decoder) {
    switch (step.kind) {
      case DecoderStep::Kind::byte_level: {
        std::string joined;
        for (const std::string& p : parts) {
          auto raw = ab.decode(p);
          joined += raw ? *raw : p;
        }
        parts.assign(1, std::move(joined));
        break;
      }
      case DecoderStep::Kind::replace: {
        size_t after = 0;
        for (std::string& p : parts) {
          p = replace_all(p, step.text, step.with);
          after += p.size();
        }
        check_growth(token_text_size, after, "decoder");
        break;
      }
      case DecoderStep::Kind::byte_fallback: {
        std::vector<std::string> result;
        std::string pending;
        size_t pending_count = 0;
        auto flush = [&] {
          if (pending_count == 0) return;
          if (find_invalid_utf8(pending) == std::string_view::npos) result.push_back(pending);
          else
            for (size_t i = 0; i < pending_count; ++i) result.push_back("\xEF\xBF\xBD");  // U+FFFD per byte
          pending.clear();
          pending_count = 0;
        };
        for (std::string& p : parts) {
          if (auto b = byte_token_value(p)) {
            pending += char(*b);
            ++pending_count;
          } else {
            flush();
            result.push_back(std::move(p));
          }
        }
        flush();
        parts = std::move(result);
        break;
      }
      case DecoderStep::Kind::fuse: {
        std::string joined;
        for (const std::string& p : parts) joined += p;
        parts.assign(1, std::move(joined));
        break;
      }
      case DecoderStep::Kind::strip:
        for (std::string& p : parts) {
          const std::string& c = step.text;
          size_t begin = 0, end = p.size();
          for (size_t k = 0; k < step.start && p.compare(begin, c.size(), c) == 0 && begin < end; ++k) begin += c.size();
          for (size_t k = 0; k < step.stop && end >= begin + c.size() && p.compare(end - c.size(), c.size(), c) == 0; ++k)
            end -= c.size();
          p = p.substr(begin, end - begin);
        }
        break;
      case DecoderStep::Kind::metaspace:
        // HF drops every replacement character of the first token (the prepended one) and
        // turns the others into spaces.
        for (size_t i = 0; i < parts.size(); ++i)
          parts[i] = replace_all(parts[i], step.text, i == 0 && step.metaspace_prepends ? "" : " ");
        break;
    }
  }
  for (const std::string& p : parts) out += p;
  return out;
}

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

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  if (!add_special_tokens) return encode(text);
  std::vector<int32_t> out(impl_->prefix_ids);
  out.reserve(text.size() / 3 + 4 + impl_->suffix_ids.size());
  impl_->encode(text, out);
  out.insert(out.end(), impl_->suffix_ids.begin(), impl_->suffix_ids.end());
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
  if (impl_->sentencepiece) {
    const int32_t n = vocab_size();
    for (size_t i = 0; i < ids.size(); ++i)
      KOTOBA_CHECK(ids[i] >= 0 && ids[i] < n, "tokenizer: decode: id ", ids[i], " at position ", i,
                   " is outside the vocabulary [0, ", n, ")");
  }
  return impl_->decode(ids);  // checks the ids of the other models as it goes
}

int32_t Tokenizer::vocab_size() const {
  if (impl_->sentencepiece) return impl_->sentencepiece->size();
  if (impl_->wordpiece) return impl_->wordpiece->size();
  return int32_t(impl_->tokens.size());
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (impl_->sentencepiece) return impl_->sentencepiece->piece_id(token);
  if (impl_->wordpiece) return impl_->wordpiece->token_to_id(token);
  auto it = impl_->token_ids.find(token);
  if (it == impl_->token_ids.end()) return std::nullopt;
  return it->second;
}

std::string Tokenizer::id_to_token(int32_t id) const {
  KOTOBA_CHECK(id >= 0 && id < vocab_size(), "tokenizer: id ", id, " is outside the vocabulary [0, ", vocab_size(),
               ")");
  if (impl_->sentencepiece) return impl_->sentencepiece->piece(id);
  if (impl_->wordpiece) return impl_->wordpiece->id_to_token(id);
  return impl_->tokens[size_t(id)];
}

namespace {
std::optional<int32_t> special_named(const std::vector<Tokenizer::Impl::Added>& added,
                                     std::initializer_list<std::string_view> names) {
  for (std::string_view name : names)
    for (const auto& a : added)
      if (a.special && a.content == name) return a.id;
  return std::nullopt;
}
}  // namespace

std::optional<int32_t> Tokenizer::eos_id() const {
  const Impl& im = *impl_;
  if (im.eos) return im.eos;
  if (im.sentencepiece) return im.sentencepiece->eos_id();
  if (im.wordpiece) return im.wordpiece->token_to_id("[SEP]");  // BERT ends each sequence with [SEP]
  if (auto id = special_named(im.added, {"</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|im_end|>"})) return id;
  for (const auto& a : im.added)
    if (a.special) return a.id;
  return std::nullopt;
}

std::optional<int32_t> Tokenizer::bos_id() const {
  const Impl& im = *impl_;
  if (im.bos) return im.bos;
  if (im.sentencepiece) return im.sentencepiece->bos_id();
  if (im.wordpiece) return im.wordpiece->token_to_id("[CLS]");
  if (!im.prefix_ids.empty()) return im.prefix_ids.front();
  return special_named(im.added, {"<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"});
}

std::optional<int32_t> Tokenizer::pad_id() const {
  const Impl& im = *impl_;
  if (im.pad) return im.pad;
  if (im.sentencepiece) return im.sentencepiece->pad_id();
  if (im.wordpiece) return im.wordpiece->token_to_id("[PAD]");
  if (im.padding.is_object() && im.padding.contains("pad_id") && im.padding["pad_id"].is_number_integer()) {
    int64_t id = im.padding["pad_id"].get<int64_t>();
    if (id >= 0 && id < vocab_size()) return int32_t(id);
  }
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
  im.pre_tokenizer = {{.kind = PreTokenizerStep::Kind::split_gpt2}};
  im.finalize("tokenizer train");
  return tok;
}

}  // namespace kotoba::tokenizer
