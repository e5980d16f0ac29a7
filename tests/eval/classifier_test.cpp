#include "eval/classifier.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/image.h"
#include "core/safetensors.h"
#include "eval_helpers.h"
#include "fixtures.h"

namespace diffuse::test {

// Writes `per_class` grey PNGs of `size` px into dir/<class>/ for each class name: class k has a bright
// bar at row/column k*2 plus noise, so the classes are easy to tell apart.
void write_image_folder(const std::string& dir, const std::vector<std::string>& classes, int per_class, int size,
                        uint64_t seed, int channels) {
  auto gen = at::detail::createCPUGenerator(seed);
  for (size_t k = 0; k < classes.size(); ++k) {
    std::string sub = classes[k].empty() ? dir : dir + "/" + classes[k];
    std::filesystem::create_directories(sub);
    for (int i = 0; i < per_class; ++i) {
      auto x = at::rand({channels, size, size}, gen).mul(0.6).sub(1.0);
      int pos = static_cast<int>(2 + 3 * k) % size;
      if (k % 2 == 0)
        x.narrow(2, pos, 2).fill_(0.9);
      else
        x.narrow(1, pos, 2).fill_(0.9);
      char name[32];
      std::snprintf(name, sizeof name, "/%04d.png", i);
      write_png(sub + name, to_image(x));
    }
  }
}

// A small random-initialised classifier for `size` px grey images.
Classifier tiny_classifier(const std::vector<std::string>& classes, int size, int channels, const std::string& dataset,
                           uint64_t seed) {
  torch::manual_seed(seed);
  ClassifierConfig c;
  c.in_channels = channels;
  c.image_size = size;
  c.num_classes = static_cast<int>(classes.size());
  c.class_names = classes;
  c.widths = {4, 8};
  c.convs_per_stage = 1;
  c.head_pool = 2;
  c.feature_dim = 6;
  c.dataset = dataset;
  Classifier net(c);
  // Non-trivial BatchNorm running statistics, so a save/load round trip has something to lose.
  net->train();
  {
    torch::NoGradGuard ng;
    for (int i = 0; i < 3; ++i) net->forward(torch::randn({16, channels, size, size}) * 0.5 + 0.1);
  }
  net->eval();
  return net;
}

}  // namespace diffuse::test

namespace diffuse {
namespace {

using test::TempDir;

TEST(ClassifierConfig, JsonRoundTrip) {
  ClassifierConfig c;
  c.widths = {8, 16, 32};
  c.feature_dim = 64;
  c.class_names = {"a", "b", "c"};
  c.num_classes = 3;
  c.dataset = "somewhere";
  auto d = ClassifierConfig::from_json(c.to_json());
  EXPECT_EQ(d.to_json(), c.to_json());
  EXPECT_EQ(d.widths, c.widths);
  EXPECT_EQ(d.class_names, c.class_names);
}

TEST(ClassifierConfig, RejectsBadFields) {
  EXPECT_THROW(ClassifierConfig::from_json("{"), Error);
  EXPECT_THROW(ClassifierConfig::from_json("[]"), Error);
  EXPECT_THROW(ClassifierConfig::from_json(R"({"widths": []})"), Error);
  EXPECT_THROW(ClassifierConfig::from_json(R"({"widths": [8, -1]})"), Error);
  EXPECT_THROW(ClassifierConfig::from_json(R"({"in_channels": "one"})"), Error);
  EXPECT_THROW(ClassifierConfig::from_json(R"({"num_classes": 3, "class_names": ["a", "b"]})"), Error);
  EXPECT_THROW(ClassifierConfig::from_json(R"({"image_size": 4, "widths": [4, 4, 4, 4]})"), Error);
  try {
    ClassifierConfig::from_json(R"({"dropout": 2})", "x/config.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("x/config.json"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("dropout"), std::string::npos);
  }
}

TEST(Classifier, ShapesAndDefaultSize) {
  ClassifierConfig c;  // the shipped architecture
  Classifier net(c);
  net->eval();
  auto x = torch::rand({3, 1, 28, 28}) * 2 - 1;
  EXPECT_EQ(net->features(x).sizes(), (std::vector<int64_t>{3, c.feature_dim}));
  EXPECT_EQ(net->logits(x).sizes(), (std::vector<int64_t>{3, 10}));
  EXPECT_GT(net->num_parameters(), 100000);
  EXPECT_LT(net->num_parameters(), 400000);
}

TEST(Classifier, SaveLoadRoundTripGivesIdenticalLogits) {
  TempDir tmp;
  auto net = test::tiny_classifier({"a", "b", "c"});
  save_classifier(net, tmp / "clf");
  EXPECT_TRUE(std::filesystem::exists(tmp / "clf/config.json"));
  EXPECT_TRUE(std::filesystem::exists(tmp / "clf/model.safetensors"));
  auto back = load_classifier(tmp / "clf");
  auto x = torch::rand({5, 1, 12, 12}) * 2 - 1;
  torch::NoGradGuard ng;
  EXPECT_TRUE(torch::equal(net->logits(x), back->logits(x)));
  EXPECT_TRUE(torch::equal(net->features(x), back->features(x)));
  EXPECT_EQ(back->config().class_names, (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(FeatureNet(net).fingerprint(), FeatureNet(back).fingerprint());
  EXPECT_NE(FeatureNet(net).fingerprint(),
            FeatureNet(test::tiny_classifier({"a", "b", "c"}, 12, 1, "", 7)).fingerprint());
}

TEST(Classifier, StrictLoading) {
  TempDir tmp;
  EXPECT_THROW(load_classifier(tmp / "missing"), Error);
  std::filesystem::create_directories(tmp / "empty");
  EXPECT_THROW(load_classifier(tmp / "empty"), Error);
  // Weights of one architecture under the config of another: a clear error naming the file.
  auto net = test::tiny_classifier({"a", "b"});
  save_classifier(net, tmp / "clf");
  auto cfg = net->config();
  cfg.feature_dim = 7;
  write_file_atomically(tmp / "clf/config.json", cfg.to_json());
  try {
    load_classifier(tmp / "clf");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.safetensors"), std::string::npos) << e.what();
  }
}

TEST(ClassifierInput, ConvertsCropsAndRejects) {
  ClassifierConfig c;  // 1 x 28 x 28
  auto u8 = torch::full({2, 1, 28, 28}, 255, torch::kUInt8);
  auto x = prepare_classifier_input(u8, c, false);
  EXPECT_EQ(x.scalar_type(), torch::kFloat32);
  EXPECT_NEAR(x.min().item<float>(), 1.0f, 1e-6);
  // 32 px (the dataset loader's 2-px padding) -> centre crop, exactly the inner 28 x 28.
  auto big = torch::rand({2, 1, 32, 32});
  EXPECT_TRUE(torch::equal(prepare_classifier_input(big, c, false), big.narrow(2, 2, 28).narrow(3, 2, 28)));
  EXPECT_TRUE(classifier_accepts_size(c, 32));
  EXPECT_FALSE(classifier_accepts_size(c, 64));
  EXPECT_FALSE(classifier_accepts_size(c, 16));
  // Other sizes only when resizing is allowed.
  EXPECT_THROW(prepare_classifier_input(torch::rand({1, 1, 64, 64}), c, false), Error);
  EXPECT_EQ(prepare_classifier_input(torch::rand({1, 1, 64, 64}), c, true).sizes(),
            (std::vector<int64_t>{1, 1, 28, 28}));
  EXPECT_EQ(prepare_classifier_input(torch::rand({1, 1, 20, 30}), c, true).sizes(),
            (std::vector<int64_t>{1, 1, 28, 28}));
  // Channel mismatch is never silently fixed.
  try {
    prepare_classifier_input(torch::rand({1, 3, 28, 28}), c, true, "model x");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("channel"), std::string::npos) << e.what();
  }
  EXPECT_THROW(prepare_classifier_input(torch::rand({28, 28}), c, true), Error);
}

TEST(FeatureNet, EmbedIsBatchIndependentAndMapsClasses) {
  FeatureNet net(test::tiny_classifier({"t-shirt", "trouser", "bag"}));
  auto x = (torch::rand({7, 1, 12, 12}) * 255).to(torch::kUInt8);
  auto all = net.embed(x, false, 100);
  auto small = net.embed(x, false, 3);
  EXPECT_LT((all.features - small.features).abs().max().item<float>(), 1e-5);
  EXPECT_LT((all.logits - small.logits).abs().max().item<float>(), 1e-5);
  EXPECT_EQ(all.features.sizes(), (std::vector<int64_t>{7, 6}));
  EXPECT_EQ(net.map_classes({"bag", "Trouser", "2", "dress", "17"}), (std::vector<int64_t>{2, 1, 2, -1, -1}));
  EXPECT_THROW(net.embed(torch::rand({2, 3, 12, 12})), Error);
}

TEST(FeatureNet, ClassFolderNamesAreSafeAndMapBack) {
  EXPECT_EQ(class_folder_name("ankle-boot"), "ankle-boot");
  EXPECT_EQ(class_folder_name("T-shirt/top"), "T-shirt_top");
  EXPECT_EQ(class_folder_name(".."), "_..");
  EXPECT_EQ(class_folder_name(""), "_");
  EXPECT_EQ(class_folder_name("a\\b:c*"), "a_b_c_");
  FeatureNet net(test::tiny_classifier({"T-shirt/top", "..", "bag"}));
  EXPECT_EQ(net.map_classes({class_folder_name("T-shirt/top"), class_folder_name(".."), "BAG", "T-shirt_Top"}),
            (std::vector<int64_t>{0, 1, 2, 0}));
}

TEST(TrainClassifier, LearnsAndIsDeterministic) {
  TempDir tmp;
  test::write_image_folder(tmp / "data", {"a", "b"}, 40, 12);
  ClassifierTrainOptions o = test::tiny_train_options(tmp / "data");
  o.epochs = 4;
  o.batch_size = 16;
  o.lr = 1e-2;
  o.pad = 1;
  o.seed = 3;
  int calls = 0;
  o.progress = [&](const ClassifierProgress& p) {
    ++calls;
    EXPECT_GE(p.loss, 0);
    EXPECT_LE(p.step, p.steps_per_epoch);
  };
  auto a = train_classifier(o);
  auto b = train_classifier(o);
  EXPECT_GT(calls, 0);
  EXPECT_EQ(a.test_images, 8);  // 10 % held out
  EXPECT_GE(a.test_accuracy, 0.75) << "two trivially separable classes";
  EXPECT_EQ(FeatureNet(a.net).fingerprint(), FeatureNet(b.net).fingerprint());
  EXPECT_EQ(a.net->config().class_names, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(a.net->config().dataset, o.data);

  o.data = tmp / "nothing";
  EXPECT_THROW(train_classifier(o), Error);
  o.data = tmp / "data";
  o.epochs = 0;
  EXPECT_THROW(train_classifier(o), Error);
}

TEST(LoadSplit, HoldsOutADeterministicShareOfImageFolders) {
  TempDir tmp;
  test::write_image_folder(tmp / "data", {"a", "b"}, 10, 8);
  auto train = load_split(tmp / "data", "train");
  auto test = load_split(tmp / "data", "test");
  EXPECT_EQ(train.size(), 18);
  EXPECT_EQ(test.size(), 2);
  EXPECT_TRUE(torch::equal(load_split(tmp / "data", "test").images, test.images));
  EXPECT_THROW(load_split(tmp / "data", "valid"), Error);
}

}  // namespace
}  // namespace diffuse

namespace diffuse::test {
ClassifierTrainOptions tiny_train_options(const std::string& data) {
  ClassifierTrainOptions o;
  o.data = data;
  o.model.widths = {4, 8};
  o.model.convs_per_stage = 1;
  o.model.head_pool = 2;
  o.model.feature_dim = 8;
  return o;
}
}  // namespace diffuse::test
