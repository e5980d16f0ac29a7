#include "core/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "core/error.h"
#include "core/font5x7.h"

namespace diffuse {
namespace {

using Rgb = std::array<uint8_t, 3>;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr Rgb kPalette[10] = {{{31, 119, 180}},  {{255, 127, 14}}, {{44, 160, 44}},   {{214, 39, 40}},
                              {{148, 103, 189}}, {{140, 86, 75}},  {{227, 119, 194}}, {{127, 127, 127}},
                              {{188, 189, 34}},  {{23, 190, 207}}};
constexpr Rgb kGrid = {{228, 228, 228}}, kFrame = {{60, 60, 60}}, kText = {{30, 30, 30}};

// Coverage (alpha in [0, 1], max of everything drawn) clipped to a rectangle; composited in one colour.
struct Layer {
  int w, h, cx0 = 0, cy0 = 0, cx1, cy1;
  int bx0, by0, bx1, by1;  // dirty box
  std::vector<float> a;
  Layer(int w_, int h_) : w(w_), h(h_), cx1(w_), cy1(h_), a(size_t(w_) * h_, 0.f) { clear_box(); }
  void clear_box() { bx0 = w, by0 = h, bx1 = -1, by1 = -1; }
  void clip(int x0, int y0, int x1, int y1) {
    cx0 = std::max(0, x0), cy0 = std::max(0, y0), cx1 = std::min(w, x1), cy1 = std::min(h, y1);
  }
  void put(int x, int y, double v) {
    if (x < cx0 || x >= cx1 || y < cy0 || y >= cy1 || !(v > 0)) return;
    float& p = a[size_t(y) * w + x];
    p = std::max(p, float(std::min(v, 1.0)));
    bx0 = std::min(bx0, x), by0 = std::min(by0, y), bx1 = std::max(bx1, x), by1 = std::max(by1, y);
  }
  void fill(int x0, int y0, int x1, int y1) {  // [x0, x1) x [y0, y1), fully covered
    for (int y = std::max(y0, cy0); y < std::min(y1, cy1); ++y)
      for (int x = std::max(x0, cx0); x < std::min(x1, cx1); ++x) put(x, y, 1.0);
  }
};

// Blends the layer onto the image in colour c (times opacity) and clears it; marks `ink` where covered.
void composite(Image& img, Layer& L, Rgb c, double opacity = 1.0, std::vector<uint8_t>* ink = nullptr) {
  for (int y = L.by0; y <= L.by1; ++y)
    for (int x = L.bx0; x <= L.bx1; ++x) {
      float& p = L.a[size_t(y) * L.w + x];
      if (p <= 0) continue;
      const double t = p * opacity;
      uint8_t* q = &img.data[(size_t(y) * img.width + x) * 3];
      for (int k = 0; k < 3; ++k) q[k] = uint8_t(std::lround(q[k] + (c[k] - q[k]) * t));
      if (ink && p > 0.3f) (*ink)[size_t(y) * L.w + x] = 1;
      p = 0;
    }
  L.clear_box();
}

// Anti-aliased thick segment (round caps); pixel (x, y) has its centre at (x + .5, y + .5).
void segment(Layer& L, double x0, double y0, double x1, double y1, double width) {
  if (!std::isfinite(x0 + y0 + x1 + y1)) return;
  const double hw = width / 2, dx = x1 - x0, dy = y1 - y0, len2 = dx * dx + dy * dy;
  const int ix0 = std::max(L.cx0, int(std::floor(std::max(-1e6, std::min(x0, x1) - hw - 1))));
  const int ix1 = std::min(L.cx1 - 1, int(std::ceil(std::min(1e6, std::max(x0, x1) + hw + 1))));
  const int iy0 = std::max(L.cy0, int(std::floor(std::max(-1e6, std::min(y0, y1) - hw - 1))));
  const int iy1 = std::min(L.cy1 - 1, int(std::ceil(std::min(1e6, std::max(y0, y1) + hw + 1))));
  for (int y = iy0; y <= iy1; ++y)
    for (int x = ix0; x <= ix1; ++x) {
      const double cx = x + 0.5 - x0, cy = y + 0.5 - y0;
      const double t = len2 > 0 ? std::clamp((cx * dx + cy * dy) / len2, 0.0, 1.0) : 0.0;
      L.put(x, y, hw + 0.5 - std::hypot(cx - t * dx, cy - t * dy));
    }
}

int text_width(const std::string& s, int scale, bool bold = false) {
  return s.empty() ? 0 : (int(s.size()) * (bold ? 7 : 6) - 1) * scale;
}

// Whether glyph-space point (u, v) of string s is inked. Diagonal steps get small fillets so that
// upscaled glyphs look less blocky.
bool glyph_ink(const std::string& s, double u, double v, bool bold) {
  const int adv = bold ? 7 : 6;
  if (u < 0 || v < 0 || v >= font5x7::kGlyphHeight) return false;
  const int gi = int(u / adv);
  if (gi >= int(s.size())) return false;
  const double cu = u - gi * adv, fu = cu - std::floor(cu), fv = v - std::floor(v);
  const int c = int(cu), r = int(v);
  auto on = [&](int cc, int rr) {
    return font5x7::pixel(s[gi], cc, rr) || (bold && font5x7::pixel(s[gi], cc - 1, rr));
  };
  if (on(c, r)) return true;
  return (fu + fv < .5 && on(c - 1, r) && on(c, r - 1)) || (1 - fu + fv < .5 && on(c + 1, r) && on(c, r - 1)) ||
         (fu + 1 - fv < .5 && on(c - 1, r) && on(c, r + 1)) || (2 - fu - fv < .5 && on(c + 1, r) && on(c, r + 1));
}

// Text whose box has its top-left corner at (x, y); vertical text reads bottom to top.
void draw_text(Layer& L, int x, int y, const std::string& s, int scale, bool bold = false, bool vertical = false) {
  const int tw = text_width(s, scale, bold), th = font5x7::kGlyphHeight * scale;
  const int bw = vertical ? th : tw, bh = vertical ? tw : th, n = 4;
  for (int py = std::max(y, L.cy0); py < std::min(y + bh, L.cy1); ++py)
    for (int px = std::max(x, L.cx0); px < std::min(x + bw, L.cx1); ++px) {
      int hits = 0;
      for (int i = 0; i < n; ++i)
        for (int j = 0; j < n; ++j) {
          const double sx = px - x + (i + 0.5) / n, sy = py - y + (j + 0.5) / n;
          hits += glyph_ink(s, (vertical ? bh - sy : sx) / scale, (vertical ? sx : sy) / scale, bold);
        }
      L.put(px, py, hits / double(n * n));
    }
}

std::string fmt_fixed(double v, int decimals) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", decimals, std::abs(v) < 0.5 * std::pow(10.0, -decimals) ? 0.0 : v);
  return b;
}

std::string fmt_sci(double mantissa, int decimals, int exponent) {
  return fmt_fixed(mantissa, decimals) + "e" + std::to_string(exponent);
}

struct Tick {
  double v;
  std::string label;  // empty: minor tick
};

// Linear: multiples of a 1-2-5 step. Log: decades (every `stride`-th), minor ticks at 2..9, labelled at 2
// and 5 (or all) when few decades are shown.
std::vector<Tick> make_ticks(double lo, double hi, bool log, int max_ticks) {
  std::vector<Tick> ticks;
  max_ticks = std::max(1, max_ticks);
  if (!log) {
    if (!(hi > lo) || !std::isfinite(hi - lo)) return ticks;  // no range to divide
    const double raw = (hi - lo) / max_ticks, p = std::pow(10.0, std::floor(std::log10(raw)));
    double step = 10 * p;
    for (double m : {1.0, 2.0, 5.0})
      if (m * p >= raw * (1 - 1e-9)) {
        step = m * p;
        break;
      }
    if (!std::isfinite(step) || !(step > 0)) return ticks;
    const int es = int(std::floor(std::log10(step) + 1e-9));
    const double maxabs = std::max(std::abs(lo), std::abs(hi));
    const bool sci = maxabs >= 1e5 || maxabs < 1e-3;
    for (double k = std::ceil(lo / step - 1e-9); k <= std::floor(hi / step + 1e-9); ++k) {
      const double v = k * step;
      const int e = v == 0 ? 0 : int(std::floor(std::log10(std::abs(v)) + 1e-9));
      ticks.push_back({v, v == 0 ? "0"
                          : sci  ? fmt_sci(v / std::pow(10.0, e), std::max(0, e - es), e)
                                 : fmt_fixed(v, std::max(0, -es))});
    }
    return ticks;
  }
  if (!(lo > 0) || !(hi >= lo) || !std::isfinite(hi)) return ticks;  // no positive range to put on a log axis
  const int elo = int(std::floor(std::log10(lo) + 1e-9)), ehi = int(std::ceil(std::log10(hi) - 1e-9));
  const double span = std::log10(hi / lo);
  const int stride = std::max(1, int(std::ceil(span / max_ticks - 1e-9)));
  const bool plain = elo >= -3 && ehi <= 4, all = span * 9 <= max_ticks, sub = span * 3 <= max_ticks;
  for (int e = elo; e <= ehi; ++e)
    for (int m = 1; m <= 9; ++m) {
      const double v = m * std::pow(10.0, e);
      if (v < lo * (1 - 1e-9) || v > hi * (1 + 1e-9) || (m == 1 && e % stride != 0) || (m > 1 && stride > 1)) continue;
      const bool labelled = m == 1 || all || (sub && (m == 2 || m == 5));
      ticks.push_back({v, !labelled ? "" : plain ? fmt_fixed(v, std::max(0, -e)) : fmt_sci(m, 0, e)});
    }
  return ticks;
}

bool valid(double x, double y, const PlotOptions& o) {
  return std::isfinite(x) && std::isfinite(y) && (!o.log_x || x > 0) && (!o.log_y || y > 0);
}
double x_at(const PlotSeries& s, size_t i) { return s.x.empty() ? double(i) : s.x[i]; }

struct Layout {
  PlotAxes ax;
  std::vector<Tick> xt, yt;
  int s = 1;
  bool has_data = false;
};

// Axis limits from the data range with 4% margins (of log10 of the range on log axes).
void limits(double mn, double mx, bool log, double& lo, double& hi) {
  if (log) {
    const double a = std::log10(mn), b = std::log10(mx), m = b - a > 1e-9 ? 0.04 * (b - a) : 0.5;
    lo = std::pow(10.0, a - m), hi = std::pow(10.0, b + m);
  } else if (mx - mn <= 1e-12 * std::max(std::abs(mn), std::abs(mx))) {
    const double pad = mn != 0 ? 0.1 * std::abs(mn) : 1.0;
    lo = mn - pad, hi = mx + pad;
  } else {
    lo = mn - 0.04 * (mx - mn), hi = mx + 0.04 * (mx - mn);
  }
}

// Fewest reductions of the tick budget so that the labels along an axis don't overlap.
std::vector<Tick> fitted_ticks(double lo, double hi, bool log, int max_ticks, int s, double pixels, bool along_x) {
  for (int mt = max_ticks;; --mt) {
    std::vector<Tick> t = make_ticks(lo, hi, log, mt);
    const double span = log ? std::log10(hi / lo) : hi - lo;
    double prev_end = -1e9;
    bool fits = true;
    for (const Tick& k : t) {
      if (k.label.empty()) continue;
      const double pos = (log ? std::log10(k.v / lo) : k.v - lo) / span * pixels;
      const double half = (along_x ? text_width(k.label, s) : 8 * s) / 2.0;
      fits = fits && pos - half >= prev_end + 3 * s;
      prev_end = pos + half;
    }
    if (fits || mt <= 1) return t;
  }
}

Layout layout(const std::vector<PlotSeries>& series, const PlotOptions& opt) {
  if (opt.width < 160 || opt.height < 120 || opt.width > 16384 || opt.height > 16384)
    throw Error("plot: image size " + std::to_string(opt.width) + "x" + std::to_string(opt.height) +
                " out of range (160x120 .. 16384x16384)");
  double xmn = INFINITY, xmx = -INFINITY, ymn = INFINITY, ymx = -INFINITY;
  for (const PlotSeries& ser : series) {
    if (!ser.x.empty() && ser.x.size() != ser.y.size())
      throw Error("plot: series '" + ser.label + "' has " + std::to_string(ser.x.size()) + " x values but " +
                  std::to_string(ser.y.size()) + " y values");
    for (size_t i = 0; i < ser.y.size(); ++i) {
      const double x = x_at(ser, i), y = ser.y[i];
      if (!valid(x, y, opt)) continue;
      xmn = std::min(xmn, x), xmx = std::max(xmx, x), ymn = std::min(ymn, y), ymx = std::max(ymx, y);
    }
  }
  Layout L;
  L.has_data = xmn <= xmx;
  if (!L.has_data) xmn = ymn = 1, xmx = ymx = 10;
  PlotAxes& a = L.ax;
  a.log_x = opt.log_x, a.log_y = opt.log_y;
  limits(xmn, xmx, opt.log_x, a.x0, a.x1);
  limits(ymn, ymx, opt.log_y, a.y0, a.y1);
  if (!L.has_data && !opt.log_x) a.x0 = 0, a.x1 = 1;
  if (!L.has_data && !opt.log_y) a.y0 = 0, a.y1 = 1;
  const int s = L.s = std::max(1, int(std::lround(std::min(opt.width / 400.0, opt.height / 250.0))));
  a.top = opt.title.empty() ? 8 * s : 20 * s;
  a.bottom = opt.height - (18 * s + (opt.xlabel.empty() ? 0 : 12 * s));
  L.yt = fitted_ticks(a.y0, a.y1, opt.log_y, std::max(2, (a.bottom - a.top) / (28 * s)), s, a.bottom - a.top, false);
  int yw = 0;
  for (const Tick& t : L.yt) yw = std::max(yw, text_width(t.label, s));
  a.left = 10 * s + yw + (opt.ylabel.empty() ? 0 : 13 * s);
  a.right = opt.width - 12 * s;
  L.xt = fitted_ticks(a.x0, a.x1, opt.log_x, std::max(2, (a.right - a.left) / (40 * s)), s, a.right - a.left, true);
  return L;
}

// Centred moving average over `window` points, truncated at the ends (invalid points excluded; NaN where
// the point itself is invalid).
std::vector<double> smooth(const PlotSeries& ser, int window, const PlotOptions& opt) {
  const size_t n = ser.y.size();
  std::vector<double> sum(n + 1, 0), cnt(n + 1, 0), out(n, kNaN);
  for (size_t i = 0; i < n; ++i) {
    const bool ok = valid(x_at(ser, i), ser.y[i], opt);
    sum[i + 1] = sum[i] + (ok ? ser.y[i] : 0), cnt[i + 1] = cnt[i] + ok;
  }
  for (size_t i = 0; i < n; ++i) {
    const size_t half = window / 2, b = i > half ? i - half : 0, e = std::min(n, i + half + 1);
    if (valid(x_at(ser, i), ser.y[i], opt)) out[i] = (sum[e] - sum[b]) / (cnt[e] - cnt[b]);
  }
  return out;
}

// Polyline through the valid points, broken at invalid ones; isolated points become dots.
void draw_series(Layer& Ly, const PlotAxes& a, const PlotSeries& ser, const std::vector<double>& ys,
                 const PlotOptions& opt, double lw, bool markers) {
  const size_t n = ys.size();
  auto ok = [&](size_t i) { return i < n && valid(x_at(ser, i), ys[i], opt); };
  for (size_t i = 0; i < n; ++i) {
    if (!ok(i)) continue;
    const double x = a.px(x_at(ser, i)), y = a.py(ys[i]);
    if (i > 0 && ok(i - 1))
      segment(Ly, a.px(x_at(ser, i - 1)), a.py(ys[i - 1]), x, y, lw);
    else if (!ok(i + 1) && !markers)
      segment(Ly, x, y, x, y, 2 * lw);
    if (markers) segment(Ly, x, y, x, y, 2.6 * lw);
  }
}

}  // namespace

double PlotAxes::px(double x) const {
  auto t = [&](double v) { return log_x ? std::log10(v) : v; };
  return left + (t(x) - t(x0)) / (t(x1) - t(x0)) * (right - left);
}
double PlotAxes::py(double y) const {
  auto t = [&](double v) { return log_y ? std::log10(v) : v; };
  return bottom - (t(y) - t(y0)) / (t(y1) - t(y0)) * (bottom - top);
}

std::array<uint8_t, 3> plot_palette(size_t i) { return kPalette[i % 10]; }

PlotAxes plot_axes(const std::vector<PlotSeries>& series, const PlotOptions& opt) { return layout(series, opt).ax; }

Image render_plot(const std::vector<PlotSeries>& series, const PlotOptions& opt) {
  const Layout lay = layout(series, opt);
  const PlotAxes& a = lay.ax;
  const int s = lay.s, W = opt.width, H = opt.height;
  const double lw = std::max(2.0, 1.25 * s);
  Image img{W, H, 3, std::vector<uint8_t>(size_t(W) * H * 3, 255)};
  Layer L(W, H);
  std::vector<uint8_t> ink(size_t(W) * H, 0);

  // Grid at labelled ticks.
  L.clip(a.left, a.top, a.right, a.bottom);
  for (const Tick& t : lay.xt)
    if (!t.label.empty()) L.fill(int(std::floor(a.px(t.v))), a.top, int(std::floor(a.px(t.v))) + 1, a.bottom);
  for (const Tick& t : lay.yt)
    if (!t.label.empty()) L.fill(a.left, int(std::floor(a.py(t.v))), a.right, int(std::floor(a.py(t.v))) + 1);
  composite(img, L, kGrid);

  // Series: the raw data faint under its moving average when smoothing.
  for (size_t i = 0; i < series.size(); ++i) {
    const PlotSeries& ser = series[i];
    const Rgb c = ser.color == Rgb{{0, 0, 0}} ? plot_palette(i) : ser.color;
    if (opt.smooth_window > 1) {
      draw_series(L, a, ser, ser.y, opt, std::max(1.0, lw / 2), false);
      composite(img, L, c, 0.3);
      draw_series(L, a, ser, smooth(ser, opt.smooth_window, opt), opt, lw, ser.markers);
    } else {
      draw_series(L, a, ser, ser.y, opt, lw, ser.markers);
    }
    composite(img, L, c, 1.0, &ink);
  }

  // Frame, tick marks, tick labels.
  L.clip(0, 0, W, H);
  const int tw = std::max(1, s / 2);
  L.fill(a.left - 1, a.top - 1, a.right + 1, a.top), L.fill(a.left - 1, a.bottom, a.right + 1, a.bottom + 1);
  L.fill(a.left - 1, a.top - 1, a.left, a.bottom + 1), L.fill(a.right, a.top - 1, a.right + 1, a.bottom + 1);
  for (const Tick& t : lay.xt) {
    const int x = std::min(a.right, int(std::floor(a.px(t.v)))), len = t.label.empty() ? 2 * s : 4 * s;
    L.fill(x - tw / 2, a.bottom + 1, x - tw / 2 + tw, a.bottom + 1 + len);
  }
  for (const Tick& t : lay.yt) {
    const int y = std::min(a.bottom, int(std::floor(a.py(t.v)))), len = t.label.empty() ? 2 * s : 4 * s;
    L.fill(a.left - 1 - len, y - tw / 2, a.left - 1, y - tw / 2 + tw);
  }
  composite(img, L, kFrame);
  for (const Tick& t : lay.xt) {
    const int w = text_width(t.label, s), x = int(std::lround(a.px(t.v) - w / 2.0));
    draw_text(L, std::clamp(x, 0, std::max(0, W - w)), a.bottom + 7 * s, t.label, s);
  }
  for (const Tick& t : lay.yt)
    draw_text(L, a.left - 7 * s - text_width(t.label, s), int(std::lround(a.py(t.v) - 3.5 * s)), t.label, s);

  // Axis labels and title.
  const int xw = text_width(opt.xlabel, s), yw = text_width(opt.ylabel, s), ttw = text_width(opt.title, s, true);
  draw_text(L, std::max(0, (a.left + a.right - xw) / 2), a.bottom + 18 * s, opt.xlabel, s);
  draw_text(L, 4 * s, std::max(0, (a.top + a.bottom - yw) / 2), opt.ylabel, s, false, true);
  draw_text(L, std::clamp((a.left + a.right - ttw) / 2, 2 * s, std::max(2 * s, W - ttw)), 6 * s, opt.title, s, true);
  if (!lay.has_data) {
    const int w = text_width("no data", s);
    draw_text(L, (a.left + a.right - w) / 2, (a.top + a.bottom) / 2 - 4 * s, "no data", s);
  }
  composite(img, L, kText);

  // Legend in the plot-area corner with the least series ink.
  std::vector<size_t> entries;
  for (size_t i = 0; i < series.size(); ++i)
    if (!series[i].label.empty()) entries.push_back(i);
  if (series.size() < 2 || entries.empty()) return img;
  int lw_text = 0;
  for (size_t i : entries) lw_text = std::max(lw_text, text_width(series[i].label, s));
  const int bw = 22 * s + lw_text, bh = 4 * s + int(entries.size()) * 11 * s - 3 * s, m = 5 * s;
  const int cand[4][2] = {{a.right - m - bw, a.top + m},
                          {a.left + m, a.top + m},
                          {a.left + m, a.bottom - m - bh},
                          {a.right - m - bw, a.bottom - m - bh}};
  int bx = cand[0][0], by = cand[0][1];
  long best = -1;
  for (const auto& c : cand) {
    long count = 0;
    for (int y = std::max(0, c[1]); y < std::min(H, c[1] + bh); ++y)
      for (int x = std::max(0, c[0]); x < std::min(W, c[0] + bw); ++x) count += ink[size_t(y) * W + x];
    if (best < 0 || count < best) best = count, bx = c[0], by = c[1];
  }
  L.fill(bx, by, bx + bw, by + bh);
  composite(img, L, {{255, 255, 255}}, 0.85);
  L.fill(bx, by, bx + bw, by + 1), L.fill(bx, by + bh - 1, bx + bw, by + bh);
  L.fill(bx, by, bx + 1, by + bh), L.fill(bx + bw - 1, by, bx + bw, by + bh);
  composite(img, L, {{190, 190, 190}});
  for (size_t k = 0; k < entries.size(); ++k) {
    const PlotSeries& ser = series[entries[k]];
    const double cy = by + 5.5 * s + int(k) * 11 * s;
    segment(L, bx + 4 * s, cy, bx + 16 * s, cy, lw);
    if (ser.markers) segment(L, bx + 10 * s, cy, bx + 10 * s, cy, 2.6 * lw);
    composite(img, L, ser.color == Rgb{{0, 0, 0}} ? plot_palette(entries[k]) : ser.color);
  }
  for (size_t k = 0; k < entries.size(); ++k)
    draw_text(L, bx + 19 * s, by + 2 * s + int(k) * 11 * s, series[entries[k]].label, s);
  composite(img, L, kText);
  return img;
}

void save_plot(const std::string& path, const std::vector<PlotSeries>& series, const PlotOptions& opt) {
  write_png(path, render_plot(series, opt), {{"Software", "diffuse"}, {"Title", opt.title}});
}

}  // namespace diffuse
