// Internal: the train stage's loss chart and its round axis ticks.
#pragma once

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace vhost::host {

namespace fs = std::filesystem;

// Round ticks for a chart's axis (1, 2 or 5 times a power of ten, at most `most` intervals):
// the range widened to whole steps, each tick's value and its label.
struct AxisTicks {
  double lo = 0, hi = 1;
  std::vector<double> values;
  std::vector<std::string> labels;
};
AxisTicks nice_ticks(double lo, double hi, int most);

// The train stage's loss.svg: training loss per step (line) and evaluation loss (dots).
void write_loss_svg(const fs::path& file, const std::vector<std::pair<double, double>>& loss,
                    const std::vector<std::pair<double, double>>& eval, const std::string& title);

}  // namespace vhost::host
