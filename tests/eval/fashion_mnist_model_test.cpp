// The shipped models/fashion-mnist: draws the class asked for (models/fashion-mnist/README.md records
// 95 %+ class agreement at n = 10,000) with shoes that face the way the data's shoes face. A model
// trained on randomly mirrored images draws about half of them the wrong way round.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "eval/classifier.h"
#include "fixtures.h"
#include "pipelines/pixel_pipeline.h"
#include "train/dataset.h"

namespace diffuse {
namespace {

// uint8 [N, 1, 28, 28] -> float [N, 28, 28] with background 0.
torch::Tensor as_float(const torch::Tensor& images) { return images.to(torch::kFloat32).squeeze(1) / 127.5; }

TEST(FashionMnistModel, ShippedModelDrawsTheClassFacingTheDataWay) {
  if (!std::filesystem::exists(default_fashion_mnist_dir())) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  auto pipe = PixelPipeline::load(test::source_path("models/fashion-mnist"));
  ASSERT_EQ(pipe.class_names.size(), 10u);
  auto net = FeatureNet::load(test::source_path("models/fashion-mnist-classifier"));
  auto train = load_dataset("fashion-mnist", "train");

  GenerateOptions o;
  o.sampler = "dpm++2m";
  o.steps = 20;
  o.guidance = 1.5;
  o.seed = 500;
  const int per_class = 3;
  const std::vector<int64_t> shoes = {7, 9};  // sneaker, ankle-boot: > 99.7 % of the data faces left
  const int per_shoe = 12;
  for (int64_t c = 0; c < 10; ++c)
    for (int i = 0; i < per_class; ++i) o.classes.push_back(c);
  for (int64_t c : shoes)
    for (int i = 0; i < per_shoe; ++i) o.classes.push_back(c);
  o.n = static_cast<int>(o.classes.size());
  auto res = generate(pipe, o);
  const int64_t size = res.samples.size(-1), pad = (size - 28) / 2;  // 32 px models pad 28 -> 32
  ASSERT_TRUE(size == 28 || size == 32) << size;
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
  std::cout << "[ fashion-mnist ] class agreement " << agree << " / " << o.n << ", shoes facing the data's way "
            << facing << " / " << shoes_drawn << "\n";
  EXPECT_GE(agree, o.n * 85 / 100);
  EXPECT_GE(facing, shoes_drawn - 2);  // a model trained with flips: about half
}

}  // namespace
}  // namespace diffuse
