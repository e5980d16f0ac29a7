#include "core/image.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <fstream>

#include "core/atomic_file.h"
#include "core/error.h"
#include "fixtures.h"

namespace diffuse {
namespace {

using test::TempDir;

TEST(Image, PngRoundTripWithText) {
  TempDir dir;
  for (int ch : {1, 3, 4}) {
    Image img;
    img.width = 7;
    img.height = 5;
    img.channels = ch;
    for (int i = 0; i < 7 * 5 * ch; ++i) img.data.push_back(static_cast<uint8_t>((i * 37) % 256));
    std::string p = dir / ("a" + std::to_string(ch) + ".png");
    write_png(p, img, {{"parameters", "a cat\nSteps: 20, Seed: 1"}, {"Software", "diffuse"}});
    Image r = read_image(p);
    EXPECT_EQ(r.width, 7);
    EXPECT_EQ(r.height, 5);
    EXPECT_EQ(r.channels, ch);
    EXPECT_EQ(r.data, img.data);
    auto text = read_png_text(p);
    EXPECT_EQ(text.at("parameters"), "a cat\nSteps: 20, Seed: 1");
    EXPECT_EQ(text.at("Software"), "diffuse");
  }
}

TEST(Image, TensorConversionIsExactOn8BitValues) {
  Image img;
  img.width = 16;
  img.height = 16;
  img.channels = 1;
  for (int i = 0; i < 256; ++i) img.data.push_back(static_cast<uint8_t>(i));
  auto t = to_tensor(img);
  EXPECT_NEAR(t.min().item<float>(), -1.0f, 1e-6);
  EXPECT_NEAR(t.max().item<float>(), 1.0f, 1e-6);
  EXPECT_EQ(to_image(t).data, img.data);
  EXPECT_EQ(to_image(torch::full({1, 2, 2}, 5.0)).data, std::vector<uint8_t>(4, 255));  // clamped
}

TEST(Image, CorruptFilesGiveErrorsNamingTheFile) {
  TempDir dir;
  std::ofstream(dir / "x.png") << "\x89PNG\r\n\x1a\n garbage garbage";
  std::ofstream(dir / "y.jpg") << "\xff\xd8\xff garbage";
  std::ofstream(dir / "z.txt") << "hello";
  for (const char* n : {"x.png", "y.jpg", "z.txt", "missing.png"}) {
    try {
      read_image(dir / n);
      FAIL() << n;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
    }
  }
}

TEST(Image, DecodePngFromMemory) {
  Image img;
  img.width = 3;
  img.height = 2;
  img.channels = 4;
  for (int i = 0; i < 24; ++i) img.data.push_back(static_cast<uint8_t>(i * 10));
  const std::string bytes = encode_png(img);
  Image back = decode_png(bytes, "memory");
  EXPECT_EQ(back.width, 3);
  EXPECT_EQ(back.height, 2);
  EXPECT_EQ(back.channels, 4);
  EXPECT_EQ(back.data, img.data);
  try {
    decode_png(bytes.substr(0, bytes.size() / 2), "glyph 7");
    FAIL() << "truncated PNG accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("glyph 7"), std::string::npos) << e.what();
  }
  EXPECT_THROW(decode_png("GIF89a", "x"), Error);
}

TEST(Image, AbsurdDimensionsAreRefusedBeforeDecoding) {
  std::string png = encode_png(Image{4, 4, 1, std::vector<uint8_t>(16, 7)});
  auto set32 = [&](size_t off, uint32_t v) {
    for (int i = 0; i < 4; ++i) png[off + i] = static_cast<char>((v >> (24 - 8 * i)) & 0xff);
  };
  set32(16, 100000);  // IHDR width and height: 10^10 pixels
  set32(20, 100000);
  set32(29, static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(png.data()) + 12, 17)));  // IHDR CRC
  try {
    decode_image(png, "big.png");
    ADD_FAILURE() << "decoded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("big.png: corrupt PNG: unsupported image size"), std::string::npos)
        << e.what();
  }
}

// 162 bytes claiming 30224 x 3585 pixels (found by the image fuzzer): refused before decoding
// rather than allocating gigabytes.
TEST(Image, DecompressionBombsAreRefused) {
  const std::string bomb = read_file(test::source_path("tests/data/images/bomb.jpg"));
  try {
    decode_image(bomb, "bomb.jpg");
    ADD_FAILURE() << "decoded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bomb.jpg: unsupported JPEG size 30224x3585"), std::string::npos) << e.what();
  }
}

TEST(Image, JpegRoundTripFromMemory) {
  Image img{16, 8, 3, std::vector<uint8_t>(16 * 8 * 3)};
  for (size_t i = 0; i < img.data.size(); ++i) img.data[i] = static_cast<uint8_t>((i * 7) % 200);
  const std::string jpg = encode_jpeg(img, 95);
  const Image back = decode_image(jpg, "x.jpg");
  EXPECT_EQ(back.width, 16);
  EXPECT_EQ(back.height, 8);
  EXPECT_EQ(back.channels, 3);
  EXPECT_THROW(decode_image(jpg.substr(0, 20), "cut.jpg"), Error);
  EXPECT_THROW(decode_image("GIF89a", "x.gif"), Error);
}

// tests/data/images (scripts/make_fuzz_seeds.py): PNG colour types and depths, palette, Adam7
// interlacing, grey + alpha; baseline, progressive, grey and CMYK JPEGs. All are read.
TEST(Image, ReadsEveryPngAndJpegVariant) {
  auto path = [](const std::string& name) { return test::source_path("tests/data/images/" + name); };
  const Image rgb = read_image(path("rgb.png"));
  ASSERT_EQ(rgb.width, 5);
  ASSERT_EQ(rgb.height, 4);
  for (const char* name : {"rgba.png", "interlaced.png"})  // the same RGB pixels
    EXPECT_EQ(convert_channels(read_image(path(name)), 3).data, rgb.data) << name;
  const Image grey = read_image(path("grey.png"));
  EXPECT_EQ(grey.channels, 1);
  EXPECT_EQ(read_image(path("grey16.png")).data, grey.data);  // 16 bits scaled to 8
  EXPECT_EQ(read_image(path("grey_alpha.png")).channels, 4);
  EXPECT_EQ(read_image(path("palette.png")).channels, 3);
  EXPECT_EQ(read_image(path("bilevel.png")).width, 5);
  const auto base = to_tensor(read_image(path("baseline.jpg")));
  EXPECT_EQ(base.sizes(), (std::vector<int64_t>{3, 16, 16}));
  for (const char* name : {"progressive.jpg", "cmyk.jpg"}) {
    const auto t = to_tensor(convert_channels(read_image(path(name)), 3));
    ASSERT_EQ(t.sizes(), base.sizes()) << name;
    EXPECT_LT((t - base).abs().mean().item<double>(), 0.05) << name;  // the same picture, re-encoded
  }
  EXPECT_EQ(read_image(path("grey.jpg")).channels, 1);
}

TEST(Image, GridLayout) {
  auto x = torch::zeros({5, 1, 4, 4});
  for (int i = 0; i < 5; ++i) x[i].fill_(i * 0.1);
  auto g = make_grid(x, 3, 2, 1.0);
  EXPECT_EQ(g.sizes(), (std::vector<int64_t>{1, 2 * 6 + 2, 3 * 6 + 2}));
  EXPECT_NEAR(g[0][2][2].item<float>(), 0.0f, 1e-6);   // image 0
  EXPECT_NEAR(g[0][2][8].item<float>(), 0.1f, 1e-6);   // image 1
  EXPECT_NEAR(g[0][8][8].item<float>(), 0.4f, 1e-6);   // image 4 (row 2, col 2)
  EXPECT_NEAR(g[0][8][14].item<float>(), 1.0f, 1e-6);  // empty cell = padding value
}

TEST(Image, ResizeCenterCrop) {
  auto x = torch::zeros({3, 20, 40});
  x.slice(2, 10, 30).fill_(1.0);  // a centred bright square
  auto y = resize_center_crop(x, 10);
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{3, 10, 10}));
  EXPECT_NEAR(y.mean().item<float>(), 1.0f, 1e-5);
}

TEST(Image, ConvertChannelsBlendsAlphaOntoWhite) {
  Image img;
  img.width = 1;
  img.height = 1;
  img.channels = 4;
  img.data = {0, 0, 0, 0};  // transparent black
  auto rgb = convert_channels(img, 3);
  EXPECT_EQ(rgb.data, (std::vector<uint8_t>{255, 255, 255}));
  auto grey = convert_channels(rgb, 1);
  EXPECT_EQ(grey.data, (std::vector<uint8_t>{255}));
}

}  // namespace
}  // namespace diffuse
