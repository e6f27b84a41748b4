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

std::string csv_line(const LossRow& r) {
  return std::to_string(r.step) + "," + csv_number(r.lr) + "," + csv_number(r.train_loss) + "," +
         csv_number(r.val_loss) + "," + csv_number(r.tokens_per_second) + "\n";
}

}  // namespace

void write_loss_csv(const std::string& path, const std::vector<LossRow>& rows) {
  std::string text = kCsvHeader;
  for (const LossRow& r : rows) text += csv_line(r);
  write_file_atomically(path, text);
}

void append_loss_csv(const std::string& path, const LossRow& row) {
  std::ofstream csv(path, std::ios::app);
  csv << csv_line(row);
  csv.flush();
  KOTOBA_CHECK(csv, path, ": cannot append");
}

std::vector<LossRow> read_loss_csv(const std::string& path, int64_t up_to_step) {
  std::vector<LossRow> rows;
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
    if (cells.size() != 5) continue;  // a row cut short by a kill
    auto num = [](const std::string& s) { return s.empty() ? std::nan("") : std::strtod(s.c_str(), nullptr); };
    LossRow r{std::strtoll(cells[0].c_str(), nullptr, 10), num(cells[1]), num(cells[2]), num(cells[3]), num(cells[4])};
    if (r.step <= up_to_step) rows.push_back(r);
  }
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
