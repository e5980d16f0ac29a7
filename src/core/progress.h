#pragma once
// A terminal progress line: count/total, rate, ETA and free text. Redraws in
// place on a terminal (at most ~5 times a second); prints a line every 10 %
// when the output is a file or pipe.
#include <chrono>
#include <cstdint>
#include <string>

namespace diffuse {

class Progress {
 public:
  Progress(int64_t total, std::string label, std::string unit = "it", bool enabled = true);
  // `done` items finished; `items_per_unit` scales the rate (e.g. images per step).
  void update(int64_t done, const std::string& text = "", double rate_scale = 1.0, const std::string& rate_unit = "");
  void finish(const std::string& text = "");
  double elapsed() const;

 private:
  void draw(int64_t done, const std::string& text, double rate_scale, const std::string& rate_unit, bool final);
  int64_t total_;
  int64_t start_done_ = -1;
  std::string label_, unit_;
  bool enabled_, tty_;
  std::chrono::steady_clock::time_point start_, last_draw_;
  int last_decile_ = -1;
};

// "1h02m", "3m05s", "12s"
std::string format_duration(double seconds);

}  // namespace diffuse
