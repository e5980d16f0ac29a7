#include "core/plot.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/error.h"
#include "fixtures.h"

namespace diffuse {
namespace {

std::array<uint8_t, 3> pixel(const Image& img, int x, int y) {
  const uint8_t* p = &img.data[(size_t(y) * img.width + x) * img.channels];
  return {p[0], p[1], p[2]};
}

// Whether some pixel within `r` of (x, y) has exactly colour c.
bool has_colour_near(const Image& img, double x, double y, std::array<uint8_t, 3> c, int r = 1) {
  for (int dy = -r; dy <= r; ++dy)
    for (int dx = -r; dx <= r; ++dx) {
      const int px = int(std::floor(x)) + dx, py = int(std::floor(y)) + dy;
      if (px >= 0 && py >= 0 && px < img.width && py < img.height && pixel(img, px, py) == c) return true;
    }
  return false;
}

TEST(Plot, LinePassesThroughMappedPoints) {
  PlotSeries s{"line", {0, 1, 2, 3, 4}, {0, 2, 1, 3, 4}};
  s.color = {200, 30, 40};
  PlotOptions opt;
  opt.title = "Known chart";
  opt.xlabel = "x";
  opt.ylabel = "y";
  const Image img = render_plot({s}, opt);
  ASSERT_EQ(img.width, 800);
  ASSERT_EQ(img.height, 500);
  ASSERT_EQ(img.channels, 3);
  const PlotAxes ax = plot_axes({s}, opt);
  EXPECT_LT(ax.x0, 0);
  EXPECT_GT(ax.x1, 4);
  EXPECT_GT(ax.right - ax.left, 500);
  // Data points and segment midpoints lie on the line.
  for (size_t i = 0; i < s.x.size(); ++i) {
    EXPECT_TRUE(has_colour_near(img, ax.px(s.x[i]), ax.py(s.y[i]), s.color, 0)) << "point " << i;
    if (i + 1 < s.x.size()) {
      const double mx = (s.x[i] + s.x[i + 1]) / 2, my = (s.y[i] + s.y[i + 1]) / 2;
      EXPECT_TRUE(has_colour_near(img, ax.px(mx), ax.py(my), s.color, 0)) << "segment " << i;
    }
  }
  // Away from the line: no series colour (a point far below the line in the middle of the area).
  EXPECT_FALSE(has_colour_near(img, ax.px(2), ax.py(3.5), s.color, 3));
  // Background is white; the corner is outside the plot area.
  EXPECT_EQ(pixel(img, 1, 1), (std::array<uint8_t, 3>{255, 255, 255}));
}

TEST(Plot, LogAxesSpaceDecadesEqually) {
  PlotSeries s{"err", {1, 10, 100, 1000}, {1e-1, 1e-2, 1e-3, 1e-4}};
  PlotOptions opt;
  opt.log_x = opt.log_y = true;
  const PlotAxes ax = plot_axes({s}, opt);
  const double dx1 = ax.px(10) - ax.px(1), dx2 = ax.px(1000) - ax.px(100);
  const double dy1 = ax.py(1e-2) - ax.py(1e-1), dy2 = ax.py(1e-4) - ax.py(1e-3);
  EXPECT_GT(dx1, 10);
  EXPECT_NEAR(dx1, dx2, 1e-9);
  EXPECT_GT(dy1, 10);  // y grows upwards: smaller values are lower (larger rows)
  EXPECT_NEAR(dy1, dy2, 1e-9);
  // Limits enclose the data with a margin, so points at the extremes are not on the frame.
  EXPECT_LT(ax.x0, 1);
  EXPECT_GT(ax.x1, 1000);
  EXPECT_LT(ax.y0, 1e-4);
  EXPECT_GT(ax.y1, 1e-1);
  const Image img = render_plot({s}, opt);
  for (size_t i = 0; i < 4; ++i)
    EXPECT_TRUE(has_colour_near(img, ax.px(s.x[i]), ax.py(s.y[i]), plot_palette(0), 0)) << i;
}

TEST(Plot, NonPositiveValuesSkippedOnLogAxes) {
  PlotSeries s{"", {1, 2, 3, 4}, {1, 0, -1, 10}};
  PlotOptions opt;
  opt.log_y = true;
  const PlotAxes ax = plot_axes({s}, opt);
  EXPECT_GT(ax.y0, 0);
  EXPECT_NO_THROW(render_plot({s}, opt));
}

TEST(Plot, NanAndInfBreakTheLine) {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  PlotSeries s{"a", {0, 1, 2, 3, 4, 5}, {0, 1, nan, 3, inf, 5}};
  s.color = {10, 150, 10};
  PlotOptions opt;
  const PlotAxes ax = plot_axes({s}, opt);
  EXPECT_LT(ax.y1, 10);  // inf doesn't stretch the range
  const Image img = render_plot({s}, opt);
  EXPECT_TRUE(has_colour_near(img, ax.px(0.5), ax.py(0.5), s.color, 0));
  // No segment bridges the gap 1 -> 3: the midpoint of that would-be segment stays clear.
  EXPECT_FALSE(has_colour_near(img, ax.px(2), ax.py(2), s.color, 2));
  // The isolated point at x=3 is still drawn as a dot, as is x=5.
  EXPECT_TRUE(has_colour_near(img, ax.px(3), ax.py(3), s.color, 0));
  EXPECT_TRUE(has_colour_near(img, ax.px(5), ax.py(5), s.color, 0));
}

TEST(Plot, EmptyAllNanAndSinglePoint) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  PlotOptions opt;
  opt.title = "empty";
  EXPECT_NO_THROW(render_plot({}, opt));
  EXPECT_NO_THROW(render_plot({PlotSeries{"none", {}, {}}}, opt));
  EXPECT_NO_THROW(render_plot({PlotSeries{"nan", {nan, 1}, {1, nan}}, PlotSeries{"b", {}, {}}}, opt));
  opt.log_x = opt.log_y = true;
  EXPECT_NO_THROW(render_plot({PlotSeries{"nan", {nan}, {nan}}}, opt));
  EXPECT_NO_THROW(render_plot({PlotSeries{"huge", {1e-300, 1e300}, {1e-300, 1e300}}}, opt));
  opt.log_x = opt.log_y = false;
  EXPECT_NO_THROW(render_plot({PlotSeries{"huge", {-1e308, 1e308}, {-1e308, 1e308}}}, opt));
  PlotSeries one{"one", {3}, {7}};
  one.color = {0, 0, 255};
  const PlotAxes ax = plot_axes({one}, opt);
  EXPECT_LT(ax.x0, 3);
  EXPECT_GT(ax.x1, 3);
  EXPECT_TRUE(has_colour_near(render_plot({one}, opt), ax.px(3), ax.py(7), one.color, 0));
}

TEST(Plot, SmoothingMarkersLegendAndPalette) {
  PlotSeries a{"train", {}, {}}, b{"val", {}, {}};
  for (int i = 0; i < 500; ++i) {
    a.y.push_back(1.0 / (1 + 0.02 * i) + 0.1 * std::sin(i * 1.7));
    b.y.push_back(1.2 / (1 + 0.02 * i));
  }
  b.markers = true;
  PlotOptions opt;
  opt.smooth_window = 25;
  const Image img = render_plot({a, b}, opt);
  EXPECT_NE(plot_palette(0), plot_palette(1));
  const PlotAxes ax = plot_axes({a, b}, opt);
  EXPECT_TRUE(has_colour_near(img, ax.px(250), ax.py(1.2 / 6), plot_palette(1), 1));
  // Explicit x of the wrong length is an error.
  EXPECT_THROW(render_plot({PlotSeries{"bad", {1, 2}, {1}}}, opt), Error);
  opt.width = 10;
  EXPECT_THROW(render_plot({a}, opt), Error);
}

TEST(Plot, SavePlotWritesPng) {
  test::TempDir dir;
  PlotSeries fid{"DDIM", {5, 10, 20, 50, 100}, {45.1, 20.3, 11.2, 6.8, 5.9}};
  PlotSeries fid2{"Euler", {5, 10, 20, 50, 100}, {80.5, 35.1, 16.0, 8.1, 6.3}};
  fid.markers = fid2.markers = true;
  PlotOptions opt;
  opt.title = "FID vs NFE";
  opt.xlabel = "NFE";
  opt.ylabel = "FID";
  opt.log_x = true;
  opt.width = 640;
  opt.height = 400;
  const std::string path = dir / "fid.png";
  save_plot(path, {fid, fid2}, opt);
  const Image img = read_image(path);
  EXPECT_EQ(img.width, 640);
  EXPECT_EQ(img.height, 400);
  EXPECT_EQ(img.channels, 3);
  EXPECT_EQ(img.data, render_plot({fid, fid2}, opt).data);
  // DIFFUSE_PLOT_SAMPLES=<dir> keeps sample charts there for a look.
  const char* keep = std::getenv("DIFFUSE_PLOT_SAMPLES");
  if (!keep) return;
  save_plot(std::string(keep) + "/fid.png", {fid, fid2}, opt);
  PlotSeries loss{"loss", {}, {}};
  for (int i = 0; i < 2000; ++i) loss.y.push_back(0.05 + 0.9 * std::exp(-i / 300.0) + 0.04 * std::sin(i * 12.9898));
  PlotOptions lo;
  lo.title = "Training loss";
  lo.xlabel = "step";
  lo.ylabel = "loss";
  lo.smooth_window = 50;
  save_plot(std::string(keep) + "/loss.png", {loss}, lo);
  PlotOptions eo;
  eo.title = "Sampler error vs NFE";
  eo.xlabel = "NFE";
  eo.ylabel = "max |x - x_ref|";
  eo.log_x = eo.log_y = true;
  std::vector<PlotSeries> err;
  for (int order = 1; order <= 3; ++order) {
    PlotSeries e{"order " + std::to_string(order), {}, {}};
    for (int n : {4, 8, 16, 32, 64, 128, 256}) e.x.push_back(n), e.y.push_back(std::pow(n, -order) * 3.0);
    e.markers = true;
    err.push_back(e);
  }
  save_plot(std::string(keep) + "/error.png", err, eo);
  PlotOptions none;
  none.title = "Nothing yet";
  none.xlabel = "step";
  none.ylabel = "loss";
  save_plot(std::string(keep) + "/empty.png", {}, none);
}

}  // namespace
}  // namespace diffuse
