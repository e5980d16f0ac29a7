#include "core/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>

namespace diffuse {

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char buf[32];
  long t = std::lround(s);
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else if (t >= 60)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

Progress::Progress(int64_t total, std::string label, std::string unit, bool enabled)
    : total_(total), label_(std::move(label)), unit_(std::move(unit)), enabled_(enabled), tty_(::isatty(2)) {
  start_ = last_draw_ = std::chrono::steady_clock::now();
}

double Progress::elapsed() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::update(int64_t done, const std::string& text, double rate_scale, const std::string& rate_unit) {
  if (!enabled_) return;
  if (start_done_ < 0) {
    start_done_ = done > 0 ? done - 1 : 0;
  }
  auto now = std::chrono::steady_clock::now();
  int decile = total_ > 0 ? static_cast<int>(10 * done / total_) : 0;
  bool due = tty_ ? std::chrono::duration<double>(now - last_draw_).count() > 0.2 : decile != last_decile_;
  if (!due && done < total_) return;
  last_draw_ = now;
  last_decile_ = decile;
  draw(done, text, rate_scale, rate_unit, false);
}

void Progress::finish(const std::string& text) {
  if (!enabled_) return;
  draw(total_, text, 1.0, "", true);
}

void Progress::draw(int64_t done, const std::string& text, double rate_scale, const std::string& rate_unit,
                    bool final) {
  double el = elapsed();
  int64_t counted = done - std::max<int64_t>(0, start_done_);
  double rate = el > 0 ? counted / el : 0;
  double eta = rate > 0 ? (total_ - done) / rate : NAN;
  const int width = 24;
  int filled = total_ > 0 ? static_cast<int>(width * std::min<int64_t>(done, total_) / total_) : 0;
  std::string bar(static_cast<size_t>(filled), '#');
  bar += std::string(static_cast<size_t>(width - filled), '.');
  char rbuf[64];
  if (!rate_unit.empty())
    std::snprintf(rbuf, sizeof rbuf, "%.1f %s/s", rate * rate_scale, rate_unit.c_str());
  else
    std::snprintf(rbuf, sizeof rbuf, "%.2f %s/s", rate, unit_.c_str());
  std::string line = label_ + " " + std::to_string(done) + "/" + std::to_string(total_) + " [" + bar + "] " + rbuf;
  if (!text.empty()) line += " | " + text;
  line += final ? " | " + format_duration(el) + " total" : " | ETA " + format_duration(eta);
  if (tty_)
    std::fprintf(stderr, "\r\033[K%s%s", line.c_str(), final ? "\n" : "");
  else
    std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

}  // namespace diffuse
