#pragma once
// A tiny labelled image folder for learning tests: two classes of 16x16 images, "top" with a
// bright upper half and "bottom" with a bright lower half (random brightness and noise).
// Horizontal flips keep the classes apart.
#include <torch/torch.h>

#include <filesystem>
#include <string>

#include "core/image.h"

namespace diffuse::test {

inline void write_two_class_set(const std::string& dir, int per_class, int channels = 1) {
  torch::manual_seed(11);
  for (const char* cls : {"bottom", "top"}) {
    std::filesystem::create_directories(dir + "/" + cls);
    for (int i = 0; i < per_class; ++i) {
      auto x = torch::full({channels, 16, 16}, -0.8) + 0.1 * torch::randn({channels, 16, 16});
      double level = 0.5 + 0.4 * torch::rand({1}).item<double>();
      if (cls[0] == 't')
        x.slice(1, 0, 8).fill_(level);
      else
        x.slice(1, 8, 16).fill_(level);
      write_png(dir + "/" + cls + "/" + std::to_string(i) + ".png", to_image(x.clamp(-1, 1)));
    }
  }
}

// Samples generated for classes {bottom x 8, top x 8} whose bright half matches the class.
inline int two_class_correct(const torch::Tensor& s) {
  int correct = 0;
  for (int i = 0; i < s.size(0); ++i) {
    double top = s[i].slice(1, 0, 8).mean().item<double>();
    double bottom = s[i].slice(1, 8, 16).mean().item<double>();
    bool is_top = top > bottom + 0.5, is_bottom = bottom > top + 0.5;
    if ((i < 8 && is_bottom) || (i >= 8 && is_top)) ++correct;
  }
  return correct;
}

}  // namespace diffuse::test
