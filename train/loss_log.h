// The loss curve every training command writes: OUT/loss.csv (one row per logged step, appended
// as training goes, cut back to the checkpoint on resume) and OUT/loss.png drawn from it.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/atomic_file.h"

namespace kotoba::train {

// One row of loss.csv. val_loss is NaN where no validation ran at that step.
struct LossRow {
  int64_t step = 0;
  double lr = 0, train_loss = 0, val_loss = 0, tokens_per_second = 0;
};

// Rewrites `path` atomically with the header and `rows`.
void write_loss_csv(const std::string& path, const std::vector<LossRow>& rows);
// Appends one row (flushed; an Error naming the file if it cannot be written).
void append_loss_csv(const std::string& path, const LossRow& row);
// The rows of `path` up to step `up_to_step` (a missing file gives none; a row cut short by a
// kill is skipped).
std::vector<LossRow> read_loss_csv(const std::string& path, int64_t up_to_step);
// Rewrites `path` atomically: `header`, then line_of(row) for each row (a run's metrics.csv as
// far as it goes, when it starts or resumes).
template <typename Row, typename LineOf>
void write_csv_file(const std::string& path, const std::string& header, const std::vector<Row>& rows, LineOf line_of) {
  std::string text = header;
  for (const Row& r : rows) text += line_of(r);
  write_file_atomically(path, text);
}
// "STEP,V1,V2,...\n", the numbers as %.8g, empty where not finite (loss.csv's cells; the
// metrics.csv files beside it share them).
std::string csv_line(int64_t step, std::span<const double> values);
// Appends a line (flushed; an Error naming the file if it cannot be written).
void append_csv_line(const std::string& path, const std::string& line);
// A row read back: the step and its numbers (an empty cell gives NaN).
struct CsvRow {
  int64_t step = 0;
  std::vector<double> values;
};
// The rows of `path` (after its header) with `columns` cells, step included, up to step
// `up_to_step` (a missing file gives none; a row cut short by a kill is skipped).
std::vector<CsvRow> read_csv_rows(const std::string& path, size_t columns, int64_t up_to_step);

// loss.png: the training loss and, where there is one, the validation loss against the step.
void write_loss_plot(const std::string& path, const std::vector<LossRow>& rows, const std::string& title);

}  // namespace kotoba::train
