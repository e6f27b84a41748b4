// PNG encoding with stored deflate blocks (RFC 1950/1951/2083), and its atomic file write.
// Files come out about as large as the raw pixels, which is fine for plots of a few hundred kB.
#include "io/png.h"

#include "core/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace kotoba {
namespace {

constexpr size_t kMaxStoredBlock = 65535;  // LEN of a stored block is 16 bits

const std::array<uint32_t, 256>& crc_table() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  return table;
}

void put_u32_be(std::vector<uint8_t>& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(uint8_t(v >> shift));
}

// length, type, data, CRC over type + data.
void put_chunk(std::vector<uint8_t>& out, const char type[4], std::span<const uint8_t> data) {
  put_u32_be(out, uint32_t(data.size()));
  size_t type_at = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data.begin(), data.end());
  put_u32_be(out, crc32(std::span<const uint8_t>(out).subspan(type_at)));
}

}  // namespace

uint32_t crc32(std::span<const uint8_t> bytes, uint32_t crc) {
  const auto& table = crc_table();
  crc = ~crc;
  for (uint8_t b : bytes) crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

uint32_t adler32(std::span<const uint8_t> bytes) {
  uint32_t a = 1, b = 0;
  size_t i = 0;
  while (i < bytes.size()) {
    size_t end = std::min(bytes.size(), i + 5552);  // the most bytes before b can overflow 32 bits
    for (; i < end; ++i) {
      a += bytes[i];
      b += a;
    }
    a %= 65521;
    b %= 65521;
  }
  return b << 16 | a;
}

std::vector<uint8_t> encode_png(std::span<const uint8_t> pixels, int width, int height, int channels) {
  KOTOBA_CHECK(channels == 3 || channels == 4, "encode_png: channels must be 3 (RGB) or 4 (RGBA), got ", channels);
  KOTOBA_CHECK(width > 0 && height > 0 && width <= 16384 && height <= 16384, "encode_png: image size ", width, "x",
               height, " is outside 1..16384");
  const size_t row = size_t(width) * size_t(channels);
  KOTOBA_CHECK(pixels.size() == row * size_t(height), "encode_png: ", width, "x", height, "x", channels, " needs ",
               row * size_t(height), " bytes of pixels, got ", pixels.size());

  // Scanlines, each led by filter type 0 (none).
  std::vector<uint8_t> raw;
  raw.reserve((row + 1) * size_t(height));
  for (int y = 0; y < height; ++y) {
    raw.push_back(0);
    auto line = pixels.subspan(size_t(y) * row, row);
    raw.insert(raw.end(), line.begin(), line.end());
  }

  // zlib: CMF 0x78 (deflate, 32 K window), FLG 0x01 (makes CMF*256+FLG a multiple of 31), stored
  // blocks (byte-aligned header: BFINAL bit, BTYPE 00; then LEN and ~LEN little-endian), Adler-32.
  std::vector<uint8_t> z = {0x78, 0x01};
  z.reserve(raw.size() + raw.size() / kMaxStoredBlock * 5 + 16);
  for (size_t at = 0; at < raw.size(); at += kMaxStoredBlock) {
    size_t n = std::min(kMaxStoredBlock, raw.size() - at);
    bool last = at + n == raw.size();
    z.push_back(last ? 1 : 0);
    z.push_back(uint8_t(n));
    z.push_back(uint8_t(n >> 8));
    z.push_back(uint8_t(~n));
    z.push_back(uint8_t(~n >> 8));
    z.insert(z.end(), raw.begin() + ptrdiff_t(at), raw.begin() + ptrdiff_t(at + n));
  }
  put_u32_be(z, adler32(raw));

  std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  std::vector<uint8_t> ihdr;
  put_u32_be(ihdr, uint32_t(width));
  put_u32_be(ihdr, uint32_t(height));
  // bit depth 8, colour type 2 (RGB) or 6 (RGBA), compression 0, filter 0, no interlace
  ihdr.insert(ihdr.end(), {8, uint8_t(channels == 3 ? 2 : 6), 0, 0, 0});
  put_chunk(png, "IHDR", ihdr);
  put_chunk(png, "IDAT", z);
  put_chunk(png, "IEND", {});
  return png;
}

void write_png(const std::string& path, std::span<const uint8_t> pixels, int width, int height, int channels) {
  std::vector<uint8_t> bytes = encode_png(pixels, width, height, channels);
  write_file_atomically(path, std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

}  // namespace kotoba
