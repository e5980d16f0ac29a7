#include "eval/evaluate.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/image.h"
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
  // The mean term is part of the FID: between 0 and the whole when the covariance term is non-negative.
  EXPECT_GE(r.samples.fid_mean, 0);
  EXPECT_LE(r.samples.fid_mean, r.samples.fid + 1e-9);
  EXPECT_DOUBLE_EQ(j["samples"]["fid_mean_term"].get<double>(), r.samples.fid_mean);
  auto table = r.table();
  EXPECT_NE(table.find("(mean term)"), std::string::npos);
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

TEST(EvaluatePipeline, ShardedGenerationGathersTheSameSamples) {
  World w;
  auto pipe = tiny_pipeline(12, 1, {"b", "a"});
  GenerateOptions g;
  g.steps = 2;
  g.batch_size = 3;
  const auto whole = generate_for_eval(pipe, g, 8);
  // Chunks 0 and 2 (images 0-2, 6-7) on shard 0, chunk 1 (images 3-5) on shard 1; the rest zero.
  std::vector<torch::Tensor> parts;
  for (int shard = 0; shard < 2; ++shard) {
    GenerateOptions s = g;
    s.shard = shard;
    s.shards = 2;
    parts.push_back(generate_for_eval(pipe, s, 8));
  }
  EXPECT_TRUE(torch::equal(parts[0].slice(0, 0, 3), whole.slice(0, 0, 3)));
  EXPECT_TRUE(torch::equal(parts[0].slice(0, 6, 8), whole.slice(0, 6, 8)));
  EXPECT_EQ(parts[0].slice(0, 3, 6).max().item<int>(), 0);
  EXPECT_TRUE(torch::equal(parts[1].slice(0, 3, 6), whole.slice(0, 3, 6)));
  EXPECT_EQ(parts[1].slice(0, 0, 3).max().item<int>() + parts[1].slice(0, 6, 8).max().item<int>(), 0);

  // The gathered samples score as the unsharded ones; a process that only generates gets no report.
  EvalOptions o;
  o.n = 8;
  o.generate = g;
  o.cache_dir = w.cache;
  o.metrics.kid.subsets = 5;
  const auto plain = evaluate_pipeline(pipe, w.net, o);
  o.generate.shard = 1;
  o.generate.shards = 2;
  torch::Tensor seen;
  o.gather = [&](const torch::Tensor& mine) {
    seen = mine;
    return torch::Tensor();
  };
  const auto helper = evaluate_pipeline(pipe, w.net, o);
  EXPECT_TRUE(torch::equal(seen, parts[1]));
  EXPECT_EQ(helper.samples.n, 0);
  EXPECT_TRUE(std::isnan(helper.samples.fid));
  o.generate.shard = 0;
  o.gather = [&](const torch::Tensor& mine) { return mine + parts[1]; };
  const auto gathered = evaluate_pipeline(pipe, w.net, o);
  EXPECT_EQ(gathered.samples.n, 8);
  EXPECT_EQ(gathered.samples.fid, plain.samples.fid);
  EXPECT_EQ(gathered.samples.class_agreement, plain.samples.class_agreement);
  EXPECT_EQ(gathered.generate.shards, 1);
  o.generate.shard = 2;
  EXPECT_THROW(evaluate_pipeline(pipe, w.net, o), Error);
}

// A labelled reference set whose class k has features N(3k, 1) and logits favouring class k.
ReferenceSet gaussian_classes(int64_t per_class, int classes, int64_t dim, uint64_t seed) {
  torch::manual_seed(seed);
  ReferenceSet r;
  r.data = "gaussians";
  std::vector<torch::Tensor> f, l;
  for (int k = 0; k < classes; ++k) {
    f.push_back(torch::randn({per_class, dim}) + 3.0 * k);
    l.push_back(torch::full({per_class}, k, torch::kInt64));
  }
  r.features = torch::cat(f);
  r.labels = torch::cat(l);
  r.logits = torch::nn::functional::one_hot(r.labels, classes).to(torch::kFloat32);
  r.stats = feature_stats(r.features);
  return r;
}

TEST(PerClass, MetricsMatchTheirOracle) {
  auto ref = gaussian_classes(400, 3, 4, 1);
  auto test_set = gaussian_classes(50, 3, 4, 2);
  // 30 samples asked for class 0 drawn from class 0; 20 asked for class 1 drawn from class 2's
  // region (so the classifier's logits say 2); none asked for class 2.
  auto from0 = torch::randn({30, 4});
  auto from2 = torch::randn({20, 4}) + 6.0;
  Embedding e{torch::cat({from0, from2}),
              torch::cat({torch::nn::functional::one_hot(torch::zeros({30}, torch::kInt64), 3),
                          torch::nn::functional::one_hot(torch::full({20}, 2, torch::kInt64), 3)})
                  .to(torch::kFloat32)};
  auto wanted = torch::cat({torch::zeros({30}, torch::kInt64), torch::ones({20}, torch::kInt64)});
  auto pc = per_class_metrics(e, wanted, ref, {"zero", "", "two"}, &test_set, 0);
  ASSERT_EQ(pc.size(), 3u);
  auto class_stats = [&](int64_t k) { return feature_stats(ref.features.index({ref.labels.eq(k)})); };
  EXPECT_EQ(pc[0].name, "zero");
  EXPECT_EQ(pc[1].name, "1");  // unnamed: its id
  EXPECT_EQ(pc[0].n, 30);
  EXPECT_EQ(pc[1].n, 20);
  EXPECT_EQ(pc[2].n, 0);
  EXPECT_NEAR(pc[0].fid, frechet_distance(feature_stats(from0), class_stats(0)), 1e-9);
  EXPECT_NEAR(pc[1].fid, frechet_distance(feature_stats(from2), class_stats(1)), 1e-9);
  EXPECT_GT(pc[1].fid, 4 * 9.0 * 0.8);  // means 3 apart in each of 4 dimensions: about 36
  EXPECT_DOUBLE_EQ(pc[0].class_agreement, 1.0);
  EXPECT_DOUBLE_EQ(pc[1].class_agreement, 0.0);
  EXPECT_TRUE(std::isnan(pc[2].fid));
  EXPECT_TRUE(std::isnan(pc[2].class_agreement));
  // The floor draws as many held-out images of the class as there are samples (all 50 when more).
  EXPECT_EQ(pc[0].floor_n, 30);
  EXPECT_EQ(pc[1].floor_n, 20);
  EXPECT_EQ(pc[2].floor_n, 0);
  EXPECT_DOUBLE_EQ(pc[1].floor_class_agreement, 1.0);
  EXPECT_LT(pc[1].floor_fid, 3.0);  // real class-1 images are near class 1
  EXPECT_GT(pc[1].fid_ratio(), 10.0);
  auto many = per_class_metrics(Embedding{torch::randn({70, 4}), e.logits.narrow(0, 0, 1).expand({70, 3})},
                                torch::zeros({70}, torch::kInt64), ref, {"a", "b", "c"}, &test_set, 0);
  EXPECT_EQ(many[0].floor_n, 50);
  // Without a held-out set: no floor columns.
  auto bare = per_class_metrics(e, wanted, ref, {"a", "b", "c"});
  EXPECT_EQ(bare[0].floor_n, 0);
  EXPECT_TRUE(std::isnan(bare[0].floor_fid));
  EXPECT_DOUBLE_EQ(bare[0].fid, pc[0].fid);
  // Bad input.
  EXPECT_THROW(per_class_metrics(e, wanted.narrow(0, 0, 10), ref, {"a"}), Error);
  ReferenceSet unlabelled = ref;
  unlabelled.labels = torch::Tensor();
  EXPECT_THROW(per_class_metrics(e, wanted, unlabelled, {"a"}), Error);
}

TEST(EvaluatePipeline, SavedSamplesScoreTheSameAsTheModel) {
  World w;
  auto pipe = tiny_pipeline(12, 1, {"b", "a"});
  EvalOptions o;
  o.n = 10;
  o.generate.steps = 2;
  o.generate.seed = 5;
  o.cache_dir = w.cache;
  o.metrics.kid.subsets = 5;
  o.per_class = true;
  o.save_samples = w.tmp / "out/samples";
  auto r = evaluate_pipeline(pipe, w.net, o);
  EXPECT_EQ(r.samples_dir, o.save_samples);
  ASSERT_EQ(r.per_class.size(), 2u);
  EXPECT_EQ(r.per_class[0].name, "a");
  EXPECT_EQ(r.per_class[0].n + r.per_class[1].n, 10);
  // Sample i has class i mod 2 of the model ("b" first) and seed 5 + i.
  auto p6 = read_png_text(w.tmp / "out/samples/b/000006.png");
  EXPECT_NE(p6["parameters"].find("Seed: 11,"), std::string::npos) << p6["parameters"];
  EXPECT_EQ(p6["parameters"].rfind("b\n", 0), 0u) << p6["parameters"];
  EXPECT_TRUE(std::filesystem::exists(w.tmp / "out/samples/a/000009.png"));
  int files = 0;
  for (const auto& f : std::filesystem::recursive_directory_iterator(w.tmp / "out"))
    files += f.is_regular_file() ? 1 : 0;
  EXPECT_EQ(files, 10);  // nothing else left behind
  auto j = nlohmann::json::parse(r.to_json());
  EXPECT_EQ(j["per_class"].size(), 2u);
  EXPECT_EQ(j["per_class"][0]["class"].get<std::string>(), "a");
  EXPECT_TRUE(j["per_class"][0]["real_floor"]["fid"].is_number());
  EXPECT_EQ(j["samples_dir"].get<std::string>(), o.save_samples);
  EXPECT_NE(r.table().find("per class"), std::string::npos);

  // Scoring the saved folder gives the same numbers.
  EvalOptions io = o;
  io.n = 0;
  io.save_samples.clear();
  auto back = evaluate_images(o.save_samples, w.net, io);
  EXPECT_EQ(back.samples.n, 10);
  EXPECT_NEAR(back.samples.fid, r.samples.fid, 1e-6);
  EXPECT_DOUBLE_EQ(back.samples.class_agreement, r.samples.class_agreement);
  ASSERT_EQ(back.per_class.size(), 2u);
  for (size_t k = 0; k < 2; ++k) {
    EXPECT_EQ(back.per_class[k].n, r.per_class[k].n);
    EXPECT_NEAR(back.per_class[k].fid, r.per_class[k].fid, 1e-6);
    EXPECT_EQ(back.per_class[k].floor_n, r.per_class[k].floor_n);  // held-out: 5 of class a, 1 of b
    if (r.per_class[k].floor_n >= 2)
      EXPECT_NEAR(back.per_class[k].floor_fid, r.per_class[k].floor_fid, 1e-9);
    else
      EXPECT_TRUE(std::isnan(back.per_class[k].floor_fid) && std::isnan(r.per_class[k].floor_fid));
  }

  // The folder now holds images: refused before generating; so is a file.
  int calls = 0;
  o.generate.callback = [&](const StepInfo&) { ++calls; };
  EXPECT_THROW(evaluate_pipeline(pipe, w.net, o), Error);
  o.save_samples = w.tmp / "out/samples/a/000009.png";
  EXPECT_THROW(evaluate_pipeline(pipe, w.net, o), Error);
  EXPECT_EQ(calls, 0);
  // An empty folder is fine.
  std::filesystem::create_directories(w.tmp / "empty");
  o.save_samples = w.tmp / "empty";
  o.generate.callback = nullptr;
  o.per_class = false;
  o.floor = false;
  EXPECT_NO_THROW(evaluate_pipeline(pipe, w.net, o));
  EXPECT_TRUE(std::filesystem::exists(w.tmp / "empty/a/000001.png"));
  EXPECT_THROW(save_eval_samples(w.tmp / "new", torch::zeros({2, 1, 4, 4}, torch::kUInt8), pipe, o.generate, {0}),
               Error);  // one class for two images
  EXPECT_FALSE(std::filesystem::exists(w.tmp / "new"));
}

}  // namespace
}  // namespace diffuse
