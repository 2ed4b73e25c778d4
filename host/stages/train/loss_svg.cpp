#include "stages/train/loss_svg.hpp"

#include "stages/common/html_text.hpp"
#include "stages/common/text.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

namespace vhost::host {

// Round axis ticks: a step of 1, 2 or 5 times a power of ten giving at most `most` intervals
// over [lo, hi], the range widened to whole steps (8.78..0.0324 reads 0, 2, 4, 6, 8, 10).
AxisTicks nice_ticks(double lo, double hi, int most) {
  if (!std::isfinite(lo) || !std::isfinite(hi)) lo = 0, hi = 1;
  if (hi < lo) std::swap(lo, hi);
  if (hi - lo < 1e-12) lo -= 0.5, hi += 0.5;
  most = std::max(most, 1);
  double raw = (hi - lo) / most, mag = std::pow(10.0, std::floor(std::log10(raw))), step = 10 * mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw * (1 - 1e-9)) { step = m * mag; break; }
  AxisTicks t;
  t.lo = std::floor(lo / step + 1e-9) * step;
  t.hi = std::ceil(hi / step - 1e-9) * step;
  int decimals = std::max(0, -static_cast<int>(std::floor(std::log10(step) + 1e-9)));
  for (double v = t.lo; v <= t.hi + step * 1e-6; v += step) {
    double r = std::abs(v) < step * 1e-6 ? 0.0 : v;
    t.values.push_back(r);
    char b[48];
    std::snprintf(b, sizeof b, "%.*f", decimals, r);
    t.labels.emplace_back(b);
  }
  return t;
}

// The loss curve as a standalone SVG: training loss per step (line), evaluation loss (dots),
// round ticks on both axes, the legend above the plot where no point can cover it.
void write_loss_svg(const fs::path& file, const std::vector<std::pair<double, double>>& loss,
                    const std::vector<std::pair<double, double>>& eval, const std::string& title) {
  const double W = 640, H = 420, L = 64, R = 16, T = 56, B = 48;
  double xmax = 1, y0 = INFINITY, y1 = -INFINITY;
  for (const auto* series : {&loss, &eval})
    for (auto [x, y] : *series) {
      if (!std::isfinite(y)) continue;
      xmax = std::max(xmax, x);
      y0 = std::min(y0, y);
      y1 = std::max(y1, y);
    }
  if (!std::isfinite(y0)) y0 = 0, y1 = 1;
  const AxisTicks xt = nice_ticks(0, xmax, 6), yt = nice_ticks(y0, y1, 5);
  auto px = [&](double x) { return L + (x - xt.lo) / (xt.hi - xt.lo) * (W - L - R); };
  auto py = [&](double y) { return T + (yt.hi - y) / (yt.hi - yt.lo) * (H - T - B); };
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << W / 2 << "\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">" << html_escape(title) << "</text>\n";
  for (size_t i = 0; i < yt.values.size(); ++i)
    o << "<line x1=\"" << L << "\" y1=\"" << py(yt.values[i]) << "\" x2=\"" << W - R << "\" y2=\"" << py(yt.values[i]) << "\" stroke=\"#ddd\"/>\n"
      << "<text x=\"" << L - 6 << "\" y=\"" << py(yt.values[i]) + 4 << "\" text-anchor=\"end\">" << yt.labels[i] << "</text>\n";
  for (size_t i = 0; i < xt.values.size(); ++i)
    o << "<line x1=\"" << px(xt.values[i]) << "\" y1=\"" << H - B << "\" x2=\"" << px(xt.values[i]) << "\" y2=\"" << H - B + 4 << "\" stroke=\"black\"/>\n"
      << "<text x=\"" << px(xt.values[i]) << "\" y=\"" << H - B + 16 << "\" text-anchor=\"middle\">" << xt.labels[i] << "</text>\n";
  o << "<line x1=\"" << L << "\" y1=\"" << H - B << "\" x2=\"" << W - R << "\" y2=\"" << H - B << "\" stroke=\"black\"/>\n"
    << "<line x1=\"" << L << "\" y1=\"" << T << "\" x2=\"" << L << "\" y2=\"" << H - B << "\" stroke=\"black\"/>\n"
    << "<text x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 10 << "\" text-anchor=\"middle\">step</text>\n"
    << "<text x=\"14\" y=\"" << (T + H - B) / 2 << "\" transform=\"rotate(-90 14 " << (T + H - B) / 2
    << ")\" text-anchor=\"middle\">loss</text>\n<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"";
  for (auto [x, y] : loss)
    if (std::isfinite(y)) o << fmt("%.1f", px(x)) << "," << fmt("%.1f", py(y)) << " ";
  o << "\"/>\n";
  for (auto [x, y] : eval)
    if (std::isfinite(y)) o << "<circle cx=\"" << px(x) << "\" cy=\"" << py(y) << "\" r=\"4\" fill=\"#d62728\"/>\n";
  // Legend: above the plot's frame (T), so a point near the top right cannot hide it.
  const double ly = T - 14;
  o << "<line x1=\"" << W - R - 150 << "\" y1=\"" << ly - 4 << "\" x2=\"" << W - R - 130 << "\" y2=\"" << ly - 4
    << "\" stroke=\"#1f77b4\" stroke-width=\"1.5\"/><text x=\"" << W - R - 125 << "\" y=\"" << ly << "\">train</text>\n"
    << "<circle cx=\"" << W - R - 60 << "\" cy=\"" << ly - 4 << "\" r=\"4\" fill=\"#d62728\"/><text x=\"" << W - R - 50
    << "\" y=\"" << ly << "\">eval</text>\n</svg>\n";
  std::ofstream f(file);
  f << o.str();
}

}  // namespace vhost::host
