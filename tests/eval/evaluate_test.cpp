#include "eval/evaluate.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "eval/classifier.h"
#include "eval/reference.h"
#include "eval_helpers.h"
#include "fixtures.h"

namespace diffuse {
namespace {

using test::TempDir;

// A labelled reference dataset (classes a, b; 30 images each, 12 px) and a feature network for it.
struct World {
  TempDir tmp;
  std::string data = tmp / "data";
  std::string cache = tmp / "cache";
  FeatureNet net;
  World() {
    test::write_image_folder(data, {"a", "b"}, 30, 12, 1);
    net = FeatureNet(test::tiny_classifier({"a", "b"}, 12, 1, data));
  }
};

TEST(Reference, CachedByKeyAndRebuiltWhenStale) {
  World w;
  auto r1 = reference_set(w.net, w.data, "train", w.cache);
  EXPECT_FALSE(r1.from_cache);
  EXPECT_EQ(r1.size(), 54);  // 60 images, 10 % held out
  EXPECT_TRUE(std::filesystem::exists(r1.cache_file));
  EXPECT_EQ(r1.stats.n, 54);
  EXPECT_EQ(r1.labels.min().item<int64_t>(), 0);
  auto r2 = reference_set(w.net, w.data, "train", w.cache);
  EXPECT_TRUE(r2.from_cache);
  EXPECT_TRUE(torch::equal(r1.features, r2.features));
  EXPECT_TRUE(torch::equal(r1.stats.sigma, r2.stats.sigma));
  EXPECT_TRUE(torch::equal(r1.labels, r2.labels));
  // Another split, another network, or changed data: another key.
  EXPECT_NE(reference_key(w.net, w.data, "test"), r1.key);
  FeatureNet other(test::tiny_classifier({"a", "b"}, 12, 1, w.data, 99));
  EXPECT_NE(reference_key(other, w.data, "train"), r1.key);
  EXPECT_FALSE(reference_set(other, w.data, "train", w.cache).from_cache);
  test::write_image_folder(w.data, {"a"}, 31, 12, 2);  // adds a.0030.png, rewrites others
  EXPECT_NE(reference_key(w.net, w.data, "train"), r1.key);
  EXPECT_FALSE(reference_set(w.net, w.data, "train", w.cache).from_cache);
  // A corrupt cache file is rebuilt, not trusted.
  auto r3 = reference_set(w.net, w.data, "train", w.cache);
  ASSERT_TRUE(r3.from_cache);
  std::ofstream(r3.cache_file, std::ios::trunc) << "garbage";
  EXPECT_FALSE(reference_set(w.net, w.data, "train", w.cache).from_cache);
  // No cache dir: nothing written.
  EXPECT_TRUE(reference_set(w.net, w.data, "test", "").cache_file.empty());
}

TEST(EvaluateImages, ReportsMetricsBesideTheFloor) {
  World w;
  std::string cands = w.tmp / "cands";
  test::write_image_folder(cands, {"a", "b"}, 15, 12, 5);
  EvalOptions o;
  o.cache_dir = w.cache;
  o.n = 0;
  o.metrics.kid.subsets = 10;
  std::vector<std::string> stages;
  o.progress = [&](const std::string& s, int64_t, int64_t) {
    if (stages.empty() || stages.back() != s) stages.push_back(s);
  };
  auto r = evaluate_images(cands, w.net, o);
  EXPECT_EQ(r.kind, "images");
  EXPECT_EQ(r.data, w.data);  // from the feature network
  EXPECT_EQ(r.samples.n, 30);
  EXPECT_EQ(r.reference_n, 54);
  EXPECT_EQ(r.floor.n, 6);  // every held-out image (fewer than n)
  for (double v : {r.samples.fid, r.samples.kid, r.samples.precision, r.samples.recall, r.samples.class_agreement,
                   r.floor.fid, r.floor.precision, r.floor.recall, r.floor.class_agreement})
    EXPECT_TRUE(std::isfinite(v));
  EXPECT_GE(r.samples.fid, 0);
  EXPECT_GE(r.samples.precision, 0);
  EXPECT_LE(r.samples.precision, 1);
  EXPECT_FALSE(stages.empty());
  auto j = nlohmann::json::parse(r.to_json());
  for (const char* k : {"samples", "real_floor", "fid_ratio", "classifier", "data", "reference"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_EQ(j["samples"]["n"].get<int64_t>(), 30);
  EXPECT_TRUE(j["samples"]["fid"].is_number());
  auto table = r.table();
  EXPECT_NE(table.find("FID"), std::string::npos);
  EXPECT_NE(table.find("precision (k=3)"), std::string::npos);
  EXPECT_NE(table.find("real floor"), std::string::npos);

  // A random subset of n, other sizes (resized), and no class subfolders: no class agreement.
  std::string flat = w.tmp / "flat";
  test::write_image_folder(flat, {""}, 12, 20, 6);
  o.n = 10;
  o.floor = false;
  auto f = evaluate_images(flat, w.net, o);
  EXPECT_EQ(f.samples.n, 10);
  EXPECT_TRUE(std::isnan(f.samples.class_agreement));
  EXPECT_FALSE(f.class_note.empty());
  EXPECT_EQ(f.floor.n, 0);
  EXPECT_TRUE(nlohmann::json::parse(f.to_json())["real_floor"].is_null());
  EXPECT_TRUE(nlohmann::json::parse(f.to_json())["samples"]["class_agreement"].is_null());
}

TEST(EvaluateImages, BadInput) {
  World w;
  EvalOptions o;
  o.cache_dir = "";
  std::filesystem::create_directories(w.tmp / "empty");
  EXPECT_THROW(evaluate_images(w.tmp / "empty", w.net, o), Error);
  EXPECT_THROW(evaluate_images(w.tmp / "missing", w.net, o), Error);
  std::string one = w.tmp / "one";
  test::write_image_folder(one, {""}, 1, 12);
  EXPECT_THROW(evaluate_images(one, w.net, o), Error);  // n < 2
  std::string cands = w.tmp / "cands";
  test::write_image_folder(cands, {""}, 5, 12);
  o.n = 1;
  EXPECT_THROW(evaluate_images(cands, w.net, o), Error);
  // A feature network that does not name its data needs opt.data.
  FeatureNet anon(test::tiny_classifier({"a", "b"}));
  o.n = 0;
  EXPECT_THROW(evaluate_images(cands, anon, o), Error);
  o.data = w.data;
  o.floor = false;
  o.metrics.kid.subsets = 2;
  EXPECT_NO_THROW(evaluate_images(cands, anon, o));
}

// A tiny class-conditional pixel pipeline (random weights) generating `size` px images.
PixelPipeline tiny_pipeline(int size, int channels, std::vector<std::string> classes) {
  torch::manual_seed(0);
  PixelPipeline p;
  p.net = DiffusionNet(UNet2DModel(test::tiny_unet_config(size, channels, static_cast<int>(classes.size()))));
  p.net.module().eval();
  p.class_names = std::move(classes);
  if (!p.class_names.empty()) p.null_class = static_cast<int64_t>(p.class_names.size());
  p.source = "tiny";
  return p;
}

TEST(EvaluatePipeline, ChecksCompatibilityBeforeGenerating) {
  World w;
  EXPECT_THROW(check_compatible(tiny_pipeline(12, 3, {}), w.net), Error);  // channels
  EXPECT_THROW(check_compatible(tiny_pipeline(24, 1, {}), w.net), Error);  // size
  EXPECT_NO_THROW(check_compatible(tiny_pipeline(12, 1, {}), w.net));
  FeatureNet net28(test::tiny_classifier({"a", "b"}, 28, 1, w.data));
  EXPECT_NO_THROW(check_compatible(tiny_pipeline(32, 1, {}), net28));  // centre-cropped
  EvalOptions o;
  o.n = 1;
  EXPECT_THROW(evaluate_pipeline(tiny_pipeline(12, 1, {}), w.net, o), Error);
  o.n = 4;
  try {
    evaluate_pipeline(tiny_pipeline(12, 3, {}), w.net, o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("channel"), std::string::npos) << e.what();
  }
}

TEST(EvaluatePipeline, ClassBalancedGenerationAndReport) {
  World w;
  auto pipe = tiny_pipeline(12, 1, {"b", "a"});  // the model's class order differs from the network's
  GenerateOptions g;
  g.steps = 2;
  g.batch_size = 4;
  std::vector<int64_t> cls;
  int64_t last = 0;
  auto images = generate_for_eval(pipe, g, 6, &cls, [&](const std::string&, int64_t d, int64_t) { last = d; });
  EXPECT_EQ(images.scalar_type(), torch::kUInt8);
  EXPECT_EQ(images.sizes(), (std::vector<int64_t>{6, 1, 12, 12}));
  EXPECT_EQ(cls, (std::vector<int64_t>{0, 1, 0, 1, 0, 1}));
  EXPECT_EQ(last, 6);
  // Chunking does not change the images: sample i always uses seed + i.
  g.batch_size = 6;
  EXPECT_TRUE(torch::equal(generate_for_eval(pipe, g, 6), images));

  EvalOptions o;
  o.n = 8;
  o.generate = g;
  o.cache_dir = w.cache;
  o.metrics.kid.subsets = 5;
  auto r = evaluate_pipeline(pipe, w.net, o);
  EXPECT_EQ(r.kind, "model");
  EXPECT_EQ(r.samples.n, 8);
  EXPECT_TRUE(r.conditional);
  EXPECT_TRUE(std::isfinite(r.samples.fid));
  EXPECT_TRUE(std::isfinite(r.samples.class_agreement));
  EXPECT_EQ(r.floor.n, 6);
  auto j = nlohmann::json::parse(r.to_json());
  EXPECT_EQ(j["steps"].get<int>(), 2);
  EXPECT_EQ(j["sampler"].get<std::string>(), g.sampler);

  auto stats = reference_stats(w.net, w.data, "train", w.cache);
  double q = quick_fid(pipe, w.net, stats, 8, g);
  EXPECT_NEAR(q, r.samples.fid, 1e-9);  // same samples (seed 0, class-balanced), same reference statistics
  EXPECT_THROW(quick_fid(pipe, w.net, stats, 1, g), Error);
}

}  // namespace
}  // namespace diffuse
