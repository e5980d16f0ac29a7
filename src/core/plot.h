#pragma once
// Dependency-free line charts rendered to RGB images / PNG files: training
// loss curves, error-vs-NFE (log-log) and FID-vs-NFE plots.
//
// White background, light grid at "nice" ticks (1-2-5 steps; decades on log
// axes), tick labels, axis labels, a bold title, and a legend box (upper
// corner with the least ink) when there is more than one labelled series.
// Lines are anti-aliased and clipped to the plot area. Points with a NaN or
// infinite coordinate, or a non-positive one on a log axis, are skipped and
// break the line; isolated points are drawn as dots. With no drawable data
// the axes are drawn with "no data" in the middle.
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "core/image.h"

namespace diffuse {

struct PlotSeries {
  std::string label;
  std::vector<double> x, y;  // same length; an empty x means 0, 1, 2, ...
  // {0,0,0} (the default) picks the next colour of a tab10-like palette.
  std::array<uint8_t, 3> color = {0, 0, 0};
  bool markers = false;  // a filled circle at each point
};

struct PlotOptions {
  std::string title, xlabel, ylabel;
  bool log_x = false, log_y = false;
  int width = 800, height = 500;  // pixels; at least 160 x 120
  // > 1: draw a centred moving average over this many points at full colour,
  // with the raw data faint underneath (for noisy loss curves).
  int smooth_window = 0;
};

// The data -> pixel mapping render_plot uses. Pixel column i covers [i, i+1);
// the plot area is [left, right) x [top, bottom) and the data limits x0..x1,
// y0..y1 lie on its edges (y grows upwards; log axes map log10 linearly).
struct PlotAxes {
  int left = 0, top = 0, right = 0, bottom = 0;
  double x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  bool log_x = false, log_y = false;
  double px(double x) const;  // continuous pixel column of data x
  double py(double y) const;  // continuous pixel row of data y
};

// Axes layout and limits for these series and options (what render_plot draws).
PlotAxes plot_axes(const std::vector<PlotSeries>& series, const PlotOptions& opt);

// Renders an RGB image. Throws diffuse::Error for mismatched x/y lengths or a too small size.
Image render_plot(const std::vector<PlotSeries>& series, const PlotOptions& opt);

// Renders and writes a PNG atomically.
void save_plot(const std::string& path, const std::vector<PlotSeries>& series, const PlotOptions& opt);

// The palette colour used for the i-th series without an explicit colour.
std::array<uint8_t, 3> plot_palette(size_t i);

}  // namespace diffuse
