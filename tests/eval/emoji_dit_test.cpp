// The shipped models/emoji-dit: loads as a DiTPipeline folder and draws subgroups that the emoji
// classifier recognises (models/emoji-dit/README.md records 30.5 % class agreement over all 99
// subgroups; the subgroups below are among the ones it learned well).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <string>
#include <vector>

#include "eval/classifier.h"
#include "fixtures.h"
#include "pipelines/pixel_pipeline.h"

namespace diffuse {
namespace {

TEST(EmojiDit, ShippedModelDrawsRecognisableSubgroups) {
  torch::manual_seed(0);
  auto pipe = PixelPipeline::load(test::source_path("models/emoji-dit"));
  ASSERT_TRUE(pipe.latent());
  ASSERT_EQ(pipe.image_size(), 64);
  auto net = FeatureNet::load(test::source_path("models/emoji-classifier"));
  const std::vector<std::string> wanted = {"cat-face", "award-medal", "animal-amphibian", "book-paper"};
  const int per_class = 6;
  GenerateOptions o;
  o.guidance = 3;
  o.steps = 20;
  o.seed = 100;
  for (const auto& name : wanted) {
    auto it = std::find(pipe.class_names.begin(), pipe.class_names.end(), name);
    ASSERT_NE(it, pipe.class_names.end()) << name;
    for (int i = 0; i < per_class; ++i) o.classes.push_back(it - pipe.class_names.begin());
  }
  o.n = static_cast<int>(o.classes.size());
  auto res = generate(pipe, o);
  auto images = ((res.samples.clamp(-1, 1) + 1) * 127.5).round().to(torch::kUInt8);
  auto predicted = net.logits(images).argmax(1);
  auto ids = net.map_classes(pipe.class_names);
  int agree = 0;
  for (int i = 0; i < o.n; ++i)
    agree += predicted[i].item<int64_t>() == ids[static_cast<size_t>(o.classes[static_cast<size_t>(i)])];
  std::cout << "[ emoji-dit ] " << agree << " / " << o.n << " samples classified as the subgroup asked for\n";
  EXPECT_GE(agree, 10);  // of 24; chance: 24 / 99
}

}  // namespace
}  // namespace diffuse
