// io/safetensors: round trips of every dtype and layout, and a kotoba::Error naming the file and
// the field at fault for each kind of malformed file.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "tests/test_util.h"

using namespace kotoba;
using namespace kotoba::testing;

namespace {

class SafeTensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("kotoba_safetensors_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // Writes a file from a header (JSON text) and a data region.
  std::string write_raw(const std::string& name, const std::string& header, const std::string& data,
                        int64_t header_len_override = -1) {
    std::string p = path(name);
    std::ofstream out(p, std::ios::binary);
    uint64_t n = header_len_override >= 0 ? uint64_t(header_len_override) : header.size();
    for (int i = 0; i < 8; ++i) out.put(char((n >> (8 * i)) & 0xff));
    out << header << data;
    return p;
  }

  // Expects load_safetensors(p) to throw mentioning the file and each needle.
  void expect_load_error(const std::string& p, const std::vector<std::string>& needles) {
    try {
      load_safetensors(p);
    } catch (const Error& e) {
      std::string m = e.what();
      EXPECT_NE(m.find(p), std::string::npos) << "message lacks the file name: " << m;
      for (const auto& n : needles) EXPECT_NE(m.find(n), std::string::npos) << "message lacks \"" << n << "\": " << m;
      return;
    }
    ADD_FAILURE() << p << " loaded without error";
  }

  std::filesystem::path dir_;
};

TEST_F(SafeTensorsTest, RoundTripsEveryDtypeAndLayout) {
  Generator gen(test_seed());
  std::map<std::string, Tensor> tensors;
  tensors["f32"] = random_normal({3, 5}, gen);
  tensors["f32_transposed"] = random_normal({4, 6}, gen).transpose_view(0, 1);  // saved contiguous
  tensors["bf16"] = random_normal({7}, gen).to(DType::bf16);                   // odd byte count: unaligned next
  tensors["f64"] = random_normal({2, 2, 2}, gen).to(DType::f64);
  tensors["i32"] = Tensor::from_vector_i32({1, -2, 3, 2147483647}, {2, 2});
  tensors["i64"] = Tensor::from_vector_i32({5, -6, 7}, {3}).to(DType::i64);
  tensors["i8"] = Tensor::from_vector_i32({-128, 0, 127}, {3}).to(DType::i8);
  tensors["scalar"] = Tensor::full({}, 2.5f);
  tensors["empty"] = Tensor::empty({0, 4});
  Tensor f16 = Tensor::empty({3}, DType::f16);  // raw half bits: 1.0, -2.0, 0.5
  uint16_t half[3] = {0x3c00, 0xc000, 0x3800};
  std::memcpy(f16.raw(), half, sizeof(half));
  tensors["f16"] = f16;
  std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "kotoba test"}};

  std::string p = path("round.safetensors");
  save_safetensors(p, tensors, metadata);
  SafeTensors loaded = load_safetensors(p);
  EXPECT_EQ(loaded.metadata, metadata);
  ASSERT_EQ(loaded.tensors.size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(loaded.tensors.count(name));
    const Tensor& l = loaded.tensors.at(name);
    EXPECT_EQ(l.dtype(), t.dtype());
    EXPECT_EQ(l.shape(), t.shape());
    EXPECT_TRUE(l.is_contiguous());
    if (t.dtype() == DType::f16) {
      EXPECT_EQ(std::memcmp(l.raw(), half, sizeof(half)), 0);
    } else if (t.dtype() == DType::f64 || t.dtype() == DType::i64) {
      Tensor a = t.contiguous(), b = l;
      EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0);
    } else {
      EXPECT_EQ(l.to_vector(), t.to_vector());
    }
  }
  // Loaded tensors are writable (copy-on-write) and writing leaves the file alone.
  loaded.tensors.at("f32").fill(0.0f);
  SafeTensors again = load_safetensors(p);
  EXPECT_EQ(again.tensors.at("f32").to_vector(), tensors.at("f32").to_vector());
  // No temporary file is left behind.
  int files = 0;
  for (auto& entry : std::filesystem::directory_iterator(dir_)) files += entry.is_regular_file();
  EXPECT_EQ(files, 1);
}

TEST_F(SafeTensorsTest, ReadsFilesOfTheReferenceWriterLayout) {
  // Hand-made file as Python's writer makes it: header padded with spaces, two tensors.
  float values[3] = {1.5f, -2.0f, 3.25f};
  int32_t ints[2] = {7, -9};
  std::string data(reinterpret_cast<const char*>(values), 12);
  data.append(reinterpret_cast<const char*>(ints), 8);
  std::string header =
      R"({"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
      R"("b":{"dtype":"I32","shape":[1,2],"data_offsets":[12,20]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  SafeTensors st = load_safetensors(write_raw("ref.safetensors", header, data));
  EXPECT_EQ(st.metadata.at("k"), "v");
  EXPECT_EQ(st.tensors.at("a").to_vector(), (std::vector<float>{1.5f, -2.0f, 3.25f}));
  EXPECT_EQ(st.tensors.at("b").shape(), (Shape{1, 2}));
  EXPECT_EQ(st.tensors.at("b").data<int32_t>()[1], -9);
}

TEST_F(SafeTensorsTest, OverwritesAtomically) {
  std::string p = path("model.safetensors");
  save_safetensors(p, {{"x", Tensor::full({2}, 1.0f)}});
  SafeTensors first = load_safetensors(p);  // stays mapped while the file is replaced
  save_safetensors(p, {{"x", Tensor::full({3}, 2.0f)}});
  EXPECT_EQ(first.tensors.at("x").to_vector(), (std::vector<float>{1.0f, 1.0f}));
  EXPECT_EQ(load_safetensors(p).tensors.at("x").to_vector(), (std::vector<float>{2.0f, 2.0f, 2.0f}));
}

TEST_F(SafeTensorsTest, TruncatedFile) {
  std::string p = path("t.safetensors");
  save_safetensors(p, {{"weight", Tensor::full({16}, 1.0f)}});
  auto size = std::filesystem::file_size(p);
  std::filesystem::resize_file(p, size - 4);
  expect_load_error(p, {"weight", "truncated"});
  std::filesystem::resize_file(p, 5);
  expect_load_error(p, {"truncated"});
  // The header length claims more bytes than there are.
  expect_load_error(write_raw("short_header.safetensors", "{}", "", 64), {"header length 64", "truncated"});
}

TEST_F(SafeTensorsTest, CorruptHeader) {
  expect_load_error(write_raw("json.safetensors", "{\"a\": {\"dtype\": ", ""), {"JSON"});
  expect_load_error(write_raw("array.safetensors", "[1, 2]", ""), {"object"});
  expect_load_error(write_raw("absurd.safetensors", "{}", "", int64_t(1) << 40), {"header length", "absurd"});
  expect_load_error(write_raw("dtype.safetensors", R"({"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})",
                              std::string(2, '\0')),
                    {"'w'", "F8_E4M3"});
  expect_load_error(write_raw("bytes.safetensors", R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})",
                              std::string(24, '\0')),
                    {"'w'", "[2, 3]", "24", "20"});
  expect_load_error(write_raw("range.safetensors", R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
                              std::string(16, '\0')),
                    {"'w'", "data_offsets"});
  expect_load_error(write_raw("overlap.safetensors",
                              R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                              R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                              std::string(16, '\0')),
                    {"'a'", "'b'", "overlap"});
  expect_load_error(write_raw("missing.safetensors", R"({"w":{"dtype":"F32","shape":[4]}})", std::string(16, '\0')),
                    {"'w'", "data_offsets"});
  expect_load_error(write_raw("negative.safetensors", R"({"w":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})",
                              std::string(16, '\0')),
                    {"'w'", "shape"});
  expect_load_error(write_raw("meta.safetensors", R"({"__metadata__":{"n":3}})", ""), {"__metadata__", "'n'"});
  expect_load_error(path("does_not_exist.safetensors"), {"cannot open"});
}

TEST_F(SafeTensorsTest, RefusesWhatItCannotWrite) {
  EXPECT_THROW(save_safetensors(path("q4.safetensors"), {{"q", Tensor::empty({4}, DType::q4)}}), Error);
  EXPECT_THROW(save_safetensors(path("undef.safetensors"), {{"u", Tensor()}}), Error);
  EXPECT_THROW(save_safetensors(path("no_such_dir/x.safetensors"), {{"x", Tensor::full({1}, 1.0f)}}), Error);
  EXPECT_FALSE(std::filesystem::exists(path("q4.safetensors")));
}

}  // namespace
