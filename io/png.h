// PNG writer for 8-bit RGB/RGBA images, with no compression library: the zlib stream holds
// stored (uncompressed) deflate blocks. Used for plots a person opens, e.g. the loss curve.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace kotoba {

// pixels: `height` rows, top first, of `width * channels` bytes; channels is 3 (RGB) or 4 (RGBA).
// Returns the whole file: signature, IHDR, one IDAT, IEND.
std::vector<uint8_t> encode_png(std::span<const uint8_t> pixels, int width, int height, int channels);

// encode_png written atomically: a temporary file in the same directory, then a rename.
// Failures are kotoba::Error naming `path`.
void write_png(const std::string& path, std::span<const uint8_t> pixels, int width, int height, int channels);

// CRC-32 (PNG/zlib polynomial 0xEDB88320) and Adler-32, exposed for tests.
uint32_t crc32(std::span<const uint8_t> bytes, uint32_t crc = 0);
uint32_t adler32(std::span<const uint8_t> bytes);

}  // namespace kotoba
