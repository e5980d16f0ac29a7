// The shipped models/fashion-mnist: draws the class asked for (models/fashion-mnist/README.md records
// 95 %+ class agreement at n = 10,000) with shoes that face the way the data's shoes face. A model
// trained on randomly mirrored images draws about half of them the wrong way round. The shipped
// guide (models/fashion-mnist-guide) keeps both under autoguidance.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "eval/classifier.h"
#include "fixtures.h"
#include "pipelines/pixel_pipeline.h"
#include "train/dataset.h"

namespace diffuse {
namespace {

// uint8 [N, 1, 28, 28] -> float [N, 28, 28] with background 0.
torch::Tensor as_float(const torch::Tensor& images) { return images.to(torch::kFloat32).squeeze(1) / 127.5; }

// Draws 3 samples per class and 24 shoes with `o` (classes and n are set here); returns
// {class agreement, shoes facing the data's way} out of {54, 24}.
std::pair<int, int> draw_and_check(const PixelPipeline& pipe, GenerateOptions o, const std::string& label) {
  auto net = FeatureNet::load(test::source_path("models/fashion-mnist-classifier"));
  auto train = load_dataset("fashion-mnist", "train");
  const int per_class = 3;
  const std::vector<int64_t> shoes = {7, 9};  // sneaker, ankle-boot: > 99.7 % of the data faces left
  const int per_shoe = 12;
  o.classes.clear();
  for (int64_t c = 0; c < 10; ++c)
    for (int i = 0; i < per_class; ++i) o.classes.push_back(c);
  for (int64_t c : shoes)
    for (int i = 0; i < per_shoe; ++i) o.classes.push_back(c);
  o.n = static_cast<int>(o.classes.size());
  auto res = generate(pipe, o);
  const int64_t size = res.samples.size(-1), pad = (size - 28) / 2;  // 32 px models pad 28 -> 32
  EXPECT_TRUE(size == 28 || size == 32) << size;
  auto images = ((res.samples.clamp(-1, 1) + 1) * 127.5)
                    .round()
                    .to(torch::kUInt8)
                    .slice(2, pad, pad + 28)
                    .slice(3, pad, pad + 28);

  auto predicted = net.logits(images).argmax(1);
  int agree = 0;
  for (int i = 0; i < o.n; ++i) agree += predicted[i].item<int64_t>() == o.classes[static_cast<size_t>(i)];

  // Facing the data's way: closer to the class's mean training image than to that mean mirrored.
  int facing = 0, shoes_drawn = 0;
  auto x = as_float(images);
  for (int i = 10 * per_class; i < o.n; ++i) {
    auto c = o.classes[static_cast<size_t>(i)];
    auto mean = as_float(train.images.index({train.labels == c})).mean(0);
    facing += (x[i] * mean).sum().item<double>() > (x[i] * mean.flip({1})).sum().item<double>();
    ++shoes_drawn;
  }
  std::cout << "[ fashion-mnist ] " << label << ": class agreement " << agree << " / " << o.n
            << ", shoes facing the data's way " << facing << " / " << shoes_drawn << "\n";
  EXPECT_EQ(shoes_drawn, 24);
  return {agree, facing};
}

GenerateOptions bar_options() {
  GenerateOptions o;
  o.sampler = "dpm++2m";
  o.steps = 20;
  o.guidance = 1.5;
  o.seed = 500;
  return o;
}

TEST(FashionMnistModel, ShippedModelDrawsTheClassFacingTheDataWay) {
  if (!std::filesystem::exists(default_fashion_mnist_dir())) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  auto pipe = PixelPipeline::load(test::source_path("models/fashion-mnist"));
  ASSERT_EQ(pipe.class_names.size(), 10u);
  auto [agree, facing] = draw_and_check(pipe, bar_options(), "CFG 1.5");
  EXPECT_GE(agree, 54 * 85 / 100);
  EXPECT_GE(facing, 24 - 2);  // a model trained with flips: about half
}

// The shipped guide (models/fashion-mnist-guide) fits the model, and autoguidance with it run
// unconditionally keeps what CFG gives: the class asked for, shoes facing the data's way.
TEST(FashionMnistModel, ShippedGuideKeepsClassesAndOrientation) {
  if (!std::filesystem::exists(default_fashion_mnist_dir())) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  auto pipe = PixelPipeline::load(test::source_path("models/fashion-mnist"));
  auto guide =
      std::make_shared<const PixelPipeline>(PixelPipeline::load(test::source_path("models/fashion-mnist-guide")));
  ASSERT_NO_THROW(check_guide(pipe, *guide));
  EXPECT_LT(guide->net.num_parameters() * 3, pipe.net.num_parameters());  // a smaller network
  auto o = bar_options();
  o.guide = guide;
  o.guide_unconditional = true;
  auto [agree, facing] = draw_and_check(pipe, o, "autoguidance 1.5, unconditional guide");
  EXPECT_GE(agree, 54 * 85 / 100);
  EXPECT_GE(facing, 24 - 2);
}

}  // namespace
}  // namespace diffuse
