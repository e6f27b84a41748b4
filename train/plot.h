// Line plots written as PNG (io/png.h) with a built-in bitmap font: the training loss curve a
// person opens, drawn without Python or a plotting library.
#pragma once
#include <string>
#include <vector>

namespace kotoba::train {

// One line. x and y have equal length; a point whose x or y is not finite is skipped and
// breaks the line there. An empty series still gets its legend entry.
struct Series {
  std::string name;
  std::vector<double> x, y;
};

// White background, grid and axes with 1-2-5 tick steps, numeric tick labels, axis labels,
// title, legend, 2 px anti-aliased lines in distinct colours (plus point markers for series of
// at most 40 points). Linear axes spanning the data with a small margin. Written atomically;
// errors are kotoba::Error naming `path`.
void write_line_plot(const std::string& path, const std::vector<Series>& series, const std::string& title,
                     const std::string& x_label, const std::string& y_label, int width = 800, int height = 500);

// Grouped bar chart: one group of bars per category (its label under the group, cut with ".."
// to the group's width), one bar per series in every group, in the series' colours with a
// legend; the y axis starts at 0. Every series has one value per category, finite and >= 0.
// Same frame, font, palette and atomic write as write_line_plot.
struct BarSeries {
  std::string name;
  std::vector<double> values;
};
void write_bar_plot(const std::string& path, const std::vector<std::string>& categories,
                    const std::vector<BarSeries>& series, const std::string& title, const std::string& x_label,
                    const std::string& y_label, int width = 800, int height = 500);

}  // namespace kotoba::train
