// io/png and train/plot: the PNG is decoded here by an independent reader (bitwise CRC, a
// stored-block inflater), and the plot survives NaN points, empty series and bad paths.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/png.h"
#include "train/plot.h"

namespace fs = std::filesystem;

namespace {

uint32_t be32(const std::vector<uint8_t>& b, size_t at) {
  return uint32_t(b[at]) << 24 | uint32_t(b[at + 1]) << 16 | uint32_t(b[at + 2]) << 8 | b[at + 3];
}

// CRC-32 bit by bit, without the library's table.
uint32_t slow_crc(const uint8_t* p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
  }
  return ~c;
}

struct Decoded {
  int width = 0, height = 0, channels = 0;
  std::vector<uint8_t> pixels;  // filter bytes removed
};

// Reads a PNG as encode_png writes it; every check is a gtest failure.
Decoded decode(const std::vector<uint8_t>& png) {
  Decoded d;
  const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  EXPECT_GE(png.size(), 8u);
  EXPECT_TRUE(std::equal(sig, sig + 8, png.begin())) << "bad signature";
  std::vector<uint8_t> z;
  std::vector<std::string> order;
  for (size_t at = 8; at + 12 <= png.size();) {
    uint32_t len = be32(png, at);
    std::string type(png.begin() + long(at) + 4, png.begin() + long(at) + 8);
    EXPECT_LE(at + 12 + len, png.size()) << type << " runs past the end";
    if (at + 12 + len > png.size()) return d;
    EXPECT_EQ(be32(png, at + 8 + len), slow_crc(&png[at + 4], len + 4)) << "CRC of " << type;
    order.push_back(type);
    if (type == "IHDR") {
      d.width = int(be32(png, at + 8)), d.height = int(be32(png, at + 12));
      EXPECT_EQ(png[at + 16], 8) << "bit depth";
      EXPECT_TRUE(png[at + 17] == 2 || png[at + 17] == 6) << "colour type";
      d.channels = png[at + 17] == 2 ? 3 : 4;
    }
    if (type == "IDAT") z.insert(z.end(), png.begin() + long(at) + 8, png.begin() + long(at + 8 + len));
    at += 12 + len;
  }
  EXPECT_GE(order.size(), 3u);
  if (order.size() < 3) return d;
  EXPECT_EQ(order.front(), "IHDR");
  EXPECT_EQ(order.back(), "IEND");

  // zlib header, then stored deflate blocks, then Adler-32.
  EXPECT_GE(z.size(), 6u);
  EXPECT_EQ(z[0] & 0x0F, 8) << "CM must be deflate";
  EXPECT_EQ((z[0] * 256 + z[1]) % 31, 0) << "FCHECK";
  std::vector<uint8_t> raw;
  size_t at = 2;
  for (bool last = false; !last;) {
    EXPECT_LE(at + 5, z.size());
    if (at + 5 > z.size()) return d;
    last = z[at] & 1;
    EXPECT_EQ((z[at] >> 1) & 3, 0) << "only stored blocks expected";
    size_t len = z[at + 1] | size_t(z[at + 2]) << 8, nlen = z[at + 3] | size_t(z[at + 4]) << 8;
    EXPECT_EQ(len ^ 0xFFFF, nlen);
    at += 5;
    EXPECT_LE(at + len, z.size());
    if (at + len > z.size()) return d;
    raw.insert(raw.end(), z.begin() + long(at), z.begin() + long(at + len));
    at += len;
  }
  EXPECT_EQ(at + 4, z.size());
  uint32_t a = 1, b = 0;
  for (uint8_t v : raw) a = (a + v) % 65521, b = (b + a) % 65521;
  EXPECT_EQ(be32(z, at), b << 16 | a) << "Adler-32";

  size_t row = size_t(d.width) * size_t(d.channels);
  EXPECT_EQ(raw.size(), size_t(d.height) * (1 + row));
  if (raw.size() != size_t(d.height) * (1 + row)) return d;
  for (int y = 0; y < d.height; ++y) {
    EXPECT_EQ(raw[size_t(y) * (row + 1)], 0) << "filter byte of row " << y;
    auto begin = raw.begin() + long(size_t(y) * (row + 1) + 1);
    d.pixels.insert(d.pixels.end(), begin, begin + long(row));
  }
  return d;
}

std::vector<uint8_t> read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

class Plot : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("kotoba-plot-" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

}  // namespace

TEST(Png, RoundTripsPixelsAcrossManyStoredBlocks) {
  for (int channels : {3, 4}) {
    // 300 x 100 x 4 = 120 kB of scanlines: more than one 65535-byte stored block.
    const int w = 300, h = 100;
    std::vector<uint8_t> px(size_t(w) * h * size_t(channels));
    for (size_t i = 0; i < px.size(); ++i) px[i] = uint8_t(i * 7 + i / 13);
    Decoded d = decode(kotoba::encode_png(px, w, h, channels));
    EXPECT_EQ(d.width, w);
    EXPECT_EQ(d.height, h);
    EXPECT_EQ(d.channels, channels);
    EXPECT_EQ(d.pixels, px);
  }
  std::vector<uint8_t> one = {1, 2, 3};
  EXPECT_EQ(decode(kotoba::encode_png(one, 1, 1, 3)).pixels, one);
}

TEST(Png, KnownChecksums) {
  const std::string s = "123456789";  // the standard check string
  std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  EXPECT_EQ(kotoba::crc32(bytes), 0xCBF43926u);
  EXPECT_EQ(kotoba::adler32(bytes), 0x091E01DEu);
}

TEST(Png, RejectsBadShapes) {
  std::vector<uint8_t> px(12);
  EXPECT_THROW(kotoba::encode_png(px, 2, 2, 2), kotoba::Error);
  EXPECT_THROW(kotoba::encode_png(px, 3, 2, 3), kotoba::Error);
  EXPECT_THROW(kotoba::encode_png(px, 0, 4, 3), kotoba::Error);
}

TEST_F(Plot, WritesADecodablePngWithTheSeriesColours) {
  kotoba::train::Series a{.name = "train", .x = {}, .y = {}}, b{.name = "val", .x = {0, 100, 200}, .y = {5, 3, 2}};
  for (int i = 0; i <= 200; i += 5) a.x.push_back(i), a.y.push_back(5.5 * std::exp(-i / 60.0) + 1.5);
  fs::path path = dir_ / "loss.png";
  kotoba::train::write_line_plot(path.string(), {a, b}, "Loss", "step", "loss", 640, 400);
  Decoded d = decode(read_file(path));
  ASSERT_EQ(d.width, 640);
  ASSERT_EQ(d.height, 400);
  ASSERT_EQ(d.channels, 3);
  // The first two palette colours appear exactly (line centres and legend swatches).
  auto count = [&](uint8_t r, uint8_t g, uint8_t bl) {
    size_t n = 0;
    for (size_t i = 0; i < d.pixels.size(); i += 3) n += d.pixels[i] == r && d.pixels[i + 1] == g && d.pixels[i + 2] == bl;
    return n;
  };
  EXPECT_GT(count(31, 119, 180), 200u);
  EXPECT_GT(count(255, 127, 14), 50u);
  EXPECT_GT(count(255, 255, 255), d.pixels.size() / 3 / 2) << "mostly white background";
  for (const auto& e : fs::directory_iterator(dir_))
    EXPECT_EQ(e.path().filename(), "loss.png") << "temporary file left behind";
}

TEST_F(Plot, NanPointsAndEmptySeriesStillWrite) {
  kotoba::train::Series gappy{.name = "gappy", .x = {0, 1, 2, 3, 4}, .y = {1, NAN, 2, INFINITY, 1.5}};
  kotoba::train::Series empty{.name = "empty", .x = {}, .y = {}};
  fs::path path = dir_ / "nan.png";
  kotoba::train::write_line_plot(path.string(), {gappy, empty}, "NaN and empty", "x", "y");
  Decoded d = decode(read_file(path));
  EXPECT_EQ(d.width, 800);
  EXPECT_EQ(d.height, 500);

  // No finite data at all, and no series at all: still a plot (axes on a default range).
  fs::path none = dir_ / "none.png";
  kotoba::train::write_line_plot(none.string(), {empty}, "", "", "", 200, 150);
  EXPECT_EQ(decode(read_file(none)).width, 200);
  kotoba::train::write_line_plot(none.string(), {}, "nothing", "x", "y");
  EXPECT_EQ(decode(read_file(none)).height, 500);
}

TEST_F(Plot, ErrorsNameThePath) {
  std::string bad = (dir_ / "no-such-dir" / "loss.png").string();
  try {
    kotoba::train::write_line_plot(bad, {}, "t", "x", "y");
    FAIL() << "expected kotoba::Error";
  } catch (const kotoba::Error& e) {
    EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
  }
  kotoba::train::Series uneven{.name = "uneven", .x = {1, 2}, .y = {1}};
  try {
    kotoba::train::write_line_plot((dir_ / "u.png").string(), {uneven}, "t", "x", "y");
    FAIL() << "expected kotoba::Error";
  } catch (const kotoba::Error& e) {
    EXPECT_NE(std::string(e.what()).find("uneven"), std::string::npos) << e.what();
  }
}
