// Progress bar drawing: rate and ETA from the wall time since start, rate-limited redraws.
// On a terminal the line is rewritten with \r; elsewhere each redraw is its own line.
#include "core/progress.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>

namespace kotoba {

namespace {

std::atomic<bool> global_quiet{false};

}  // namespace

// Fractional values below 10k keep one decimal.
std::string format_count(double v) {
  char buf[32];
  double a = std::fabs(v);
  if (a >= 1e9) std::snprintf(buf, sizeof buf, "%.2fG", v / 1e9);
  else if (a >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", v / 1e6);
  else if (a >= 1e4) std::snprintf(buf, sizeof buf, "%.1fk", v / 1e3);
  else if (v == std::floor(v)) std::snprintf(buf, sizeof buf, "%.0f", v);
  else std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

namespace {

std::string clock_text(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  auto s = int64_t(seconds + 0.5);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", (long long)(s / 3600), (long long)(s / 60 % 60),
                               (long long)(s % 60));
  else std::snprintf(buf, sizeof buf, "%lld:%02lld", (long long)(s / 60), (long long)(s % 60));
  return buf;
}

}  // namespace

void set_progress_quiet(bool quiet) { global_quiet = quiet; }
bool progress_quiet() { return global_quiet; }

Progress::Progress(std::string label, int64_t total, ProgressOptions options)
    : label_(std::move(label)), options_(std::move(options)), total_(total) {
  stream_ = options_.stream ? options_.stream : stderr;
  tty_ = isatty(fileno(stream_)) != 0;
  interval_ = options_.interval_seconds >= 0 ? options_.interval_seconds : (tty_ ? 0.1 : 10.0);
  if (global_quiet) options_.quiet = true;
  start_ = last_draw_ = std::chrono::steady_clock::now();
}

Progress::~Progress() {
  try {
    finish();
  } catch (...) {
  }
}

std::string Progress::format_line(const std::string& label, int64_t done, int64_t total, double seconds,
                                  const ProgressOptions& options, const std::string& extra) {
  const double scale = options.unit_scale;
  std::string line = label;
  if (total > 0) {
    double fraction = std::min(1.0, double(done) / double(total));
    const int width = 20;
    int filled = int(fraction * width);
    line += " [" + std::string(size_t(filled), '#') + std::string(size_t(width - filled), '.') + "]";
    char pct[16];
    std::snprintf(pct, sizeof pct, " %5.1f%%", 100.0 * fraction);
    line += " " + format_count(double(done) * scale) + "/" + format_count(double(total) * scale) + pct;
  } else {
    line += " " + format_count(double(done) * scale);
  }
  double rate = seconds > 0 ? double(done) * scale / seconds : 0.0;
  line += "  " + format_count(rate) + " " + options.unit + "/s";
  if (total > 0) {
    double left = done >= total ? 0.0 : (done > 0 ? seconds * double(total - done) / double(done) : NAN);
    line += done >= total ? "  " + clock_text(seconds) : "  ETA " + clock_text(left);
  } else {
    line += "  " + clock_text(seconds);
  }
  if (!extra.empty()) line += "  " + extra;
  return line;
}

void Progress::draw_locked(bool final) {
  if (options_.quiet) return;
  auto now = std::chrono::steady_clock::now();
  if (!final && std::chrono::duration<double>(now - last_draw_).count() < interval_) return;
  last_draw_ = now;
  double seconds = std::chrono::duration<double>(now - start_).count();
  std::string line = format_line(label_, done_, total_, seconds, options_, extra_);
  if (tty_) {
    // Pad over the previous, possibly longer, line instead of relying on terminal escapes.
    std::string pad = line.size() < last_width_ ? std::string(last_width_ - line.size(), ' ') : "";
    last_width_ = line.size();
    std::fprintf(stream_, "\r%s%s%s", line.c_str(), pad.c_str(), final ? "\n" : "");
  } else {
    std::fprintf(stream_, "%s\n", line.c_str());
  }
  std::fflush(stream_);
}

void Progress::add(int64_t count) {
  std::lock_guard<std::mutex> lock(mutex_);
  done_ += count;
  if (!finished_) draw_locked(false);
}

void Progress::set(int64_t done) {
  std::lock_guard<std::mutex> lock(mutex_);
  done_ = done;
  if (!finished_) draw_locked(false);
}

void Progress::set_total(int64_t total) {
  std::lock_guard<std::mutex> lock(mutex_);
  total_ = total;
}

void Progress::set_extra(std::string extra) {
  std::lock_guard<std::mutex> lock(mutex_);
  extra_ = std::move(extra);
}

void Progress::finish() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (finished_) return;
  finished_ = true;
  draw_locked(true);
}

int64_t Progress::done() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return done_;
}

}  // namespace kotoba
