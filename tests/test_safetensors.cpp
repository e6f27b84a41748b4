// io/safetensors: round trips of every dtype and layout, a kotoba::Error naming the file and the
// field at fault for each kind of malformed file, f16/bf16 conversions against numpy and torch,
// and sharded checkpoints against transformers (tests/safetensors_reference.py).
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <random>
#include <set>
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
  Tensor half_tensor = Tensor::empty({3}, DType::f16);  // raw half bits: 1.0, -2.0, 0.5
  uint16_t half[3] = {0x3c00, 0xc000, 0x3800};
  std::memcpy(half_tensor.raw(), half, sizeof(half));
  tensors["f16"] = half_tensor;
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

// Runs tests/safetensors_reference.py (numpy, torch, safetensors, transformers in KOTOBA_PYTHON).
void run_reference(const std::string& arguments) {
  std::string cmd = std::string("\"") + KOTOBA_PYTHON + "\" \"" + KOTOBA_SOURCE_DIR +
                    "/tests/safetensors_reference.py\" " + arguments;
  ASSERT_EQ(std::system(cmd.c_str()), 0)
      << "failed: " << cmd << "\n(the reference needs numpy, torch, safetensors and transformers in "
      << KOTOBA_PYTHON << "; scripts/test makes that venv)";
}

template <typename T>
std::vector<T> read_binary(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::vector<T> values(std::filesystem::file_size(p) / sizeof(T));
  in.read(reinterpret_cast<char*>(values.data()), std::streamsize(values.size() * sizeof(T)));
  return values;
}

uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
bool half_is_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff); }
bool bf16_is_nan(uint16_t h) { return (h & 0x7f80) == 0x7f80 && (h & 0x7f); }

// Both NaN (converters differ in quieting, payload and even sign: torch's bf16 NaN is 0xffff), else
// bit-equal.
::testing::AssertionResult same_16(uint16_t got, uint16_t want, bool got_nan, bool want_nan, float input) {
  if (got_nan || want_nan) {
    if (got_nan && want_nan) return ::testing::AssertionSuccess();
  } else if (got == want) {
    return ::testing::AssertionSuccess();
  }
  char text[160];
  std::snprintf(text, sizeof(text), "input %a (bits 0x%08x): got 0x%04x, reference 0x%04x", double(input),
                float_bits(input), got, want);
  return ::testing::AssertionFailure() << text;
}

TEST_F(SafeTensorsTest, HalfAndBfloat16ConversionsMatchNumpyAndTorch) {
  std::mt19937_64 rng(test_seed());
  std::vector<uint32_t> inputs;
  for (int i = 0; i < 100000; ++i) inputs.push_back(uint32_t(rng()));  // every exponent, NaNs and infinities
  std::normal_distribution<float> normal;
  for (int e = -30; e <= 20; ++e)  // dense around the half range: subnormals, normals, overflow
    for (int i = 0; i < 1000; ++i) inputs.push_back(float_bits(std::ldexp(normal(rng), e)));
  for (int i = 0; i < 20000; ++i) {  // exact ties between neighbouring halves: round to even
    uint16_t h = uint16_t(rng() & 0x7bfe) | uint16_t(rng() & 0x8000);
    float a = f16_to_f32(f16{h}), b = f16_to_f32(f16{uint16_t(h + 1)});
    inputs.push_back(float_bits(a + (b - a) / 2));
  }
  for (float edge : {0.0f, -0.0f, 65504.0f, 65519.996f, 65520.0f, 65536.0f, 0x1p-14f, 0x1.ffcp-15f, 0x1p-24f,
                     0x1p-25f, 0x1.000002p-25f, 0x1.8p-25f, 0x1.8p-24f, 0x1p-149f, 3.4028235e38f, INFINITY, -INFINITY,
                     NAN, -NAN})
    inputs.push_back(float_bits(edge));
  inputs.push_back(0x7f800001u);  // signalling NaN
  inputs.push_back(0xff812345u);
  std::ofstream(path("in.bin"), std::ios::binary)
      .write(reinterpret_cast<const char*>(inputs.data()), std::streamsize(inputs.size() * 4));
  run_reference("f16 \"" + path("in.bin") + "\" \"" + dir_.string() + "\"");

  auto numpy_f16 = read_binary<uint16_t>(dir_ / "numpy_f16.bin");
  auto torch_f16 = read_binary<uint16_t>(dir_ / "torch_f16.bin");
  auto torch_bf16 = read_binary<uint16_t>(dir_ / "torch_bf16.bin");
  ASSERT_EQ(numpy_f16.size(), inputs.size());
  ASSERT_EQ(torch_f16.size(), inputs.size());
  ASSERT_EQ(torch_bf16.size(), inputs.size());
  int failures = 0;
  for (size_t i = 0; i < inputs.size() && failures < 10; ++i) {
    float x = bits_float(inputs[i]);
    uint16_t half = f32_to_f16(x).bits, brain = f32_to_bf16(x).bits;
    bool ok = true;
    auto check = [&](::testing::AssertionResult r, const char* who) {
      if (!r) {
        ADD_FAILURE() << who << ": " << r.message();
        ok = false;
      }
    };
    check(same_16(half, numpy_f16[i], half_is_nan(half), half_is_nan(numpy_f16[i]), x), "f32_to_f16 vs numpy");
    check(same_16(half, torch_f16[i], half_is_nan(half), half_is_nan(torch_f16[i]), x), "f32_to_f16 vs torch");
    check(same_16(brain, torch_bf16[i], bf16_is_nan(brain), bf16_is_nan(torch_bf16[i]), x), "f32_to_bf16 vs torch");
    failures += !ok;
  }

  // Every half, widened: exact, so bit-equal (NaNs: a NaN of the same sign, as numpy keeps it).
  auto numpy_wide = read_binary<uint32_t>(dir_ / "numpy_f16_to_f32.bin");
  ASSERT_EQ(numpy_wide.size(), 65536u);
  failures = 0;
  for (uint32_t h = 0; h < 65536 && failures < 10; ++h) {
    uint32_t got = float_bits(f16_to_f32(f16{uint16_t(h)}));
    bool nan = half_is_nan(uint16_t(h));
    bool ok = nan ? (std::isnan(bits_float(got)) && std::isnan(bits_float(numpy_wide[h])) &&
                     (got >> 31) == (numpy_wide[h] >> 31))
                  : got == numpy_wide[h];
    if (!ok) {
      ++failures;
      ADD_FAILURE() << "f16_to_f32(0x" << std::hex << h << ") = 0x" << got << ", numpy 0x" << numpy_wide[h];
    }
    // And back: every non-NaN half survives the round trip bit for bit.
    if (!nan) {
      EXPECT_EQ(f32_to_f16(bits_float(got)).bits, h);
    }
  }
}

TEST_F(SafeTensorsTest, ReadsEveryFloatDtypeOfTorchAsF32) {
  run_reference("dtypes " + std::to_string(test_seed() % 1000000007) + " \"" + dir_.string() + "\"");
  SafeTensors file = load_safetensors(path("dtypes.safetensors"));
  SafeTensors twins = load_safetensors(path("twins.safetensors"));
  ASSERT_EQ(file.tensors.size(), twins.tensors.size());
  for (const auto& [name, tensor] : file.tensors) {
    SCOPED_TRACE(name);
    std::string suffix = name.substr(name.rfind('.') + 1);
    DType want = suffix == "f16" ? DType::f16 : suffix == "bf16" ? DType::bf16 : DType::f64;
    EXPECT_EQ(tensor.dtype(), want);
    Tensor got = to_f32(tensor, name);
    const Tensor& twin = twins.tensors.at(name);
    ASSERT_EQ(got.dtype(), DType::f32);
    ASSERT_EQ(got.shape(), twin.shape());
    EXPECT_FALSE(got.same_storage(tensor));
    EXPECT_EQ(std::memcmp(got.raw(), twin.raw(), got.nbytes()), 0);  // exact, incl. inf and subnormals
    EXPECT_EQ(tensor.to_vector(), twin.to_vector());                 // Tensor::to_vector reads f16 too
  }
}

TEST_F(SafeTensorsTest, FromF32MatchesTorchCasts) {
  Generator gen(test_seed());
  std::map<std::string, Tensor> inputs, converted;
  inputs["small"] = random_normal({6, 5}, gen, 1e-5f);
  inputs["unit"] = random_normal({33}, gen);
  inputs["large"] = random_normal({4, 4}, gen, 3e4f);  // some beyond the half range: infinity
  inputs["edges"] = Tensor::from_vector({0.0f, -0.0f, 65504.0f, 65520.0f, 0x1p-24f, 0x1p-25f, 0x1.8p-24f, INFINITY,
                                         -INFINITY, NAN, 3.4028235e38f, 0x1p-149f},
                                        {12});
  for (const auto& [name, x] : inputs) {
    converted[name + ".f16"] = from_f32(x, DType::f16, name);
    converted[name + ".bf16"] = from_f32(x, DType::bf16, name);
    converted[name + ".f64"] = from_f32(x, DType::f64, name);
    // Back to f32 is exact for what f16/bf16 can hold.
    Tensor back = to_f32(converted[name + ".f16"]);
    Tensor again = from_f32(back, DType::f16);
    EXPECT_EQ(std::memcmp(again.raw(), converted[name + ".f16"].raw(), again.nbytes()), 0) << name;
  }
  // Any layout in, contiguous out; an f32 target is a copy, never an alias.
  Tensor transposed = random_normal({3, 4}, gen).transpose_view(0, 1);
  Tensor t16 = from_f32(transposed, DType::f16);
  EXPECT_TRUE(t16.is_contiguous());
  std::vector<float> want = transposed.to_vector(), got = to_f32(t16).to_vector();
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[i], f16_to_f32(f32_to_f16(want[i])));
  Tensor copy = from_f32(inputs["unit"], DType::f32);
  EXPECT_FALSE(copy.same_storage(inputs["unit"]));
  EXPECT_EQ(copy.to_vector(), inputs["unit"].to_vector());

  std::filesystem::create_directories(dir_ / "from_f32");
  save_safetensors((dir_ / "from_f32/inputs.safetensors").string(), inputs);
  save_safetensors((dir_ / "from_f32/converted.safetensors").string(), converted);
  run_reference("check-from-f32 \"" + (dir_ / "from_f32").string() + "\"");
}

TEST_F(SafeTensorsTest, ConversionsRefuseWhatIsNotFloat) {
  auto expect_error = [](auto&& call, const std::vector<std::string>& needles) {
    try {
      call();
    } catch (const Error& e) {
      for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
      return;
    }
    ADD_FAILURE() << "no error";
  };
  expect_error([] { to_f32(Tensor::from_vector_i32({1, 2}, {2}), "layer.ids"); }, {"layer.ids", "i32", "floating"});
  expect_error([] { to_f32(Tensor::empty({4}, DType::q4), "w"); }, {"w", "q4"});
  expect_error([] { to_f32(Tensor(), "missing"); }, {"missing", "undefined"});
  expect_error([] { from_f32(Tensor::full({2}, 1.0f), DType::i8, "w"); }, {"w", "i8", "floating"});
  expect_error([] { from_f32(Tensor::from_vector_i32({1}, {1}), DType::f16, "ids"); }, {"ids", "i32"});
  // f64 beyond the float range becomes infinity, as a cast by torch does.
  Tensor big = Tensor::empty({3}, DType::f64);
  double values[3] = {1e300, -1e39, 3.4028235e38};
  std::memcpy(big.raw(), values, sizeof(values));
  EXPECT_EQ(to_f32(big).to_vector(), (std::vector<float>{INFINITY, -INFINITY, 3.4028235e38f}));
}

TEST_F(SafeTensorsTest, NamesDtypesKotobaCannotHold) {
  for (const char* dtype : {"BOOL", "U8", "I16", "U16", "U32", "U64", "F8_E4M3", "F8_E5M2"}) {
    SCOPED_TRACE(dtype);
    std::string header = std::string(R"({"mask":{"dtype":")") + dtype + R"(","shape":[1],"data_offsets":[0,8]}})";
    expect_load_error(write_raw(std::string(dtype) + ".safetensors", header, std::string(8, '\0')),
                      {"'mask'", std::string("'") + dtype + "'", "not supported by kotoba"});
  }
  expect_load_error(write_raw("odd.safetensors", R"({"w":{"dtype":"Q7","shape":[1],"data_offsets":[0,1]}})",
                              std::string(1, '\0')),
                    {"'w'", "unknown dtype \"Q7\""});
}

TEST_F(SafeTensorsTest, ParsesFromMemoryLikeFromFile) {
  Generator gen(test_seed());
  std::string p = path("m.safetensors");
  save_safetensors(p, {{"a", random_normal({3, 2}, gen)}, {"b", random_normal({5}, gen).to(DType::bf16)}},
                   {{"format", "pt"}});
  std::ifstream in(p, std::ios::binary);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  SafeTensors from_file = load_safetensors(p);
  SafeTensors from_memory = parse_safetensors(bytes, "in-memory.safetensors");
  EXPECT_EQ(from_memory.metadata, from_file.metadata);
  ASSERT_EQ(from_memory.tensors.size(), 2u);
  for (const auto& [name, t] : from_file.tensors) {
    const Tensor& m = from_memory.tensors.at(name);
    EXPECT_EQ(m.dtype(), t.dtype());
    EXPECT_EQ(m.to_vector(), t.to_vector());
  }
  bytes.resize(bytes.size() - 3);
  try {
    parse_safetensors(bytes, "in-memory.safetensors");
    ADD_FAILURE() << "truncated bytes parsed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("in-memory.safetensors"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_safetensors(std::span<const uint8_t>(bytes.data(), 7), "x"), Error);
}

// Every tensor of `want` is in `got` with the same dtype, shape and bytes, and nothing else is.
void expect_same_tensors(const std::map<std::string, Tensor>& got, const std::map<std::string, Tensor>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, w] : want) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(got.count(name));
    const Tensor& g = got.at(name);
    ASSERT_EQ(g.dtype(), w.dtype());
    ASSERT_EQ(g.shape(), w.shape());
    Tensor a = g.contiguous(), b = w.contiguous();
    EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0);
  }
}

TEST_F(SafeTensorsTest, LoadsCheckpointsShardedByTransformers) {
  for (const char* arch : {"gpt2", "llama"}) {
    SCOPED_TRACE(arch);
    std::filesystem::path work = dir_ / arch;
    std::filesystem::create_directories(work);
    run_reference(std::string("hf-sharded ") + std::to_string(test_seed() % 1000000007) + " " + arch + " \"" +
                  work.string() + "\"");
    std::map<std::string, Tensor> weights = load_model_weights((work / "hf").string());
    SafeTensors expected = load_safetensors((work / "expected.safetensors").string());
    expect_same_tensors(weights, expected.tensors);
    EXPECT_EQ(weights.begin()->second.dtype(), std::string(arch) == "llama" ? DType::bf16 : DType::f32);
  }
}

TEST_F(SafeTensorsTest, ShardsByKotobaLoadInTransformers) {
  // Names and shapes of a real GPT-2 (made by transformers); values fresh from this test.
  run_reference("hf-sharded " + std::to_string(test_seed() % 1000000007) + " gpt2 \"" + dir_.string() + "\"");
  SafeTensors layout = load_safetensors(path("expected.safetensors"));
  Generator gen(test_seed() + 1);
  std::map<std::string, Tensor> tensors;
  for (const auto& [name, t] : layout.tensors) tensors[name] = from_f32(random_normal(t.shape(), gen, 0.5f), DType::f16);
  std::filesystem::path out = dir_ / "kotoba";
  std::filesystem::create_directories(out / "model");
  std::filesystem::copy_file(dir_ / "hf" / "config.json", out / "model" / "config.json");
  save_model_weights((out / "model").string(), tensors, 8000);
  save_safetensors((out / "expected.safetensors").string(), tensors);
  ASSERT_TRUE(std::filesystem::exists(out / "model" / "model.safetensors.index.json"));
  EXPECT_FALSE(std::filesystem::exists(out / "model" / "model.safetensors"));
  expect_same_tensors(load_model_weights((out / "model").string()), tensors);
  run_reference("check-kotoba-sharded \"" + out.string() + "\"");
}

std::set<std::string> files_in(const std::filesystem::path& dir) {
  std::set<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

TEST_F(SafeTensorsTest, SaveModelWeightsReplacesEarlierLayouts) {
  Generator gen(test_seed());
  std::map<std::string, Tensor> weights;
  for (int i = 0; i < 5; ++i) weights["layer" + std::to_string(i)] = random_normal({10, 10}, gen);  // 400 bytes each
  std::string dir = dir_.string();
  std::ofstream(dir_ / "config.json") << "{}";
  std::ofstream(dir_ / "model-notes.safetensors.txt") << "a user's file";

  save_model_weights(dir, weights, 0);  // everything in one file
  EXPECT_EQ(files_in(dir_), (std::set<std::string>{"config.json", "model-notes.safetensors.txt", "model.safetensors"}));
  EXPECT_EQ(load_safetensors(path("model.safetensors")).metadata.at("format"), "pt");

  save_model_weights(dir, weights, 1000);  // two per shard: three shards
  EXPECT_EQ(files_in(dir_), (std::set<std::string>{"config.json", "model-notes.safetensors.txt",
                                                   "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                                                   "model-00003-of-00003.safetensors", "model.safetensors.index.json"}));
  expect_same_tensors(load_model_weights(dir), weights);
  auto index = nlohmann::json::parse(std::ifstream(path("model.safetensors.index.json")));
  EXPECT_EQ(index["metadata"]["total_size"], 2000);
  EXPECT_EQ(index["weight_map"]["layer2"], "model-00002-of-00003.safetensors");

  weights["layer0"] = random_normal({10, 10}, gen);  // same layout, new values: shards overwritten
  save_model_weights(dir, weights, 1000, {{"step", "7"}});
  expect_same_tensors(load_model_weights(dir), weights);
  EXPECT_EQ(load_safetensors(path("model-00001-of-00003.safetensors")).metadata.at("step"), "7");

  save_model_weights(dir, weights, 300);  // one per shard (each is over the limit): five shards
  EXPECT_EQ(files_in(dir_).size(), 2u + 5u + 1u);
  EXPECT_FALSE(std::filesystem::exists(dir_ / "model-00001-of-00003.safetensors"));
  expect_same_tensors(load_model_weights(dir), weights);

  save_model_weights(dir, weights, 100000);  // fits: back to one file, shards and index gone
  EXPECT_EQ(files_in(dir_), (std::set<std::string>{"config.json", "model-notes.safetensors.txt", "model.safetensors"}));
  expect_same_tensors(load_model_weights(dir), weights);

  EXPECT_THROW(save_model_weights(dir, weights, -1), Error);
  EXPECT_THROW(save_model_weights(path("no_such_dir"), weights), Error);
  EXPECT_THROW(save_model_weights(dir, {{"q", Tensor::empty({4}, DType::q4)}}, 0), Error);
}

TEST_F(SafeTensorsTest, RejectsBrokenShardedCheckpoints) {
  Generator gen(test_seed());
  std::string dir = dir_.string();
  save_model_weights(dir, {{"a", random_normal({4}, gen)}, {"b", random_normal({4}, gen)}}, 16);
  const std::string index_path = path("model.safetensors.index.json");
  const std::string shard1 = "model-00001-of-00002.safetensors", shard2 = "model-00002-of-00002.safetensors";
  auto write_index = [&](const std::string& text) { std::ofstream(index_path) << text; };
  auto expect_error = [&](const std::vector<std::string>& needles) {
    try {
      load_model_weights(dir);
    } catch (const Error& e) {
      for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
      return;
    }
    ADD_FAILURE() << "loaded without error";
  };
  auto index_for = [&](const std::string& a_file, const std::string& b_file) {
    return R"({"metadata":{"total_size":32},"weight_map":{"a":")" + a_file + R"(","b":")" + b_file + R"("}})";
  };
  ASSERT_EQ(load_model_weights(dir).size(), 2u);

  write_index(index_for(shard1, "model-00009-of-00009.safetensors"));
  expect_error({index_path, "model-00009-of-00009.safetensors", "'b'", "missing"});
  write_index(index_for(shard2, shard2));  // 'a' is not in shard 2, and shard 2's 'b'... 'a' is listed elsewhere
  expect_error({shard2, "'a'", "not in this shard"});
  write_index(R"({"weight_map":{"a":")" + shard1 + R"("}})");  // b's shard is never read; a is alone in shard 1
  ASSERT_EQ(load_model_weights(dir).size(), 1u);
  write_index(R"({"weight_map":{"a":")" + shard1 + R"(","c":")" + shard1 + R"("}})");
  expect_error({shard1, "'c'", "not in this shard"});
  // A shard holding a tensor the index puts elsewhere: the tensor would appear twice.
  save_safetensors(path(shard2), {{"a", random_normal({4}, gen)}, {"b", random_normal({4}, gen)}});
  write_index(index_for(shard1, shard2));
  expect_error({shard2, "'a'", "listed for shard " + shard1});
  write_index(R"({"weight_map":{"b":")" + shard2 + R"("}})");
  expect_error({shard2, "'a'", "not listed"});
  for (const char* escape : {"../outside.safetensors", "/etc/passwd", "sub/dir.safetensors", ".."}) {
    write_index(index_for(shard1, escape));
    expect_error({index_path, "'b'", "not a plain file name"});
  }
  write_index("{\"weight_map\": ");
  expect_error({index_path, "invalid JSON"});
  write_index(R"({"weight_map":["a"]})");
  expect_error({index_path, "weight_map must be an object"});
  write_index(R"({"weight_map":{"a":7}})");
  expect_error({index_path, "weight_map['a']", "7"});
  write_index(R"({"metadata":{}})");
  expect_error({index_path, "weight_map"});
  // A corrupt shard: the error names the shard.
  write_index(index_for(shard1, shard1));
  std::filesystem::resize_file(path(shard1), 20);
  expect_error({shard1, "truncated"});
  std::filesystem::remove(index_path);
  expect_error({dir, "model.safetensors", "model.safetensors.index.json"});
  EXPECT_THROW(load_model_weights(path("absent")), Error);
}

}  // namespace
