#pragma once
// The LoRA trainer's test data: six captioned images of the tiny SD fixture's size, and options
// that train on them quickly.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/image.h"
#include "fixtures.h"
#include "sd_tiny_text.h"
#include "train/lora_trainer.h"

namespace diffuse::test {

// Six captioned images: four squares (16x16) and two wide ones (32x16), in one colour each.
inline std::string write_lora_data(const std::string& dir) {
  struct Item {
    const char* name;
    int w, h;
    uint8_t r, g, b;
  };
  const Item items[] = {{"red", 16, 16, 230, 20, 20},      {"blue", 16, 16, 20, 20, 230},
                        {"green", 16, 16, 20, 200, 20},    {"black", 16, 16, 10, 10, 10},
                        {"wide red", 32, 16, 230, 20, 20}, {"wide blue", 32, 16, 20, 20, 230}};
  std::filesystem::create_directories(dir + "/2_shapes");
  int i = 0;
  for (const auto& it : items) {
    Image img{it.w, it.h, 3, std::vector<uint8_t>(static_cast<size_t>(it.w * it.h * 3))};
    for (int p = 0; p < it.w * it.h; ++p) {
      // A lighter disc in the middle, so the images are not flat.
      const int x = p % it.w - it.w / 2, y = p / it.w - it.h / 2;
      const int lift = x * x + y * y < 16 ? 25 : 0;
      img.data[static_cast<size_t>(p * 3)] = static_cast<uint8_t>(std::min(255, it.r + lift));
      img.data[static_cast<size_t>(p * 3 + 1)] = static_cast<uint8_t>(std::min(255, it.g + lift));
      img.data[static_cast<size_t>(p * 3 + 2)] = static_cast<uint8_t>(std::min(255, it.b + lift));
    }
    const std::string base = dir + (i < 2 ? "/2_shapes/" : "/") + "img" + std::to_string(i);
    write_png(base + ".png", img);
    std::ofstream(base + ".txt") << "a " << it.name << " picture";
    ++i;
  }
  return dir;
}

inline LoraTrainOptions tiny_lora_options(const TempDir& dir) {
  LoraTrainOptions o;
  o.model = tiny_sd_folder(dir / "pipe");
  o.data = write_lora_data(dir / "data");
  o.out = dir / "my.safetensors";
  o.network.rank = 4;
  o.network.alpha = 4;
  o.network.unet_layers = "transformer";
  o.lr = 3e-3;
  o.batch = 2;
  o.steps = 60;
  o.save_every = 0;
  o.quiet = true;
  o.device = "cpu";
  return o;
}

}  // namespace diffuse::test
