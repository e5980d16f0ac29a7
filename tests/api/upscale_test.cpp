// diffuse::Upscaler and `diffuse upscale` over the shipped models/fashion-mnist-sr: errors by field,
// channel conversion, and bad input on the command line (one clear error, no output file).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "api/names_field.h"
#include "cli/run_cli.h"
#include "core/image.h"
#include "diffuse/diffuse.h"
#include "fixtures.h"

namespace diffuse {
namespace {

namespace fs = std::filesystem;
using test::names;
using test::TempDir;

std::string sr_dir() { return test::source_path("models/fashion-mnist-sr"); }

const Upscaler& up() {
  static const Upscaler u = Upscaler::load(sr_dir());
  return u;
}

UpscaleRequest grey_request(int size = 14) {
  UpscaleRequest r;
  r.image = torch::linspace(-1, 1, size * size).view({1, size, size});
  r.steps = 4;
  return r;
}

TEST(Upscaler, InfoAndOutput) {
  const auto& i = up().info();
  EXPECT_EQ(i.scale, 2);
  EXPECT_EQ(i.low_resolution_size, 14);
  EXPECT_EQ(i.high_resolution_size, 28);
  EXPECT_EQ(i.channels, 1);
  EXPECT_EQ(i.downsample, "area");
  auto res = up().upscale(grey_request());
  EXPECT_EQ(res.image.sizes(), torch::IntArrayRef({1, 28, 28}));
  EXPECT_EQ(res.request.scale, 2);
  EXPECT_NE(res.infotext.find("Upscale: 2"), std::string::npos);
  EXPECT_NE(res.infotext.find("Seed: 0"), std::string::npos);
  // The same request gives the same pixels; another seed other ones.
  EXPECT_TRUE(torch::equal(up().upscale(grey_request()).image, res.image));
  auto other = grey_request();
  other.seed = 5;
  EXPECT_FALSE(torch::equal(up().upscale(other).image, res.image));
}

TEST(Upscaler, ErrorsNameTheirFields) {
  auto r = grey_request();
  r.scale = 4;
  auto e = up().validate(r);
  ASSERT_TRUE(names(e, "scale"));
  EXPECT_NE(e[0].message.find("trained for scale 2 only"), std::string::npos);
  EXPECT_THROW(up().upscale(r), RequestError);

  r = grey_request();
  r.image = torch::zeros({3, 14, 14});
  e = up().validate(r);
  ASSERT_TRUE(names(e, "image"));
  EXPECT_NE(e[0].message.find("expects 1 (grey)"), std::string::npos) << e[0].message;
  r.convert_channels = true;  // RGB -> grey by luma
  EXPECT_TRUE(up().validate(r).empty());
  EXPECT_EQ(up().upscale(r).image.sizes(), torch::IntArrayRef({1, 28, 28}));

  r = grey_request();
  r.steps = 0;
  r.sampler = "nope";
  r.tile_overlap = 15;
  r.image = torch::Tensor();
  e = up().validate(r);
  for (const char* f : {"steps", "sampler", "tile_overlap", "image"}) EXPECT_TRUE(names(e, f)) << f;
}

TEST(Upscaler, OtherModelsAreRefusedEachWay) {
  try {
    Upscaler::load(test::source_path("models/fashion-mnist"));
    FAIL() << "a generation model loaded as an upscaler";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a super-resolution model"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(is_upscaler(test::source_path("models/fashion-mnist")));
  EXPECT_TRUE(is_upscaler(sr_dir()));
  try {
    Model::load(sr_dir());
    FAIL() << "a super-resolution model loaded for generation";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("super-resolution model"), std::string::npos) << e.what();
  }
}

TEST(UpscaleCli, WritesThePngWithItsParameters) {
  TempDir dir;
  write_png(dir / "in.png", to_image(grey_request().image));
  auto r = test::run_cli("upscale --model " + sr_dir() + " --image " + (dir / "in.png") + " --out " +
                         (dir / "out.png") + " --steps 4 --seed 3 --threads 1");
  ASSERT_EQ(r.code, 0) << r.output;
  auto img = read_image(dir / "out.png");
  EXPECT_EQ(img.width, 28);
  EXPECT_EQ(img.height, 28);
  EXPECT_EQ(img.channels, 1);
  const auto params = read_png_text(dir / "out.png").at("parameters");
  EXPECT_NE(params.find("Upscale: 2, Steps: 4"), std::string::npos) << params;
  EXPECT_NE(params.find("Seed: 3"), std::string::npos) << params;
}

TEST(UpscaleCli, BadInputGivesOneClearErrorAndNoFile) {
  TempDir dir;
  write_png(dir / "grey.png", to_image(grey_request().image));
  write_png(dir / "rgb.png", to_image(torch::zeros({3, 14, 14})));
  std::ofstream(dir / "corrupt.png") << "\x89PNG\r\n\x1a\n not really";
  const std::string out = dir / "out.png";
  struct Case {
    std::string args, expect;
  };
  const Case cases[] = {
      {"--model " + sr_dir() + " --image " + (dir / "grey.png") + " --scale 4", "--scale: 4: this model was trained"},
      {"--model " + sr_dir() + " --image " + (dir / "rgb.png"),
       "--image: has 3 (RGB) channels but the model expects 1"},
      {"--model " + test::source_path("models/fashion-mnist") + " --image " + (dir / "grey.png"),
       "not a super-resolution model"},
      {"--model " + sr_dir() + " --image " + (dir / "corrupt.png"), "corrupt.png"},
  };
  for (const auto& c : cases) {
    auto r = test::run_cli("upscale " + c.args + " --out " + out + " --steps 2 --threads 1");
    EXPECT_EQ(r.code, 1) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find("error: "), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(c.expect), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(out)) << c.args;
  }
  // With --convert an RGB image is upscaled as grey.
  auto r = test::run_cli("upscale --model " + sr_dir() + " --image " + (dir / "rgb.png") + " --convert --out " + out +
                         " --steps 2 --threads 1");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(read_image(out).channels, 1);
}

}  // namespace
}  // namespace diffuse
