// A progress bar for long work (prepare, training): one line redrawn in place on a terminal,
// plain periodic lines otherwise (CI logs), with done/total, rate, ETA and free-form fields.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>

namespace kotoba {

struct ProgressOptions {
  std::string unit = "it";         // what the rate counts: "tokens", "MB", "steps"
  double unit_scale = 1.0;         // shown = counted * unit_scale (count bytes, show MB: 1e-6)
  bool quiet = false;              // draw nothing (also when set_progress_quiet(true))
  FILE* stream = nullptr;          // nullptr: stderr
  double interval_seconds = -1.0;  // between redraws; < 0: 0.1 s on a terminal, 10 s otherwise
};

// Every member is safe to call from several threads at once.
class Progress {
 public:
  // total <= 0: unknown (no percentage, no ETA).
  Progress(std::string label, int64_t total, ProgressOptions options = {});
  ~Progress();  // finishes the line if finish() was not called
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void add(int64_t count = 1);
  void set(int64_t done);
  void set_total(int64_t total);
  void set_extra(std::string extra);  // e.g. "loss 3.21  lr 3e-4", shown after the ETA
  void finish();                      // draws the final state and ends the line
  int64_t done() const;

  // The text of one line (no \r or \n), exposed for tests.
  static std::string format_line(const std::string& label, int64_t done, int64_t total, double seconds,
                                 const ProgressOptions& options, const std::string& extra);

 private:
  void draw_locked(bool final);

  std::string label_;
  ProgressOptions options_;
  FILE* stream_;
  bool tty_;
  double interval_;
  mutable std::mutex mutex_;
  int64_t done_ = 0;
  int64_t total_ = 0;
  std::string extra_;
  bool finished_ = false;
  size_t last_width_ = 0;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

// 1234 -> "1234", 12345 -> "12.3k", 1.5e6 -> "1.50M" (as the bar shows counts and rates).
std::string format_count(double value);

// Process-wide quiet switch (the CLI's --quiet); bars created while quiet draw nothing.
void set_progress_quiet(bool quiet);
bool progress_quiet();

}  // namespace kotoba
