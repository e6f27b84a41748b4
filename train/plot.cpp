// Line plot rasteriser: an RGB canvas, a 5x7 bitmap font, coverage-based anti-aliased strokes,
// 1-2-5 tick placement; the result is handed to write_png.
#include "train/plot.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>

#include "core/error.h"
#include "io/png.h"

namespace kotoba::train {
namespace {

// Glyphs for ASCII 32..126, 5 columns x 7 rows: row r sits in bits 5r..5r+4, the leftmost
// column in the highest of those five bits. g, p, q and y start at the x-height and are drawn
// two rows lower (descenders), so a text line is 9 rows tall.
constexpr std::array<uint64_t, 95> kFont = {
    0x000000000, 0x100421084, 0x00000014A, 0x295F57D4A, 0x13C5751E4, 0x4E6820B39, 0x36554524C, 0x000002084,
    0x088842082, 0x208210888, 0x009575480, 0x0084F9080, 0x208C00000, 0x0000F8000, 0x318000000, 0x420820821,
    0x3A39ACE2E, 0x388421184, 0x7D041062E, 0x3A211105F, 0x085F928C2, 0x3A210FA1F, 0x3A31F4106, 0x21082083F,
    0x3A317462E, 0x30417C62E, 0x018C03180, 0x208C03180, 0x088882082, 0x001F07C00, 0x208208888, 0x10041062E,
    0x3AB56862E, 0x4631FC62E, 0x7A31F463E, 0x3A308422E, 0x72518C65C, 0x7E10F421F, 0x4210F421F, 0x3E31BC22E,
    0x4631FC631, 0x38842108E, 0x324210847, 0x4654C5251, 0x7E1084210, 0x4631AD771, 0x4633AE631, 0x3A318C62E,
    0x4210F463E, 0x36558C62E, 0x4654F463E, 0x78217420F, 0x10842109F, 0x3A318C631, 0x11518C631, 0x2AB5AC631,
    0x462A22A31, 0x108422A31, 0x7E082083F, 0x39084210E, 0x042222210, 0x38421084E, 0x000004544, 0x7C0000000,
    0x000000888, 0x3E2F0B800, 0x7A31CDA10, 0x3A3083800, 0x3E319B421, 0x3A1F8B800, 0x2108E2126, 0x382F8C62F,
    0x4631CDA10, 0x388423004, 0x324211802, 0x4A98A4A10, 0x38842108C, 0x4635AE800, 0x4631CD800, 0x3A318B800,
    0x421E8C63E, 0x042F8C62F, 0x4210CD800, 0x782E83800, 0x192847108, 0x36718C400, 0x11518C400, 0x2AB58C400,
    0x454454400, 0x382F8C631, 0x7D0417C00, 0x088441082, 0x108421084, 0x208411088, 0x0002AA000,
};

struct Rgb {
  uint8_t r, g, b;
};
// Ten well-separated hues; series beyond ten reuse them.
constexpr Rgb kPalette[] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44},   {214, 39, 40},  {148, 103, 189},
                            {140, 86, 75},  {227, 119, 194}, {127, 127, 127}, {188, 189, 34}, {23, 190, 207}};
constexpr Rgb kInk{30, 30, 30}, kAxis{90, 90, 90}, kGrid{228, 228, 228}, kWhite{255, 255, 255};

struct Canvas {
  int w, h;
  std::vector<uint8_t> px;
  Canvas(int w_, int h_) : w(w_), h(h_), px(size_t(w_) * size_t(h_) * 3, 255) {}
  void blend(int x, int y, Rgb c, double a = 1.0) {
    if (x < 0 || y < 0 || x >= w || y >= h || a <= 0) return;
    uint8_t* p = &px[(size_t(y) * size_t(w) + size_t(x)) * 3];
    const uint8_t src[3] = {c.r, c.g, c.b};
    for (int k = 0; k < 3; ++k) p[k] = uint8_t(std::lround(p[k] * (1 - a) + src[k] * a));
  }
  void fill(int x0, int y0, int x1, int y1, Rgb c) {  // inclusive corners
    for (int y = y0; y <= y1; ++y)
      for (int x = x0; x <= x1; ++x) blend(x, y, c);
  }
};

constexpr int kGlyphW = 5, kGlyphH = 7, kLineH = 9, kAdvance = 6;
bool descends(unsigned ch) { return ch == 'g' || ch == 'p' || ch == 'q' || ch == 'y'; }
int text_width(const std::string& s, int scale) { return int(s.size()) * kAdvance * scale - scale; }

// Text with its top-left corner at (x, y); `vertical` reads bottom to top with (x, y) the
// bottom-left of the first glyph, for the y-axis label.
void draw_text(Canvas& c, int x, int y, const std::string& s, int scale, Rgb color, bool vertical = false) {
  for (size_t i = 0; i < s.size(); ++i) {
    unsigned ch = (unsigned char)s[i];
    uint64_t glyph = kFont[(ch >= 32 && ch <= 126) ? ch - 32 : '?' - 32];
    for (int r = 0; r < kGlyphH; ++r)
      for (int col = 0; col < kGlyphW; ++col) {
        if (!((glyph >> (5 * r)) & (16u >> col))) continue;
        int along = int(i) * kAdvance * scale + col * scale, down = (r + (descends(ch) ? 2 : 0)) * scale;
        for (int dy = 0; dy < scale; ++dy)
          for (int dx = 0; dx < scale; ++dx) {
            if (vertical) c.blend(x + down + dy, y - along - dx, color);
            else c.blend(x + along + dx, y + down + dy, color);
          }
      }
  }
}

// A linear axis: the data range widened by `margin` of its span, and ticks at multiples of a
// 1, 2 or 5 x 10^k step chosen so that about `target` of them fit.
struct Axis {
  double lo, hi, step;
  std::vector<double> ticks;
};

Axis make_axis(double lo, double hi, double margin, int target) {
  if (!(lo <= hi)) lo = 0, hi = 1;  // no finite data
  if (hi - lo <= 1e-12 * std::max(1.0, std::abs(lo))) {
    double pad = lo != 0 ? 0.1 * std::abs(lo) : 1.0;
    lo -= pad, hi += pad;
  }
  double span = hi - lo;
  Axis a{lo - margin * span, hi + margin * span, 0, {}};
  double raw = (a.hi - a.lo) / std::max(1, target);
  double p = std::pow(10.0, std::floor(std::log10(raw))), f = raw / p;
  a.step = (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * p;
  for (double t = std::ceil(a.lo / a.step) * a.step; t <= a.hi + 1e-9 * a.step; t += a.step)
    a.ticks.push_back(std::abs(t) < 1e-9 * a.step ? 0.0 : t);
  return a;
}

std::string tick_label(double v, double step) {
  char buf[32];
  int decimals = std::max(0, -int(std::floor(std::log10(step) + 1e-9)));
  if (std::abs(v) >= 1e7 || decimals > 6) std::snprintf(buf, sizeof buf, "%.3g", v);
  else std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

// Adds a stroke of width `w` from a to b into `cover` (the plot rectangle's pixels, value =
// max coverage): a pixel's coverage falls off linearly over the last pixel of distance.
void stroke(std::vector<float>& cover, int rx, int ry, int rw, int rh, double ax, double ay, double bx, double by,
            double w) {
  double reach = w / 2 + 1;
  int x0 = std::max(rx, int(std::floor(std::min(ax, bx) - reach))), x1 = std::min(rx + rw - 1, int(std::ceil(std::max(ax, bx) + reach)));
  int y0 = std::max(ry, int(std::floor(std::min(ay, by) - reach))), y1 = std::min(ry + rh - 1, int(std::ceil(std::max(ay, by) + reach)));
  double dx = bx - ax, dy = by - ay, len2 = dx * dx + dy * dy;
  for (int y = y0; y <= y1; ++y)
    for (int x = x0; x <= x1; ++x) {
      double px = x + 0.5 - ax, py = y + 0.5 - ay;  // pixel centre relative to a
      double t = len2 > 0 ? std::clamp((px * dx + py * dy) / len2, 0.0, 1.0) : 0.0;
      double d = std::hypot(px - t * dx, py - t * dy);
      float a = float(std::clamp(w / 2 + 0.5 - d, 0.0, 1.0));
      float& slot = cover[size_t(y - ry) * size_t(rw) + size_t(x - rx)];
      slot = std::max(slot, a);
    }
}

}  // namespace

void write_line_plot(const std::string& path, const std::vector<Series>& series, const std::string& title,
                     const std::string& x_label, const std::string& y_label, int width, int height) {
  KOTOBA_CHECK(width >= 160 && height >= 120 && width <= 8192 && height <= 8192, path, ": plot size ", width, "x",
               height, " is outside 160x120..8192x8192");
  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  for (const auto& s : series) {
    KOTOBA_CHECK(s.x.size() == s.y.size(), path, ": series '", s.name, "' has ", s.x.size(), " x values but ",
                 s.y.size(), " y values");
    for (size_t i = 0; i < s.x.size(); ++i)
      if (std::isfinite(s.x[i]) && std::isfinite(s.y[i])) {
        xmin = std::min(xmin, s.x[i]), xmax = std::max(xmax, s.x[i]);
        ymin = std::min(ymin, s.y[i]), ymax = std::max(ymax, s.y[i]);
      }
  }
  const int scale = (width >= 480 && height >= 300) ? 2 : 1;
  const int line_h = kLineH * scale, gap = 4 * scale;

  // Frame: title above, y label and tick labels left, x tick labels and x label below.
  int top = gap * 2 + line_h * (title.empty() ? 0 : 2);
  int bottom = height - (gap * 4 + line_h * 2);
  Axis ya = make_axis(ymin, ymax, 0.05, std::max(2, (bottom - top) / (28 * scale)));
  int label_w = 0;
  for (double t : ya.ticks) label_w = std::max(label_w, text_width(tick_label(t, ya.step), scale));
  int left = gap * 2 + (y_label.empty() ? 0 : line_h + gap) + label_w + gap;
  int right = width - gap * 2 - 3 * kAdvance * scale;  // room for half of the last x tick label
  Axis xa = make_axis(xmin, xmax, 0.02, std::max(2, (right - left) / (kAdvance * scale * 9)));
  KOTOBA_CHECK(right - left > 20 && bottom - top > 20, path, ": plot size ", width, "x", height,
               " leaves no room for the data");
  auto to_px = [&](double x) { return left + (x - xa.lo) / (xa.hi - xa.lo) * (right - left); };
  auto to_py = [&](double y) { return bottom - (y - ya.lo) / (ya.hi - ya.lo) * (bottom - top); };

  Canvas c(width, height);
  for (double t : xa.ticks) {
    int x = int(std::lround(to_px(t)));
    c.fill(x, top, x, bottom, kGrid);
    c.fill(x, bottom, x, bottom + gap, kAxis);
    std::string s = tick_label(t, xa.step);
    draw_text(c, x - text_width(s, scale) / 2, bottom + gap + scale * 2, s, scale, kInk);
  }
  for (double t : ya.ticks) {
    int y = int(std::lround(to_py(t)));
    c.fill(left, y, right, y, kGrid);
    c.fill(left - gap, y, left, y, kAxis);
    std::string s = tick_label(t, ya.step);
    draw_text(c, left - gap - scale * 2 - text_width(s, scale), y - kGlyphH * scale / 2, s, scale, kInk);
  }
  c.fill(left, top, right, top, kAxis), c.fill(left, bottom, right, bottom, kAxis);
  c.fill(left, top, left, bottom, kAxis), c.fill(right, top, right, bottom, kAxis);
  draw_text(c, (width - text_width(title, scale)) / 2, gap * 2, title, scale, kInk);
  draw_text(c, (left + right - text_width(x_label, scale)) / 2, height - gap - line_h, x_label, scale, kInk);
  draw_text(c, gap * 2, (top + bottom + text_width(y_label, scale)) / 2, y_label, scale, kInk, true);

  // Series, inside the frame: coverage per series, then one blend so overlaps within a line
  // don't darken it.
  const int rx = left + 1, ry = top + 1, rw = right - left - 1, rh = bottom - top - 1;
  std::vector<float> cover(size_t(rw) * size_t(rh)), ink(cover.size());
  for (size_t k = 0; k < series.size(); ++k) {
    const Series& s = series[k];
    std::fill(cover.begin(), cover.end(), 0.0f);
    size_t finite = 0;
    for (size_t i = 0; i < s.x.size(); ++i) finite += std::isfinite(s.x[i]) && std::isfinite(s.y[i]);
    bool prev_ok = false;
    double px = 0, py = 0;
    for (size_t i = 0; i < s.x.size(); ++i) {
      bool ok = std::isfinite(s.x[i]) && std::isfinite(s.y[i]);
      double qx = ok ? to_px(s.x[i]) : 0, qy = ok ? to_py(s.y[i]) : 0;
      if (ok) {
        stroke(cover, rx, ry, rw, rh, prev_ok ? px : qx, prev_ok ? py : qy, qx, qy, scale == 1 ? 2.0 : 2.5);
        if (finite <= 40) stroke(cover, rx, ry, rw, rh, qx, qy, qx, qy, 3.5 * scale);
      }
      prev_ok = ok, px = qx, py = qy;
    }
    Rgb color = kPalette[k % std::size(kPalette)];
    for (int y = 0; y < rh; ++y)
      for (int x = 0; x < rw; ++x) c.blend(rx + x, ry + y, color, cover[size_t(y) * size_t(rw) + size_t(x)]);
    for (size_t i = 0; i < ink.size(); ++i) ink[i] = std::max(ink[i], cover[i]);
  }

  // Legend in the corner of the frame that hides the least of the lines (top-right on ties).
  if (!series.empty()) {
    int name_w = 0;
    for (const auto& s : series) name_w = std::max(name_w, text_width(s.name, scale));
    int swatch = 10 * scale, row = line_h + gap, lw = gap * 3 + swatch + name_w, lh = gap + row * int(series.size());
    int lx = 0, ly = 0;
    double least = INFINITY;
    for (int corner = 0; corner < 4; ++corner) {
      int cx = corner % 2 == 0 ? right - gap * 2 - lw : left + gap * 2, cy = corner < 2 ? top + gap * 2 : bottom - gap * 2 - lh;
      double hidden = 0;
      for (int y = std::max(cy, ry); y <= std::min(cy + lh, ry + rh - 1); ++y)
        for (int x = std::max(cx, rx); x <= std::min(cx + lw, rx + rw - 1); ++x)
          hidden += ink[size_t(y - ry) * size_t(rw) + size_t(x - rx)];
      if (hidden < least - 1e-9) least = hidden, lx = cx, ly = cy;
    }
    c.fill(lx, ly, lx + lw, ly + lh, kWhite);
    c.fill(lx, ly, lx + lw, ly, kAxis), c.fill(lx, ly + lh, lx + lw, ly + lh, kAxis);
    c.fill(lx, ly, lx, ly + lh, kAxis), c.fill(lx + lw, ly, lx + lw, ly + lh, kAxis);
    for (size_t k = 0; k < series.size(); ++k) {
      int y = ly + gap + row * int(k);
      Rgb color = kPalette[k % std::size(kPalette)];
      c.fill(lx + gap, y + line_h / 2 - scale, lx + gap + swatch, y + line_h / 2 + scale - 1, color);
      draw_text(c, lx + gap * 2 + swatch, y + scale, series[k].name, scale, kInk);
    }
  }
  write_png(path, c.px, width, height, 3);
}

void write_bar_plot(const std::string& path, const std::vector<std::string>& categories,
                    const std::vector<BarSeries>& series, const std::string& title, const std::string& x_label,
                    const std::string& y_label, int width, int height) {
  KOTOBA_CHECK(width >= 160 && height >= 120 && width <= 8192 && height <= 8192, path, ": plot size ", width, "x",
               height, " is outside 160x120..8192x8192");
  KOTOBA_CHECK(!categories.empty() && !series.empty(), path, ": a bar plot needs at least one category and series");
  double ymax = 0;
  for (const auto& s : series) {
    KOTOBA_CHECK(s.values.size() == categories.size(), path, ": series '", s.name, "' has ", s.values.size(),
                 " values for ", categories.size(), " categories");
    for (double v : s.values) {
      KOTOBA_CHECK(std::isfinite(v) && v >= 0, path, ": series '", s.name, "' has the value ", v,
                   " (bars need finite values >= 0)");
      ymax = std::max(ymax, v);
    }
  }
  const int scale = (width >= 480 && height >= 300) ? 2 : 1;
  const int line_h = kLineH * scale, gap = 4 * scale;
  // Legend rows sit above the frame, so bars are never hidden behind it.
  int name_w = 0;
  for (const auto& s : series) name_w = std::max(name_w, text_width(s.name, scale));
  const int swatch = 10 * scale, entry_w = swatch + gap * 2 + name_w + gap * 3;
  const int per_row = std::max(1, (width - gap * 4) / entry_w);
  const int legend_rows = (int(series.size()) + per_row - 1) / per_row;
  int top = gap * 2 + line_h * (title.empty() ? 0 : 2) + legend_rows * (line_h + gap) + gap;
  int bottom = height - (gap * 4 + line_h * 2);
  // y from 0 to the largest value (0..1 when all are 0), 5 % headroom above it.
  Axis ya = make_axis(0, ymax > 0 ? ymax : 1, 0.0, std::max(2, (bottom - top) / (28 * scale)));
  ya.hi *= 1.05;
  int label_w = 0;
  for (double t : ya.ticks) label_w = std::max(label_w, text_width(tick_label(t, ya.step), scale));
  int left = gap * 2 + (y_label.empty() ? 0 : line_h + gap) + label_w + gap;
  int right = width - gap * 2;
  KOTOBA_CHECK(right - left > 20 && bottom - top > 20, path, ": plot size ", width, "x", height,
               " leaves no room for the data");
  auto to_py = [&](double y) { return bottom - (y - ya.lo) / (ya.hi - ya.lo) * (bottom - top); };

  Canvas c(width, height);
  for (double t : ya.ticks) {
    int y = int(std::lround(to_py(t)));
    c.fill(left, y, right, y, kGrid);
    c.fill(left - gap, y, left, y, kAxis);
    std::string s = tick_label(t, ya.step);
    draw_text(c, left - gap - scale * 2 - text_width(s, scale), y - kGlyphH * scale / 2, s, scale, kInk);
  }
  // Each category gets an equal slot; its bars fill 80 % of the slot, side by side.
  const double slot = double(right - left) / double(categories.size());
  const double bar_w = slot * 0.8 / double(series.size());
  for (size_t i = 0; i < categories.size(); ++i) {
    const double x0 = left + slot * double(i) + slot * 0.1;
    for (size_t k = 0; k < series.size(); ++k) {
      int bx0 = int(std::lround(x0 + bar_w * double(k))), bx1 = int(std::lround(x0 + bar_w * double(k + 1))) - 1;
      int by = int(std::lround(to_py(series[k].values[i])));
      if (bx1 < bx0) bx1 = bx0;
      if (by < bottom) c.fill(bx0, by, bx1, bottom - 1, kPalette[k % std::size(kPalette)]);
    }
    // The label, cut to the slot's width.
    std::string label = categories[i];
    const int room = int(slot) - scale * 2;
    if (text_width(label, scale) > room) {
      while (!label.empty() && text_width(label + "..", scale) > room) label.pop_back();
      label += "..";
    }
    const int cx = int(std::lround(left + slot * (double(i) + 0.5)));
    c.fill(cx, bottom, cx, bottom + gap, kAxis);
    draw_text(c, cx - text_width(label, scale) / 2, bottom + gap + scale * 2, label, scale, kInk);
  }
  c.fill(left, top, right, top, kAxis), c.fill(left, bottom, right, bottom, kAxis);
  c.fill(left, top, left, bottom, kAxis), c.fill(right, top, right, bottom, kAxis);
  draw_text(c, (width - text_width(title, scale)) / 2, gap * 2, title, scale, kInk);
  draw_text(c, (left + right - text_width(x_label, scale)) / 2, height - gap - line_h, x_label, scale, kInk);
  draw_text(c, gap * 2, (top + bottom + text_width(y_label, scale)) / 2, y_label, scale, kInk, true);
  const int legend_top = gap * 2 + line_h * (title.empty() ? 0 : 2);
  for (size_t k = 0; k < series.size(); ++k) {
    int row = int(k) / per_row, col = int(k) % per_row;
    int x = left + col * entry_w, y = legend_top + row * (line_h + gap);
    c.fill(x, y + line_h / 2 - scale * 2, x + swatch, y + line_h / 2 + scale * 2 - 1, kPalette[k % std::size(kPalette)]);
    draw_text(c, x + swatch + gap * 2, y + scale, series[k].name, scale, kInk);
  }
  write_png(path, c.px, width, height, 3);
}

}  // namespace kotoba::train
