// loss.csv and loss.png (train/loss_log.h).
#include "train/loss_log.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "core/atomic_file.h"
#include "core/error.h"
#include "train/plot.h"

namespace kotoba::train {

namespace {

constexpr const char* kCsvHeader = "step,lr,train_loss,val_loss,tokens_per_second\n";

std::string csv_number(double v) {
  if (!std::isfinite(v)) return "";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.8g", v);
  return buf;
}

std::string loss_line(const LossRow& r) {
  const double values[] = {r.lr, r.train_loss, r.val_loss, r.tokens_per_second};
  return csv_line(r.step, values);
}

}  // namespace

std::string csv_line(int64_t step, std::span<const double> values) {
  std::string line = std::to_string(step);
  for (double v : values) line += "," + csv_number(v);
  return line + "\n";
}

void append_csv_line(const std::string& path, const std::string& line) {
  std::ofstream csv(path, std::ios::app);
  csv << line;
  csv.flush();
  KOTOBA_CHECK(csv, path, ": cannot append");
}

std::vector<CsvRow> read_csv_rows(const std::string& path, size_t columns, int64_t up_to_step) {
  std::vector<CsvRow> rows;
  std::ifstream in(path);
  if (!in) return rows;
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    std::vector<std::string> cells;
    std::stringstream ss(line);
    std::string cell;
    while (std::getline(ss, cell, ',')) cells.push_back(cell);
    if (!line.empty() && line.back() == ',') cells.push_back("");
    if (cells.size() != columns) continue;  // a row cut short by a kill
    CsvRow r{std::strtoll(cells[0].c_str(), nullptr, 10), {}};
    for (size_t i = 1; i < cells.size(); ++i)
      r.values.push_back(cells[i].empty() ? std::nan("") : std::strtod(cells[i].c_str(), nullptr));
    if (r.step <= up_to_step) rows.push_back(std::move(r));
  }
  return rows;
}

void write_loss_csv(const std::string& path, const std::vector<LossRow>& rows) {
  write_csv_file(path, kCsvHeader, rows, loss_line);
}

void append_loss_csv(const std::string& path, const LossRow& row) { append_csv_line(path, loss_line(row)); }

std::vector<LossRow> read_loss_csv(const std::string& path, int64_t up_to_step) {
  std::vector<LossRow> rows;
  for (const CsvRow& r : read_csv_rows(path, 5, up_to_step))
    rows.push_back({r.step, r.values[0], r.values[1], r.values[2], r.values[3]});
  return rows;
}

void write_loss_plot(const std::string& path, const std::vector<LossRow>& rows, const std::string& title) {
  if (rows.empty()) return;
  Series train_series{"train", {}, {}}, val_series{"validation", {}, {}};
  for (const LossRow& r : rows) {
    train_series.x.push_back(double(r.step));
    train_series.y.push_back(r.train_loss);
    if (std::isfinite(r.val_loss)) {
      val_series.x.push_back(double(r.step));
      val_series.y.push_back(r.val_loss);
    }
  }
  write_line_plot(path, {train_series, val_series}, title, "step", "loss (nats/token)");
}

}  // namespace kotoba::train
