// Text-to-image from scratch: a tiny UNet2DConditionModel and CLIP text encoder learn coloured
// shapes from captions in the latent space of models/emoji-vae, and samples for a colour/shape
// combination never seen in training follow both words; the output is a StableDiffusionPipeline
// folder that loads like any SD model, and the tokenizer folder it writes is transformers' CLIP one.
#include "train/text_to_image.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/image.h"
#include "core/json_file.h"
#include "core/safetensors.h"
#include "fixtures.h"
#include "models/error_of.h"
#include "pipelines/sd_pipeline.h"
#include "sd_tiny_text.h"

namespace diffuse {
namespace {

namespace fs = std::filesystem;

struct ShapeColour {
  const char* name;
  uint8_t r, g, b;
};
const ShapeColour kShapeColours[] = {{"red", 220, 30, 30},    {"blue", 30, 30, 220},   {"green", 30, 170, 30},
                                     {"yellow", 230, 200, 0}, {"orange", 240, 130, 0}, {"black", 20, 20, 20}};

// A centred square or circle on white: large = side 20 / diameter 22, small = 10 / 11 (similar areas).
bool inside(const std::string& shape, bool large, int x, int y, int size) {
  const double c = (size - 1) / 2.0, dx = x - c, dy = y - c;
  if (shape == "square") {
    const double h = (large ? 20 : 10) / 2.0;
    return std::abs(dx) < h && std::abs(dy) < h;
  }
  const double r = (large ? 22 : 11) / 2.0;
  return dx * dx + dy * dy < r * r;
}

// Every colour x shape x size except the held-out blue squares (a pair never seen), 32x32, captioned "a large red
// square".
std::string write_shapes(const std::string& dir) {
  fs::create_directories(dir);
  const int s = 32;
  for (const auto& c : kShapeColours)
    for (const std::string shape : {"square", "circle"})
      for (bool large : {false, true}) {
        if (std::string(c.name) == "blue" && shape == "square") continue;
        Image img{s, s, 3, std::vector<uint8_t>(s * s * 3, 255)};
        for (int y = 0; y < s; ++y)
          for (int x = 0; x < s; ++x)
            if (inside(shape, large, x, y, s)) {
              const size_t p = static_cast<size_t>((y * s + x) * 3);
              img.data[p] = c.r;
              img.data[p + 1] = c.g;
              img.data[p + 2] = c.b;
            }
        const std::string stem = dir + "/" + c.name + "_" + shape + (large ? "_large" : "_small");
        write_png(stem + ".png", img);
        std::ofstream(stem + ".txt") << "a " << (large ? "large " : "small ") << c.name << " " << shape;
      }
  return dir;
}

// The colour (the nearest of kShapeColours) and shape of a sample [3, H, W] in [-1, 1]: the mean
// of the pixels far from white, and the template (square / circle, small / large) of best IoU with them.
std::pair<std::string, std::string> classify(const torch::Tensor& img) {
  auto x = (img.clamp(-1, 1) + 1) / 2;           // [0, 1]
  auto fg = (1 - std::get<0>(x.min(0))) > 0.35;  // [H, W]
  const int64_t n = fg.sum().item<int64_t>();
  if (n == 0) return {"none", "empty"};
  auto mean = (x * fg.unsqueeze(0)).sum({1, 2}) / static_cast<double>(n) * 255;
  std::string colour;
  double nearest = 1e30;
  for (const auto& c : kShapeColours) {
    const double d = (mean - torch::tensor({double(c.r), double(c.g), double(c.b)})).pow(2).sum().item<double>();
    if (d < nearest) {
      nearest = d;
      colour = c.name;
    }
  }
  const int s = static_cast<int>(img.size(1));
  double best = -1;
  std::string shape;
  for (const std::string sh : {"square", "circle"})
    for (bool large : {false, true}) {
      auto tmpl = torch::zeros({s, s}, torch::kBool);
      for (int y = 0; y < s; ++y)
        for (int xx = 0; xx < s; ++xx) tmpl[y][xx] = inside(sh, large, xx, y, s);
      const double inter = (tmpl & fg).sum().item<double>(), uni = (tmpl | fg).sum().item<double>();
      if (inter / uni > best) {
        best = inter / uni;
        shape = sh;
      }
    }
  return {colour, shape};
}

TEST(TextToImage, TokenizerFolderIsTransformersClipVocabulary) {
  test::TempDir dir;
  write_clip_tokenizer_folder(dir / "tok", test::source_path("models/clip/bpe_simple_vocab_16e6.txt.gz"));
  EXPECT_EQ(read_json_file(dir / "tok/vocab.json"), read_json_file(test::fixture("clip_vocab/vocab.json")));
  auto lines = [](const std::string& path) {
    std::ifstream f(path);
    std::vector<std::string> v;
    for (std::string l; std::getline(f, l);)
      if (!l.empty()) v.push_back(l);
    return v;
  };
  const auto ours = lines(dir / "tok/merges.txt"), ref = lines(test::fixture("clip_vocab/merges.txt"));
  EXPECT_EQ(ours.size(), 48895u);
  EXPECT_TRUE(ours == ref);
  auto tok = CLIPTokenizer::from_folder(dir / "tok");
  EXPECT_EQ(tok.tokenize("a large blue square", 8, true),
            CLIPTokenizer::builtin().tokenize("a large blue square", 8, true));
}

TEST(TextToImage, LearnsColourAndShapeAndComposesAHeldOutPair) {
  test::TempDir dir;
  TextToImageOptions o;
  o.train.data = write_shapes(dir / "shapes");
  o.train.out = dir / "t2i";
  o.train.latent = test::source_path("models/emoji-vae");
  o.train.config = "t2i-tiny";
  o.train.image_size = 32;
  o.train.steps = 600;
  o.train.batch = 16;
  o.train.lr = 2e-3;
  o.train.warmup = 50;
  o.train.ema_decay = 0.99;
  o.train.save_every = 0;
  o.train.sample_every = 0;
  o.train.quiet = true;
  o.train.device = "cpu";
  o.caption_dropout = 0.1;
  auto r = train_text_to_image(o);
  EXPECT_EQ(r.steps, 600);
  for (const char* f : {"model_index.json", "unet/config.json", "text_encoder/model.safetensors",
                        "tokenizer/vocab.json", "vae/config.json", "scheduler/scheduler_config.json", "loss.png"})
    EXPECT_TRUE(fs::exists(dir / ("t2i/" + std::string(f)))) << f;
  auto pipe = SDPipeline::load(dir / "t2i");
  int ok_colour = 0, ok_shape = 0, total = 0;
  std::vector<torch::Tensor> grid;
  for (const std::string prompt : {"a large blue square", "a small blue square", "a large red square"}) {
    SDOptions g;
    g.prompt = prompt;
    g.n = 6;
    g.batch_size = 6;
    g.guidance = 4;
    g.steps = 20;
    g.sampler = "euler";
    g.seed = 7;
    auto samples = generate(pipe, g).samples;
    grid.push_back(samples);
    const std::string want_colour = prompt.find("blue") != std::string::npos ? "blue" : "red";
    const std::string want_shape = prompt.find("square") != std::string::npos ? "square" : "circle";
    for (int64_t i = 0; i < samples.size(0); ++i) {
      auto [colour, shape] = classify(samples[i]);
      std::printf("%s #%lld: %s %s\n", prompt.c_str(), static_cast<long long>(i), colour.c_str(), shape.c_str());
      if (prompt.find("blue square") == std::string::npos) continue;
      ok_colour += colour == want_colour;
      ok_shape += shape == want_shape;
      ++total;
    }
  }
  if (const char* keep = std::getenv("DIFFUSE_T2I_SAMPLES"))  // a grid of the samples, one row per prompt
    write_png(keep, to_image(make_grid(torch::cat(grid).clamp(-1, 1), 6)));
  std::printf("held-out 'blue square': colour %d/%d, shape %d/%d (loss %.4f, %.1f s)\n", ok_colour, total, ok_shape,
              total, r.final_loss, r.seconds);
  EXPECT_GE(ok_colour, 9);  // of 12; chance: 2 of 12 (six colours), 6 of 12 (two shapes)
  EXPECT_GE(ok_shape, 9);
}

}  // namespace
}  // namespace diffuse

namespace diffuse {
namespace {

TextToImageOptions short_t2i_run(const test::TempDir& dir, const std::string& out, int64_t steps) {
  TextToImageOptions o;
  o.train.data = fs::exists(dir / "shapes") ? dir / "shapes" : write_shapes(dir / "shapes");
  o.train.out = dir / out;
  o.train.latent = test::source_path("models/emoji-vae");
  o.train.config = "t2i-tiny";
  o.train.image_size = 32;
  o.train.steps = steps;
  o.train.batch = 4;
  o.train.lr = 1e-3;
  o.train.warmup = 2;
  o.train.save_every = 0;
  o.train.sample_every = 0;
  o.train.quiet = true;
  o.train.device = "cpu";
  o.caption_dropout = 0.3;
  return o;
}

TEST(TextToImage, ResumeIsBitExact) {
  test::TempDir dir;
  train_text_to_image(short_t2i_run(dir, "straight", 4));
  train_text_to_image(short_t2i_run(dir, "resumed", 2));
  auto o = short_t2i_run(dir, "resumed", 4);
  o.train.resume = true;
  EXPECT_EQ(train_text_to_image(o).steps, 4);
  for (const char* f :
       {"checkpoint/model.safetensors", "checkpoint/ema.safetensors", "checkpoint/optimizer.safetensors",
        "unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"}) {
    const auto a = safetensors::load(dir / ("straight/" + std::string(f)));
    const auto b = safetensors::load(dir / ("resumed/" + std::string(f)));
    ASSERT_EQ(a.size(), b.size()) << f;
    for (const auto& [k, v] : a) EXPECT_TRUE(torch::equal(v, b.at(k))) << f << " " << k;
  }
  o.caption_dropout = 0.5;
  EXPECT_NE(test::error_of([&] { train_text_to_image(o); }).find("different --caption_dropout"), std::string::npos);
}

TEST(TextToImage, FrozenTextEncoderFromAPipelineFolderAndClearErrors) {
  test::TempDir dir;
  auto o = short_t2i_run(dir, "frozen", 2);
  o.text_encoder = test::tiny_sd_folder(dir / "sd");  // 32 wide, its own (cut) tokenizer
  train_text_to_image(o);
  const auto trained = safetensors::load(dir / "frozen/text_encoder/model.safetensors");
  const auto given = safetensors::load(test::fixture("sd_pipeline_tiny/text_encoder/model.safetensors"));
  ASSERT_GE(trained.size(), 20u);
  for (const auto& [k, v] : trained) {
    ASSERT_TRUE(given.count(k)) << k;
    EXPECT_TRUE(torch::equal(given.at(k), v)) << k;  // frozen
  }
  EXPECT_EQ(read_json_file(dir / "frozen/tokenizer/vocab.json"), read_json_file(dir / "sd/tokenizer/vocab.json"));
  EXPECT_EQ(read_json_file(dir / "frozen/unet/config.json")["cross_attention_dim"], 32);
  auto pipe = SDPipeline::load(dir / "frozen");
  SDOptions g;
  g.prompt = "a red square";
  g.steps = 2;
  EXPECT_EQ(generate(pipe, g).samples.sizes(), (std::vector<int64_t>{1, 3, 32, 32}));

  auto bad = short_t2i_run(dir, "bad", 1);
  bad.train.latent.clear();
  EXPECT_NE(test::error_of([&] { train_text_to_image(bad); }).find("--latent is required"), std::string::npos);
  bad = short_t2i_run(dir, "bad", 1);
  bad.text_encoder = "clip-huge";
  EXPECT_NE(test::error_of([&] { train_text_to_image(bad); }).find("not a preset"), std::string::npos);
  bad = short_t2i_run(dir, "bad", 1);
  bad.train.image_size = 36;
  EXPECT_NE(test::error_of([&] { train_text_to_image(bad); }).find("must be a multiple of 8"), std::string::npos);
}

TEST(TextToImage, VocabularyOfTheCaptionsOrReducedAfterwards) {
  test::TempDir dir;
  // Default: the captions' tokens only.
  train_text_to_image(short_t2i_run(dir, "captions", 2));
  const auto cfg = read_json_file(dir / "captions/text_encoder/config.json");
  const auto tok = CLIPTokenizer::from_folder(dir / "captions/tokenizer");
  EXPECT_EQ(cfg["vocab_size"], tok.vocab_size());
  EXPECT_LT(tok.vocab_size(), 600);  // 512 byte symbols, a few words, 2 specials
  EXPECT_EQ(cfg["eos_token_id"], tok.eos_id());
  EXPECT_EQ(read_json_file(dir / "captions/train_config.json")["vocabulary"], "captions");
  auto o = short_t2i_run(dir, "captions", 3);
  o.train.resume = true;
  o.vocabulary = "clip";
  EXPECT_NE(test::error_of([&] { train_text_to_image(o); }).find("different --vocab"), std::string::npos);

  // --vocab clip, then reduce-vocab: the training captions encode exactly as before.
  o = short_t2i_run(dir, "clip", 2);
  o.vocabulary = "clip";
  train_text_to_image(o);
  EXPECT_EQ(read_json_file(dir / "clip/text_encoder/config.json")["vocab_size"], 49408);
  const auto [before, after] = reduce_pipeline_vocabulary(dir / "clip", dir / "shapes", dir / "small");
  EXPECT_EQ(before, 49408);
  EXPECT_EQ(after, tok.vocab_size());
  auto a = SDPipeline::load(dir / "clip"), b = SDPipeline::load(dir / "small");
  EXPECT_LT(fs::file_size(dir / "small/text_encoder/model.safetensors"),
            fs::file_size(dir / "clip/text_encoder/model.safetensors") / 4);
  SDOptions g;
  g.prompt = "a large red square";  // a training caption
  g.steps = 3;
  EXPECT_TRUE(torch::equal(generate(a, g).samples, generate(b, g).samples));
  // Both vocabularies train the same network: the reduced clip run is the captions run.
  for (const char* f : {"unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"}) {
    const auto x = safetensors::load(dir / ("captions/" + std::string(f)));
    const auto y = safetensors::load(dir / ("small/" + std::string(f)));
    ASSERT_EQ(x.size(), y.size()) << f;
    for (const auto& [k, v] : x) EXPECT_TRUE(torch::allclose(v, y.at(k), 1e-5, 1e-6)) << f << " " << k;
  }
  EXPECT_NE(test::error_of([&] {
              reduce_pipeline_vocabulary(dir / "clip", dir / "shapes", dir / "small");
            }).find("already exists"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] {
              reduce_pipeline_vocabulary(dir / "shapes", dir / "shapes", dir / "x");
            }).find("not a StableDiffusionPipeline folder"),
            std::string::npos);
  auto bad = short_t2i_run(dir, "bad", 1);
  bad.text_encoder = test::tiny_sd_folder(dir / "sd");
  bad.vocabulary = "captions";
  EXPECT_NE(test::error_of([&] { train_text_to_image(bad); }).find("--vocab: only for"), std::string::npos);
}

}  // namespace
}  // namespace diffuse
