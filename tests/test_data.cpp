// data/: corpus readers (errors name file:line, field, byte offset), token shards (round trip,
// truncation, vocabulary checks), the window sampler and evaluation windows, `prepare` (atomic
// output directory) and the core/progress bar.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>
#include <thread>

#include "core/error.h"
#include "core/progress.h"
#include "data/prepare.h"
#include "data/text_corpus.h"
#include "data/token_dataset.h"
#include "data/token_shards.h"
#include "tokenizer/tokenizer.h"

using namespace kotoba;
using namespace kotoba::data;
namespace fs = std::filesystem;

namespace {

class DataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kotoba_data_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::string write(const std::string& name, const std::string& content) const {
    std::ofstream out(path(name), std::ios::binary);
    out << content;
    return path(name);
  }
  // Entries of the test directory whose names start with `prefix` (to spot leftovers).
  std::vector<std::string> entries(const std::string& prefix) const {
    std::vector<std::string> names;
    for (auto& e : fs::directory_iterator(dir_))
      if (e.path().filename().string().rfind(prefix, 0) == 0) names.push_back(e.path().filename().string());
    return names;
  }
  // A shard directory holding `train` and `val` tokens as they are.
  std::string make_shards(const std::string& name, const std::vector<int32_t>& train_tokens,
                          const std::vector<int32_t>& val_tokens, int64_t vocab, int64_t shard_tokens) const {
    fs::path d = dir_ / name;
    fs::create_directories(d);
    ShardWriter train(d, "train", vocab, shard_tokens), val(d, "val", vocab, shard_tokens);
    train.append(train_tokens);
    val.append(val_tokens);
    train.finish();
    val.finish();
    ShardIndex index{.vocab_size = vocab, .eos_id = 0, .tokenizer_hash = "fnv1a64:0", .seed = 1, .val_fraction = 0.1,
                     .train = {train.tokens(), 1, train.shard_names()}, .val = {val.tokens(), 1, val.shard_names()}};
    write_shard_index(d, index);
    return d.string();
  }
  fs::path dir_;
};

// Expects `fn` to throw kotoba::Error whose message contains every needle.
template <typename Fn>
void expect_error(Fn fn, const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "expected a kotoba::Error mentioning " << needles.front();
  } catch (const Error& e) {
    std::string message = e.what();
    for (auto& needle : needles) EXPECT_NE(message.find(needle), std::string::npos) << "'" << needle << "' not in: " << message;
  }
}

std::vector<int32_t> iota_tokens(int64_t n, int64_t vocab) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) t[size_t(i)] = int32_t(i % vocab);
  return t;
}

std::vector<int32_t> ints(const Tensor& t) {
  const int32_t* p = t.data<int32_t>();
  return std::vector<int32_t>(p, p + t.numel());
}

std::vector<int32_t> read_all(const TokenDataset& data) {
  std::vector<int32_t> t(size_t(data.size()));
  data.read(0, data.size(), t.data());
  return t;
}

// A stand-in tokenizer for the prepare pipeline: one token per byte, EOS = 256.
TokenEncoder byte_encoder() {
  TokenEncoder e;
  e.vocab_size = 257;
  e.eos_id = 256;
  e.hash = "fnv1a64:byte";
  e.encode_batch = [](const std::vector<std::string_view>& texts, int) {
    std::vector<std::vector<int32_t>> out;
    for (auto text : texts) {
      auto& ids = out.emplace_back();
      for (unsigned char c : text) ids.push_back(int32_t(c));
    }
    return out;
  };
  return e;
}

// Splits a byte-encoded stream at EOS back into documents.
std::multiset<std::string> byte_documents(const std::vector<int32_t>& tokens) {
  std::multiset<std::string> docs;
  std::string cur;
  for (int32_t t : tokens) {
    if (t == 256) docs.insert(cur), cur.clear();
    else cur += char(t);
  }
  EXPECT_TRUE(cur.empty()) << "the stream must end with EOS";
  return docs;
}

// ---------------------------------------------------------------- corpus readers

TEST_F(DataTest, JsonlReadsTextFieldAndSkipsBlankLines) {
  auto p = write("a.jsonl", "{\"text\": \"hello\"}\n\n{\"text\": \"w\\u00f6rld\", \"id\": 3}\r\n{\"text\": \"\"}\n");
  auto docs = read_documents(p, {});
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[0].text, "hello");
  EXPECT_EQ(docs[0].line, 1);
  EXPECT_EQ(docs[1].text, "w\xc3\xb6rld");
  EXPECT_EQ(docs[1].line, 3);
}

TEST_F(DataTest, JsonlMalformedLineNamesFileAndLine) {
  auto p = write("bad.jsonl", "{\"text\": \"ok\"}\n{\"text\": \"ok\"}\n{\"text\": \"unterminated}\n");
  expect_error([&] { read_documents(p, {}); }, {p + ":3", "malformed JSON", "\"text\""});
}

TEST_F(DataTest, JsonlMissingOrNonStringFieldNamesFileLineAndField) {
  auto missing = write("missing.jsonl", "{\"text\": \"ok\"}\n{\"content\": \"no text here\"}\n");
  expect_error([&] { read_documents(missing, {}); }, {missing + ":2", "missing field \"text\""});
  auto number = write("number.jsonl", "{\"text\": 42}\n");
  expect_error([&] { read_documents(number, {}); }, {number + ":1", "field \"text\"", "must be a string", "number"});
  auto array = write("array.jsonl", "[\"text\"]\n");
  expect_error([&] { read_documents(array, {}); }, {array + ":1", "JSON object"});
  auto custom = write("custom.jsonl", "{\"body\": \"x\"}\n");
  EXPECT_EQ(read_documents(custom, {.text_field = "body"}).size(), 1u);
}

TEST_F(DataTest, EmptyCorpusNamesTheInputs) {
  auto a = write("empty.txt", "");
  auto b = write("blank.jsonl", "\n  \n");
  expect_error([&] { read_corpus({a, b}); }, {"empty", a, b});
  expect_error([&] { read_corpus({path("nope.txt")}); }, {path("nope.txt"), "does not exist"});
}

TEST_F(DataTest, InvalidUtf8NamesFileAndByteOffset) {
  auto p = write("latin1.txt", std::string("caf\xe9 au lait"));
  expect_error([&] { read_corpus({p}); }, {p, "invalid UTF-8", "byte offset 3"});
  auto j = write("bad.jsonl", std::string("{\"text\": \"ok\"}\n{\"text\": \"\xff\"}\n"));
  expect_error([&] { read_corpus({j}); }, {j, "byte offset 25"});
  EXPECT_EQ(find_invalid_utf8("plain ascii"), std::string_view::npos);
  EXPECT_EQ(find_invalid_utf8("\xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80"), std::string_view::npos);
  EXPECT_EQ(find_invalid_utf8("ab\xc0\x80"), 2u);          // overlong NUL
  EXPECT_EQ(find_invalid_utf8("a\xed\xa0\x80"), 1u);       // UTF-16 surrogate
  EXPECT_EQ(find_invalid_utf8("abc\xe6\x97"), 3u);         // cut short
  EXPECT_EQ(find_invalid_utf8("\xf4\x90\x80\x80"), 0u);    // above U+10FFFF
}

TEST_F(DataTest, PlainTextIsOneDocumentOrOnePerLine) {
  auto p = write("t.txt", "first line\n\nsecond line\r\nthird\n");
  auto whole = read_documents(p, {});
  ASSERT_EQ(whole.size(), 1u);
  EXPECT_EQ(whole[0].text, "first line\n\nsecond line\r\nthird\n");
  auto lines = read_documents(p, {.split_lines = true});
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[1].text, "second line");
  EXPECT_EQ(lines[2].line, 4);
}

TEST_F(DataTest, SeparatorLinesSplitDocumentsAsInFortuneFiles) {
  auto p = write("cookies", "A cookie\nof two lines\n%\n%\nAnother\r\n%\r\nLast, no newline");
  auto docs = read_documents(p, {.separator_line = "%"});
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[0].text, "A cookie\nof two lines\n");
  EXPECT_EQ(docs[0].line, 1);
  EXPECT_EQ(docs[1].text, "Another\r\n");
  EXPECT_EQ(docs[1].line, 5);
  EXPECT_EQ(docs[2].text, "Last, no newline");
  EXPECT_EQ(docs[2].line, 7);
}

// ---------------------------------------------------------------- token shards

TEST_F(DataTest, ShardRoundTripAcrossShardsU16AndU32) {
  for (int64_t vocab : {300, 70000}) {
    auto train = iota_tokens(1000, vocab);
    for (size_t i = 0; i < train.size(); ++i) train[i] = int32_t((i * 7919 + 13) % size_t(vocab));
    auto val = iota_tokens(57, vocab);
    std::string d = make_shards("shards_" + std::to_string(vocab), train, val, vocab, /*shard_tokens=*/300);
    ShardIndex index = read_shard_index(d);
    EXPECT_EQ(index.train.shards.size(), 4u);  // 300 + 300 + 300 + 100
    EXPECT_EQ(index.vocab_size, vocab);
    MappedShard first(fs::path(d) / index.train.shards[0]);
    EXPECT_EQ(first.token_bytes(), vocab <= 65536 ? 2u : 4u);
    EXPECT_EQ(fs::file_size(first.path()), kShardHeaderBytes + 300 * first.token_bytes());
    auto t = TokenDataset::open(d, "train");
    EXPECT_EQ(t.size(), 1000);
    EXPECT_EQ(read_all(t), train);
    EXPECT_EQ(read_all(TokenDataset::open(d, "val")), val);
    std::vector<int32_t> middle(400);
    t.read(250, 400, middle.data());  // spans shards 0..2
    EXPECT_TRUE(std::equal(middle.begin(), middle.end(), train.begin() + 250));
  }
  for (auto& e : fs::recursive_directory_iterator(dir_)) EXPECT_NE(e.path().extension(), ".tmp") << e.path();
}

TEST_F(DataTest, TruncatedShardNamesFileAndSizes) {
  std::string d = make_shards("s", iota_tokens(100, 50), iota_tokens(10, 50), 50, 1000);
  fs::path shard = fs::path(d) / "train_000000.bin";
  fs::resize_file(shard, kShardHeaderBytes + 300);
  expect_error([&] { TokenDataset::open(d, "train"); }, {shard.string(), "more than"});
  fs::resize_file(shard, kShardHeaderBytes + 2 * 100 - 7);
  expect_error([&] { TokenDataset::open(d, "train"); },
               {shard.string(), "truncated", "expected " + std::to_string(kShardHeaderBytes + 200),
                std::to_string(kShardHeaderBytes + 193)});
  {
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.write("NOPE", 4);
  }
  expect_error([&] { TokenDataset::open(d, "train"); }, {shard.string(), "KTOK"});
  fs::resize_file(shard, 10);
  expect_error([&] { TokenDataset::open(d, "train"); }, {shard.string(), "truncated"});
}

TEST_F(DataTest, VocabMismatchNamesBothSizes) {
  std::string d = make_shards("s", iota_tokens(100, 50), iota_tokens(10, 50), 50, 1000);
  auto data = TokenDataset::open(d, "train");
  expect_error([&] { data.check_tokenizer_vocab(64); }, {d, "50", "64", "tokenizer"});
  expect_error([&] { data.check_model_vocab(32); }, {d, "50", "32", "model"});
  data.check_tokenizer_vocab(50);
  data.check_model_vocab(64);  // padded embeddings are fine
  // A shard made with another vocabulary than the index says.
  fs::path other = dir_ / "other";
  fs::create_directories(other);
  ShardWriter w(other, "train", 40, 1000);
  w.append(iota_tokens(100, 40));
  w.finish();
  fs::copy_file(other / "train_000000.bin", fs::path(d) / "train_000000.bin", fs::copy_options::overwrite_existing);
  expect_error([&] { TokenDataset::open(d, "train"); }, {"50", "40", "train_000000.bin"});
}

TEST_F(DataTest, ShardIndexErrorsNameTheField) {
  std::string d = make_shards("s", iota_tokens(100, 50), iota_tokens(10, 50), 50, 1000);
  write("s/meta.json", "{\"format\": \"kotoba-token-shards\", \"version\": 1, \"vocab_size\": \"big\"}");
  expect_error([&] { read_shard_index(d); }, {"meta.json", "vocab_size"});
  expect_error([&] { TokenDataset::open(path("absent"), "train"); }, {path("absent"), "prepare"});
  ShardWriter w(dir_, "x", 50, 10);
  expect_error([&] { w.append(std::vector<int32_t>{1, 2, 50}); }, {"token id 50", "[0, 50)"});
}

// ---------------------------------------------------------------- samplers

TEST_F(DataTest, SamplerIsDeterministicAndRestoresState) {
  std::string d = make_shards("s", iota_tokens(5000, 1000), iota_tokens(100, 1000), 1000, 777);
  auto data = TokenDataset::open(d, "train");
  WindowSampler a(data, 4, 16, 42), b(data, 4, 16, 42), other(data, 4, 16, 43);
  std::vector<std::vector<int32_t>> seen;
  for (int step = 0; step < 5; ++step) {
    auto ba = a.next(), bb = b.next(), bo = other.next();
    EXPECT_EQ(ints(ba.x), ints(bb.x));
    EXPECT_EQ(ints(ba.y), ints(bb.y));
    EXPECT_NE(ints(ba.x), ints(bo.x));
    seen.push_back(ints(ba.x));
  }
  EXPECT_EQ(a.state(), 20u);
  // Checkpoint after step 2, keep going, then restore into a fresh sampler: the same next batch.
  WindowSampler c(data, 4, 16, 42);
  c.next();
  c.next();
  uint64_t saved = c.state();
  auto expected = c.next();
  WindowSampler restored(data, 4, 16, 42);
  restored.set_state(saved);
  auto got = restored.next();
  EXPECT_EQ(ints(got.x), ints(expected.x));
  EXPECT_EQ(ints(got.y), ints(expected.y));
  EXPECT_EQ(ints(got.x), seen[2]);
}

TEST_F(DataTest, SamplerTargetsAreInputsShiftedByOne) {
  // Tokens 0, 1, 2, ... (mod vocab) over several shards: every window is consecutive.
  const int64_t vocab = 60000, B = 8, T = 32;
  std::string d = make_shards("s", iota_tokens(20000, vocab), iota_tokens(100, vocab), vocab, 1500);
  WindowSampler sampler(TokenDataset::open(d, "train"), B, T, 7);
  Tensor x = Tensor::empty({B, T}, DType::i32), y = Tensor::empty({B, T}, DType::i32);
  std::set<int32_t> starts;
  for (int step = 0; step < 20; ++step) {
    sampler.next(x, y);
    const int32_t* xi = x.data<int32_t>();
    const int32_t* yi = y.data<int32_t>();
    for (int64_t b = 0; b < B; ++b) {
      starts.insert(xi[b * T]);
      for (int64_t t = 0; t < T; ++t) {
        EXPECT_EQ(yi[b * T + t], xi[b * T + t] + 1);
        if (t + 1 < T) {
          EXPECT_EQ(xi[b * T + t + 1], yi[b * T + t]);
        }
      }
    }
  }
  EXPECT_GT(starts.size(), 150u);  // windows land all over the stream
  Tensor wrong = Tensor::empty({B, T + 1}, DType::i32);
  expect_error([&] { sampler.next(wrong, y); }, {"x", "i32"});
  expect_error([&] { WindowSampler(TokenDataset::open(d, "val"), 1, 100, 0); }, {"val", "100 tokens", "101"});
}

TEST_F(DataTest, SequentialWindowsCoverEveryFullWindowOnce) {
  const int64_t T = 10;
  std::string d = make_shards("s", iota_tokens(100, 1000), iota_tokens(95, 1000), 1000, 40);
  SequentialWindows windows(TokenDataset::open(d, "val"), 4, T);
  EXPECT_EQ(windows.num_windows(), 9);  // (95 - 1) / 10
  EXPECT_EQ(windows.num_batches(), 3);
  std::vector<int32_t> targets;
  std::vector<int64_t> rows;
  while (auto batch = windows.next()) {
    rows.push_back(batch->x.shape()[0]);
    auto x = ints(batch->x), y = ints(batch->y);
    for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(y[i], x[i] + 1);
    targets.insert(targets.end(), y.begin(), y.end());
  }
  EXPECT_EQ(rows, (std::vector<int64_t>{4, 4, 1}));
  std::vector<int32_t> expected(90);
  std::iota(expected.begin(), expected.end(), 1);
  EXPECT_EQ(targets, expected);  // every target token once, in order
  windows.reset();
  EXPECT_TRUE(windows.next().has_value());
}

// ---------------------------------------------------------------- prepare

TEST_F(DataTest, PrepareSplitsDocumentsDeterministically) {
  std::string jsonl;
  std::multiset<std::string> all;
  for (int i = 0; i < 40; ++i) {
    std::string text = "document number " + std::to_string(i) + " says hello";
    jsonl += "{\"text\": \"" + text + "\"}\n";
    all.insert(text);
  }
  auto a = write("a.jsonl", jsonl);
  auto b = write("b.txt", "a whole plain-text file\nof two lines\n");
  all.insert("a whole plain-text file\nof two lines\n");
  PrepareOptions options{.inputs = {a, b}, .out_dir = path("out"), .val_fraction = 0.1, .seed = 5,
                         .shard_tokens = 256, .show_progress = false};
  PrepareResult r = prepare_token_shards(options, byte_encoder());
  EXPECT_EQ(r.documents, 41);
  EXPECT_EQ(r.val_documents, 4);
  EXPECT_EQ(r.train_documents, 37);
  auto train = TokenDataset::open(path("out"), "train"), val = TokenDataset::open(path("out"), "val");
  EXPECT_EQ(train.size(), r.train_tokens);
  EXPECT_EQ(val.size(), r.val_tokens);
  EXPECT_EQ(train.eos_id(), 256);
  EXPECT_EQ(train.index().tokenizer_hash, "fnv1a64:byte");
  EXPECT_GT(train.index().train.shards.size(), 1u);
  auto train_docs = byte_documents(read_all(train)), val_docs = byte_documents(read_all(val));
  EXPECT_EQ(val_docs.size(), 4u);
  std::multiset<std::string> together = train_docs;
  together.insert(val_docs.begin(), val_docs.end());
  EXPECT_EQ(together, all);
  EXPECT_TRUE(entries("out.").empty());  // no temporary directory left

  // Same seed: the same split; the existing directory needs overwrite.
  expect_error([&] { prepare_token_shards(options, byte_encoder()); }, {path("out"), "already exists"});
  options.overwrite = true;
  prepare_token_shards(options, byte_encoder());
  EXPECT_EQ(byte_documents(read_all(TokenDataset::open(path("out"), "val"))), val_docs);
  options.seed = 6;
  prepare_token_shards(options, byte_encoder());
  EXPECT_NE(byte_documents(read_all(TokenDataset::open(path("out"), "val"))), val_docs);
  EXPECT_TRUE(entries("out.").empty());
}

TEST_F(DataTest, PrepareFailingMidwayLeavesNoDirectory) {
  auto a = write("a.txt", std::string(5000, 'x'));
  auto b = write("b.txt", std::string(5000, 'y'));
  PrepareOptions options{.inputs = {a, b}, .out_dir = path("out"), .val_fraction = 0.5, .shard_tokens = 1000,
                         .show_progress = false};
  options.after_chunk = [](int64_t written) {
    if (written > 0) throw Error("simulated failure after " + std::to_string(written) + " tokens");
  };
  expect_error([&] { prepare_token_shards(options, byte_encoder()); }, {"simulated failure"});
  EXPECT_FALSE(fs::exists(path("out")));
  EXPECT_TRUE(entries("out").empty()) << "a temporary directory was left behind";

  // A bad input fails before anything is written, and also leaves nothing.
  auto bad = write("bad.jsonl", "{\"text\": \"fine\"}\n{oops}\n");
  options.after_chunk = nullptr;
  options.inputs = {a, bad};
  expect_error([&] { prepare_token_shards(options, byte_encoder()); }, {bad + ":2"});
  EXPECT_TRUE(entries("out").empty());

  // An existing directory is untouched by a failed --overwrite run.
  options.inputs = {a, b};
  prepare_token_shards(options, byte_encoder());
  auto before = read_all(TokenDataset::open(path("out"), "train"));
  options.overwrite = true;
  options.after_chunk = [](int64_t) { throw Error("simulated failure"); };
  expect_error([&] { prepare_token_shards(options, byte_encoder()); }, {"simulated failure"});
  EXPECT_EQ(read_all(TokenDataset::open(path("out"), "train")), before);
  EXPECT_EQ(entries("out").size(), 1u);

  options.val_fraction = 0.5;
  options.inputs = {a};
  options.overwrite = false;
  options.out_dir = path("single");
  expect_error([&] { prepare_token_shards(options, byte_encoder()); }, {"at least 2 documents"});
}

// With the real byte-level BPE tokenizer trained on a generated corpus.
TEST_F(DataTest, PrepareWithTrainedTokenizer) {
  std::string jsonl;
  const char* words[] = {"alpha", "beta", "gamma", "delta", "kotoba", "token", "shard", "window"};
  for (int i = 0; i < 200; ++i) {
    std::string text;
    for (int w = 0; w < 12; ++w) text += std::string(words[(i * 7 + w * 3) % 8]) + (w % 5 == 4 ? ". " : " ");
    jsonl += "{\"text\": \"" + text + "\"}\n";
  }
  auto corpus = write("corpus.jsonl", jsonl);
  auto tok = tokenizer::Tokenizer::train({corpus}, {.vocab_size = 300, .threads = 2, .show_progress = false});
  tok.save(path("tokenizer.json"));
  PrepareOptions options{.inputs = {corpus}, .out_dir = path("out"), .val_fraction = 0.05, .threads = 2,
                         .show_progress = false};
  PrepareResult r = prepare_token_shards(options, path("tokenizer.json"));
  EXPECT_EQ(r.documents, 200);
  EXPECT_EQ(r.val_documents, 10);
  auto train = TokenDataset::open(path("out"), "train");
  train.check_tokenizer_vocab(tok.vocab_size());
  EXPECT_EQ(train.index().tokenizer_hash, tokenizer_file_hash(path("tokenizer.json")));
  EXPECT_EQ(train.eos_id(), *tok.eos_id());
  auto ids = read_all(train);
  std::string text = tok.decode(ids);
  EXPECT_NE(text.find("kotoba"), std::string::npos);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), *tok.eos_id()), 190);
  WindowSampler sampler(train, 2, 8, 1);
  auto batch = sampler.next();
  EXPECT_EQ(batch.x.shape(), (Shape{2, 8}));
}

// ---------------------------------------------------------------- progress

TEST(Progress, LineShowsCountsRateEtaAndExtra) {
  ProgressOptions o{.unit = "MB", .unit_scale = 1e-6};
  std::string line = Progress::format_line("tokenising", 25'000'000, 100'000'000, 10.0, o, "loss 3.21");
  EXPECT_NE(line.find("tokenising"), std::string::npos) << line;
  EXPECT_NE(line.find("25/100"), std::string::npos) << line;
  EXPECT_NE(line.find("25.0%"), std::string::npos) << line;
  EXPECT_NE(line.find("2.5 MB/s"), std::string::npos) << line;
  EXPECT_NE(line.find("ETA 0:30"), std::string::npos) << line;
  EXPECT_NE(line.find("loss 3.21"), std::string::npos) << line;
  std::string unknown = Progress::format_line("steps", 1500, 0, 3.0, {.unit = "steps"}, "");
  EXPECT_EQ(unknown.find("%"), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("500 steps/s"), std::string::npos) << unknown;
}

TEST(Progress, ThreadSafePlainLinesAndQuiet) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  {
    Progress bar("work", 8000, {.unit = "items", .stream = f, .interval_seconds = 0});
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&] {
        for (int i = 0; i < 2000; ++i) bar.add(1);
      });
    for (auto& t : threads) t.join();
    EXPECT_EQ(bar.done(), 8000);
  }
  std::rewind(f);
  std::string out;
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof buf, f)) out.append(buf, n);
  std::fclose(f);
  EXPECT_EQ(out.find('\r'), std::string::npos);  // not a terminal: plain lines
  EXPECT_NE(out.find("8000/8000 100.0%"), std::string::npos);

  std::FILE* q = std::tmpfile();
  {
    Progress quiet("work", 10, {.quiet = true, .stream = q, .interval_seconds = 0});
    quiet.add(10);
  }
  set_progress_quiet(true);
  {
    Progress quiet("work", 10, {.stream = q, .interval_seconds = 0});
    quiet.add(10);
  }
  set_progress_quiet(false);
  EXPECT_EQ(std::ftell(q), 0);
  std::fclose(q);
}

}  // namespace
