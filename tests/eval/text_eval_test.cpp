// Text-to-image evaluation: one image per held-out caption of emoji-captions, scored with the
// classes of the captions; a dataset without classes is refused. And the shipped
// models/emoji-text: its cut-down vocabulary and what it draws for names it never saw.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/image.h"
#include "eval/evaluate.h"
#include "fixtures.h"
#include "models/clip_tokenizer.h"
#include "sd_tiny_text.h"
#include "train/captioned.h"

namespace diffuse {
namespace {

TEST(TextEval, HeldOutCaptionsWithTheirClasses) {
  test::TempDir t;
  const SDPipeline pipe = load_sd(test::tiny_sd_folder(t / "sd"));
  const FeatureNet net = FeatureNet::load(test::source_path("models/emoji-classifier"));
  EvalOptions o;
  o.data = "emoji-captions";
  o.n = 6;
  o.cache_dir = "";
  o.floor = true;
  o.generate.steps = 2;
  o.generate.guidance = 2;
  o.generate.batch_size = 4;  // two batches: per-row captions and seeds across them
  o.metrics.compute_kid = false;
  o.metrics.compute_precision_recall = false;
  o.save_samples = t / "samples";
  const EvalReport r = evaluate_text_to_image(pipe, net, o);
  EXPECT_EQ(r.data, "emoji");  // the real images of the captions' dataset
  EXPECT_TRUE(r.conditional);
  EXPECT_EQ(r.samples.n, 6);
  EXPECT_TRUE(std::isfinite(r.samples.fid));
  EXPECT_TRUE(std::isfinite(r.samples.class_agreement));          // the captions' subgroups are the classifier's
  EXPECT_GT(r.floor.class_agreement, r.samples.class_agreement);  // a 16-px random model against real emoji
  // the samples, one folder per subgroup, each PNG with its caption ("name, subgroup") and seed
  int pngs = 0;
  for (const auto& f : std::filesystem::recursive_directory_iterator(t / "samples")) {
    if (f.path().extension() != ".png") continue;
    ++pngs;
    const std::string params = read_png_text(f.path().string()).at("parameters");
    const std::string subgroup = f.path().parent_path().filename().string();
    EXPECT_NE(params.find(", " + subgroup + "\n"), std::string::npos) << params;
    EXPECT_NE(params.find("Seed: " + std::to_string(std::stoi(f.path().stem().string()))), std::string::npos);
  }
  EXPECT_EQ(pngs, 6);

  o.data = "emoji";
  try {
    evaluate_text_to_image(pipe, net, o);
    FAIL() << "a dataset without captions was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--data emoji: a text-to-image model is scored on the held-out captions"),
              std::string::npos)
        << e.what();
  }
}

TEST(TextEval, ShippedEmojiTextKeepsClipsTokensAndDrawsHeldOutSubgroups) {
  const std::string dir = test::source_path("models/emoji-text");
  // Its tokenizer is CLIP's cut down to the training captions: they split into the same pieces.
  const auto shipped = CLIPTokenizer::from_folder(dir + "/tokenizer");
  const auto clip = CLIPTokenizer::builtin();
  CaptionedOptions co;
  co.resolution = 64;
  const CaptionedDataset train = load_captioned("emoji-captions", co);
  EXPECT_LT(shipped.vocab_size(), 4000);
  for (const auto& c : train.captions) ASSERT_EQ(shipped.tokens(c), clip.tokens(c)) << c;
  // Samples for held-out captions (names never seen) land in their subgroups far above chance (1 %).
  const SDPipeline pipe = load_sd(dir);
  const FeatureNet net = FeatureNet::load(test::source_path("models/emoji-classifier"));
  EvalOptions o;
  o.data = "emoji-captions";
  o.n = 32;
  o.cache_dir = "";
  o.floor = false;
  o.generate.steps = 12;
  o.generate.sampler = "dpm++2m";
  o.generate.guidance = 3;
  o.metrics.compute_kid = false;
  o.metrics.compute_precision_recall = false;
  const EvalReport r = evaluate_text_to_image(pipe, net, o);
  std::printf("models/emoji-text: subgroup agreement of 32 held-out captions %.3f, FID %.2f\n",
              r.samples.class_agreement, r.samples.fid);
  EXPECT_GE(r.samples.class_agreement, 0.2);  // 13 of 32 here; 68.7 % of all 364 at 20 steps; chance 1 %
}

}  // namespace
}  // namespace diffuse
