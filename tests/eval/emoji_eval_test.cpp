// Evaluation on emoji: the dataset's own held-out split, reference caching keyed on the font and
// emoji-test.txt, a classifier trained on it, and latent pipelines (decoded through their VAE).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "eval/classifier.h"
#include "eval/evaluate.h"
#include "eval/reference.h"
#include "eval_helpers.h"
#include "fixtures.h"
#include "models/autoencoder_kl.h"
#include "train/emoji.h"

namespace diffuse {
namespace {

using test::TempDir;

// Sets an environment variable for the life of the guard, then restores it.
class EnvGuard {
 public:
  EnvGuard(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old, had_ = true;
    ::setenv(name, value.c_str(), 1);
  }
  ~EnvGuard() {
    if (had_)
      ::setenv(name_, old_.c_str(), 1);
    else
      ::unsetenv(name_);
  }

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

TEST(EmojiEval, LoadSplitUsesTheDatasetsOwnHeldOutSplit) {
  Dataset train = load_split("emoji", "train");
  Dataset test = load_split("emoji", "test");
  EXPECT_EQ(train.image_size(), 64);
  EXPECT_EQ(train.channels(), 3);
  EXPECT_EQ(train.class_names, test.class_names);
  // Every 10th emoji is held out: test = floor(N / 10) of N.
  const int64_t n = train.size() + test.size();
  EXPECT_EQ(test.size(), n / 10);
  std::set<std::string> train_names(train.names.begin(), train.names.end());
  for (const auto& name : test.names) EXPECT_EQ(train_names.count(name), 0u) << name;
  // Not the 10 % random hold-out of image folders: the emoji split itself.
  EXPECT_TRUE(torch::equal(test.images, load_dataset("emoji", "test").images));
}

TEST(EmojiEval, ReferenceKeyFollowsTheFontAndEmojiTestFiles) {
  TempDir tmp;
  FeatureNet net(test::tiny_classifier({"a", "b"}, 12, 3, "emoji"));
  std::string font = tmp / "font.ttf", list = tmp / "emoji-test.txt";
  std::ofstream(font) << "font v1";
  std::ofstream(list) << "list v1";
  EnvGuard f("DIFFUSE_EMOJI_FONT", font), t("DIFFUSE_EMOJI_TEST", list);
  const auto k1 = reference_key(net, "emoji", "train");
  EXPECT_EQ(reference_key(net, "emoji", "train"), k1);
  EXPECT_NE(reference_key(net, "emoji", "test"), k1);
  std::ofstream(font, std::ios::trunc) << "font v2, longer";
  const auto k2 = reference_key(net, "emoji", "train");
  EXPECT_NE(k2, k1);
  std::ofstream(list, std::ios::trunc) << "list v2, longer";
  EXPECT_NE(reference_key(net, "emoji", "train"), k2);
  // Independent of the working directory's contents (no folder called "emoji" is consulted).
  std::string other = tmp / "other.ttf";
  std::ofstream(other) << "font v2, longer";
  EnvGuard f2("DIFFUSE_EMOJI_FONT", other);
  EXPECT_NE(reference_key(net, "emoji", "train"), k2);
}

TEST(EmojiEval, ReferenceSetOfTheHeldOutSplitMapsSubgroupsAndCaches) {
  TempDir tmp;
  Dataset test = load_split("emoji", "test");
  // A network whose class order is reversed: labels are mapped by subgroup name.
  std::vector<std::string> names(test.class_names.rbegin(), test.class_names.rend());
  FeatureNet net(test::tiny_classifier(names, 64, 3, "emoji"));
  auto r = reference_set(net, "emoji", "test", tmp / "cache");
  EXPECT_FALSE(r.from_cache);
  ASSERT_EQ(r.size(), test.size());
  const int64_t k = static_cast<int64_t>(names.size());
  EXPECT_TRUE(torch::equal(r.labels, torch::full_like(test.labels, k - 1) - test.labels));
  EXPECT_NE(r.cache_file.find("features-emoji-test-"), std::string::npos) << r.cache_file;
  auto again = reference_set(net, "emoji", "test", tmp / "cache");
  EXPECT_TRUE(again.from_cache);
  EXPECT_TRUE(torch::equal(again.features, r.features));
}

TEST(EmojiEval, TrainClassifierOnEmojiUsesSubgroupsAndTheHeldOutSplit) {
  ClassifierTrainOptions o = test::tiny_train_options("emoji");
  o.epochs = 1;
  o.batch_size = 32;
  o.limit = 64;
  auto r = train_classifier(o);
  Dataset test = load_split("emoji", "test");
  const auto& cfg = r.net->config();
  EXPECT_EQ(cfg.in_channels, 3);
  EXPECT_EQ(cfg.image_size, 64);
  EXPECT_EQ(cfg.class_names, test.class_names);
  EXPECT_EQ(cfg.num_classes, static_cast<int>(test.class_names.size()));
  EXPECT_EQ(cfg.dataset, "emoji");
  EXPECT_EQ(r.test_images, test.size());
  EXPECT_GE(r.test_top5_accuracy, r.test_accuracy);
  // Top-k accuracy is exact on known logits: k = number of classes is always 1.
  FeatureNet net(r.net);
  EXPECT_DOUBLE_EQ(classifier_accuracy(net, test.images, test.labels, cfg.num_classes), 1.0);
  EXPECT_NEAR(classifier_accuracy(net, test.images, test.labels, 1), r.test_accuracy, 1e-12);
  EXPECT_THROW(classifier_accuracy(net, test.images, test.labels, 0), Error);
}

// A tiny latent pipeline: VAE (f = 2, 4 latent channels) + class-conditional UNet on 6x6 latents,
// generating 12x12 RGB images.
PixelPipeline tiny_latent_pipeline(std::vector<std::string> classes) {
  torch::manual_seed(0);
  AutoencoderKLConfig vc;
  vc.down_block_types = {"DownEncoderBlock2D", "DownEncoderBlock2D"};
  vc.up_block_types = {"UpDecoderBlock2D", "UpDecoderBlock2D"};
  vc.block_out_channels = {8, 16};
  vc.norm_num_groups = 4;
  vc.latent_channels = 4;
  vc.sample_size = 12;
  vc.scaling_factor = 0.5;
  PixelPipeline p;
  p.net = DiffusionNet(UNet2DModel(test::tiny_unet_config(6, 4, static_cast<int>(classes.size()))));
  p.net.module().eval();
  p.vae = AutoencoderKL(vc);
  p.vae->eval();
  p.class_names = std::move(classes);
  p.null_class = static_cast<int64_t>(p.class_names.size());
  p.source = "tiny-latent";
  return p;
}

TEST(EmojiEval, LatentPipelineIsScoredOnDecodedImages) {
  TempDir tmp;
  std::string data = tmp / "data";
  test::write_image_folder(data, {"animal-bird", "food-fruit"}, 20, 12, 1, 3);
  FeatureNet net(test::tiny_classifier({"animal-bird", "food-fruit"}, 12, 3, data));
  auto pipe = tiny_latent_pipeline({"food-fruit", "animal-bird"});
  ASSERT_TRUE(pipe.latent());
  EXPECT_EQ(pipe.image_size(), 12);
  EXPECT_EQ(pipe.channels(), 3);
  EXPECT_NO_THROW(check_compatible(pipe, net));
  // The latent size (6) or channels (4) are not what the feature network sees.
  FeatureNet wrong_size(test::tiny_classifier({"animal-bird", "food-fruit"}, 6, 3, data));
  EXPECT_THROW(check_compatible(pipe, wrong_size), Error);
  FeatureNet wrong_channels(test::tiny_classifier({"animal-bird", "food-fruit"}, 12, 4, data));
  EXPECT_THROW(check_compatible(pipe, wrong_channels), Error);

  GenerateOptions g;
  g.steps = 2;
  g.batch_size = 3;
  std::vector<int64_t> cls;
  auto images = generate_for_eval(pipe, g, 6, &cls);
  EXPECT_EQ(images.sizes(), (std::vector<int64_t>{6, 3, 12, 12}));
  EXPECT_EQ(cls, (std::vector<int64_t>{0, 1, 0, 1, 0, 1}));

  EvalOptions o;
  o.n = 6;
  o.generate = g;
  o.cache_dir = tmp / "cache";
  o.metrics.kid.subsets = 3;
  auto r = evaluate_pipeline(pipe, net, o);
  EXPECT_TRUE(r.conditional);
  EXPECT_TRUE(std::isfinite(r.samples.fid));
  EXPECT_TRUE(std::isfinite(r.samples.class_agreement));
  // Class agreement maps the pipeline's classes to the network's by subgroup name.
  auto e = net.embed(images);
  auto wanted = torch::tensor(std::vector<int64_t>{1, 0, 1, 0, 1, 0}, torch::kInt64);
  EXPECT_NEAR(r.samples.class_agreement, e.predicted().eq(wanted).to(torch::kFloat64).mean().item<double>(), 1e-12);
}

}  // namespace
}  // namespace diffuse
