// Editing through the public API and the CLI with the shipped class-conditional model: img2img,
// inpainting and outpainting from encoded images, class transfer by inversion, the parameters
// they write, and one clear error (no output file) for each kind of bad input.
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

std::string edit_fashion_dir() { return test::source_path("models/fashion-mnist"); }

const Model& edit_fashion() {
  static const Model m = Model::load(edit_fashion_dir());
  return m;
}

GenerationRequest base() {
  GenerationRequest r;
  r.class_label = "sneaker";
  r.n = 1;
  r.steps = 8;
  r.guidance = 1;
  r.seed = 4;
  return r;
}

// A generated sneaker, as PNG bytes and as the tensor the PNG holds.
std::pair<std::string, torch::Tensor> sneaker() {
  static auto img = edit_fashion().generate(base()).images[0];
  const std::string png = encode_image(img, "png");
  return {png, decode_image(png, 1, "test")};
}

std::string mask_png(int w, int h, int from_x, uint8_t value = 255) {
  Image m{w, h, 1, std::vector<uint8_t>(static_cast<size_t>(w) * h, 0)};
  for (int y = 0; y < h; ++y)
    for (int x = from_x; x < w; ++x) m.data[static_cast<size_t>(y) * w + x] = value;
  return encode_png(m);
}

TEST(Edit, Img2ImgStrengthZeroAndOne) {
  auto [png, img] = sneaker();
  GenerationRequest r = base();
  r.init_image = png;
  r.strength = 0;
  auto same = edit_fashion().generate(r);
  EXPECT_TRUE(torch::equal(same.images[0], img));
  EXPECT_NE(same.infotexts[0].find("Denoising strength: 0"), std::string::npos) << same.infotexts[0];
  r.strength = 1;
  GenerationRequest plain = base();
  EXPECT_TRUE(torch::equal(edit_fashion().generate(r).images, edit_fashion().generate(plain).images));
}

TEST(Edit, InpaintingKeepsTheUnmaskedHalfAndSaysHow) {
  auto [png, img] = sneaker();
  GenerationRequest r = base();
  r.init_image = png;
  r.mask = mask_png(28, 28, 14);
  r.jump_length = 2;
  r.jump_n_sample = 2;
  r.seed = 9;
  auto res = edit_fashion().generate(r);
  auto out = res.images[0];
  EXPECT_TRUE(torch::equal(out.slice(2, 0, 14), img.slice(2, 0, 14)));
  EXPECT_GT((out.slice(2, 14) - img.slice(2, 14)).abs().mean().item<double>(), 0.01);
  const std::string& info = res.infotexts[0];
  EXPECT_NE(info.find("Inpaint method: repaint"), std::string::npos) << info;
  EXPECT_NE(info.find("RePaint jumps: 2x2"), std::string::npos) << info;
  // the parameters run it again (with the same images)
  GenerationRequest again = GenerationRequest::from_infotext(info);
  again.init_image = r.init_image;
  again.mask = r.mask;
  again.n = 1;  // counts are not part of an image's parameters
  EXPECT_TRUE(torch::equal(edit_fashion().generate(again).images[0], out));
}

TEST(Edit, OutpaintingExtendsTheCanvas) {
  auto [png, img] = sneaker();
  GenerationRequest r = base();
  r.init_image = png;
  r.outpaint = {8, 0, 4, 4};
  r.inpaint_method = "blend";
  auto out = edit_fashion().generate(r).images[0];
  ASSERT_EQ(out.sizes(), torch::IntArrayRef({1, 32, 40}));
  EXPECT_TRUE(torch::equal(out.slice(1, 0, 28).slice(2, 8, 36), img));
  r.outpaint = {1, 0, 0, 0};  // 29 wide: not a multiple of 4
  try {
    edit_fashion().generate(r);
    FAIL() << "accepted";
  } catch (const RequestError& e) {
    EXPECT_TRUE(test::names(e.errors, "outpaint")) << e.what();
  }
}

TEST(Edit, ClassTransferByInversion) {
  auto [png, img] = sneaker();
  GenerationRequest r = base();
  r.init_image = png;
  r.invert_from = "sneaker";
  r.strength = 1;
  r.sampler = "euler";
  r.steps = 12;
  auto same = edit_fashion().generate(r).images[0];
  r.class_label = "sandal";
  auto sandal = edit_fashion().generate(r);
  EXPECT_LT((same - img).abs().mean().item<double>(), (sandal.images[0] - img).abs().mean().item<double>());
  EXPECT_NE(sandal.infotexts[0].find("Invert from: sneaker"), std::string::npos);
}

TEST(Edit, BadInputNamesTheField) {
  auto [png, img] = sneaker();
  auto field_of = [](const GenerationRequest& r) {
    try {
      edit_fashion().generate(r);
    } catch (const RequestError& e) {
      return e.errors.at(0).field;
    }
    return std::string("(accepted)");
  };
  GenerationRequest r = base();
  r.init_image = png;
  r.mask = mask_png(20, 20, 10);
  EXPECT_EQ(field_of(r), "mask");  // another size than the image
  Image colour{28, 28, 3, std::vector<uint8_t>(28 * 28 * 3, 0)};
  colour.data[0] = 255;  // one red pixel
  r.mask.clear();
  r.init_image = encode_png(colour);
  EXPECT_EQ(field_of(r), "init_image");
  r.init_image = "not an image";
  EXPECT_EQ(field_of(r), "init_image");
  r.init_image = png;
  r.inpaint_method = "magic";
  EXPECT_EQ(field_of(r), "inpaint_method");
  r.inpaint_method.clear();
  r.jump_length = 0;
  EXPECT_EQ(field_of(r), "jump_length");
  r.jump_length = 10;
  r.invert_from = "zebra";
  EXPECT_EQ(field_of(r), "invert_from");
  GenerationRequest no_image = base();
  no_image.invert_from = "sneaker";
  EXPECT_EQ(field_of(no_image), "invert_from");
  // a grey image in an RGB file is fine for the greyscale model; a grey mask blends
  r.invert_from.clear();
  Image grey_rgb = convert_channels(decode_image(png, "x"), 3);
  r.init_image = encode_png(grey_rgb);
  r.mask = mask_png(28, 28, 0, 128);
  EXPECT_EQ(field_of(r), "(accepted)");
}

TEST(Edit, CliErrorsWriteNothing) {
  test::TempDir t;
  auto [png, img] = sneaker();
  {
    std::ofstream(t / "in.png", std::ios::binary) << png;
    std::ofstream(t / "small_mask.png", std::ios::binary) << mask_png(20, 20, 10);
  }
  const std::string out = t / "out.png";
  auto run = [&](const std::string& args) {
    return test::run_cli("generate --model " + edit_fashion_dir() + " " + args);
  };
  auto r = run("--image " + (t / "in.png") + " --mask " + (t / "small_mask.png") + " --out " + out);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("--mask"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(out));
  r = run("--image " + (t / "in.png") + " --invert-from zebra --out " + out);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("--invert-from"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(out));
  // an unconditional model has no class to invert from
  r = test::run_cli("generate --model " + test::fixture("unet2d_ddpm") + " --image " + (t / "in.png") +
                    " --invert-from 0 --out " + out);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("--invert-from"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(out));
  // and a good run writes the picture
  r = run("--class sandal --image " + (t / "in.png") + " --strength 0.7 --steps 6 -n 2 --out " + out);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(std::filesystem::exists(out));
}

}  // namespace
}  // namespace diffuse
