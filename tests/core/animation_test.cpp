#include "core/animation.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "animation_decode.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "fixtures.h"

using namespace diffuse;
using diffuse::test::decode_gif;
using diffuse::test::decode_webp;

namespace fs = std::filesystem;

namespace {

// Frame i: a gradient shifted by i (distinct frames), grey or RGB.
std::vector<Image> frames(int n, int w, int h, int channels) {
  std::vector<Image> out;
  for (int i = 0; i < n; ++i) {
    Image f{w, h, channels, {}};
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x)
        for (int c = 0; c < channels; ++c)
          f.data.push_back(static_cast<uint8_t>((x * 7 + y * 3 + i * 20 + c * 60) % 256));
    out.push_back(std::move(f));
  }
  return out;
}

std::vector<uint8_t> as_rgb(const Image& f) {
  Image rgb = f.channels == 3 ? f : convert_channels(f, 3);
  return rgb.data;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace

TEST(Animation, GreyGifKeepsEveryLevelFrameCountAndDelay) {
  auto in = frames(5, 30, 20, 1);
  AnimationOptions o;
  o.fps = 4;
  o.comment = "Steps: 20, Seed: 1";
  auto d = decode_gif(encode_gif(in, o));
  EXPECT_EQ(d.width, 30);
  EXPECT_EQ(d.height, 20);
  ASSERT_EQ(d.rgb.size(), 5u);
  for (size_t i = 0; i < in.size(); ++i) {
    EXPECT_EQ(d.rgb[i], as_rgb(in[i])) << "frame " << i;
    EXPECT_EQ(d.delay_ms[i], 250);
  }
  EXPECT_EQ(d.comment, o.comment);
}

TEST(Animation, ColourGifIsQuantisedCloseToTheFrames) {
  auto in = frames(3, 40, 24, 3);
  auto d = decode_gif(encode_gif(in));
  ASSERT_EQ(d.rgb.size(), 3u);
  EXPECT_EQ(d.delay_ms[0], 130);  // 8 fps: 12.5 -> 13 hundredths
  for (size_t i = 0; i < in.size(); ++i) {
    double err = 0;
    for (size_t p = 0; p < in[i].data.size(); ++p) err = std::max(err, std::abs(double(d.rgb[i][p]) - in[i].data[p]));
    EXPECT_LE(err, 24) << "frame " << i;  // median cut over <= 256 colours
  }
}

TEST(Animation, WebpIsLosslessWithItsFrameCountAndTimestamps) {
  for (int channels : {1, 3}) {
    auto in = frames(6, 33, 17, channels);
    AnimationOptions o;
    o.fps = 10;
    auto d = decode_webp(encode_webp(in, o));
    EXPECT_EQ(d.width, 33);
    EXPECT_EQ(d.height, 17);
    ASSERT_EQ(d.rgb.size(), 6u) << channels;
    for (size_t i = 0; i < in.size(); ++i) {
      EXPECT_EQ(d.rgb[i], as_rgb(in[i])) << "frame " << i;
      EXPECT_EQ(d.delay_ms[i], 100);
    }
  }
}

TEST(Animation, RgbaIsBlendedOntoWhite) {
  Image f{2, 1, 4, {0, 0, 0, 0, 10, 20, 30, 255}};  // transparent, opaque
  Image g{2, 1, 4, {0, 0, 0, 255, 10, 20, 30, 0}};
  for (const auto& d : {decode_webp(encode_webp({f, g})), decode_gif(encode_gif({f, g}))}) {
    ASSERT_EQ(d.rgb.size(), 2u);
    EXPECT_EQ(d.rgb[0], (std::vector<uint8_t>{255, 255, 255, 10, 20, 30}));
    EXPECT_EQ(d.rgb[1], (std::vector<uint8_t>{0, 0, 0, 255, 255, 255}));
  }
}

TEST(Animation, WebpShowsARepeatedFrameLonger) {
  auto in = frames(2, 8, 8, 3);
  auto d = decode_webp(encode_webp({in[0], in[0], in[1]}));
  ASSERT_EQ(d.rgb.size(), 2u);
  EXPECT_EQ(d.delay_ms, (std::vector<int>{250, 125}));
  EXPECT_EQ(decode_gif(encode_gif({in[0], in[0], in[1]})).rgb.size(), 3u);
}

TEST(Animation, FormatFromExtension) {
  EXPECT_EQ(animation_format("a/b.gif"), "gif");
  EXPECT_EQ(animation_format("B.WebP"), "webp");
  EXPECT_NE(error_of([] { animation_format("x.png"); }).find("unknown animation format '.png'"), std::string::npos);
  EXPECT_NE(error_of([] { animation_format("x"); }).find("(none)"), std::string::npos);
}

TEST(Animation, BadInputIsRejectedAndWritesNothing) {
  auto two = frames(2, 8, 8, 1);
  auto mixed = two;
  mixed[1] = frames(1, 9, 8, 1)[0];
  auto bad_channels = two;
  bad_channels[1].channels = 2;
  auto short_data = two;
  short_data[0].data.pop_back();
  AnimationOptions zero_fps;
  zero_fps.fps = 0;
  Image huge{70000, 1, 1, std::vector<uint8_t>(70000)};
  for (auto enc : {&encode_gif, &encode_webp}) {
    EXPECT_NE(error_of([&] { enc({}, {}); }).find("no frames"), std::string::npos);
    EXPECT_NE(error_of([&] { enc(mixed, {}); }).find("frame 1: its size 9x8 differs"), std::string::npos);
    EXPECT_NE(error_of([&] { enc(bad_channels, {}); }).find("2 channels"), std::string::npos);
    EXPECT_NE(error_of([&] { enc(short_data, {}); }).find("frame 0: holds 63 bytes"), std::string::npos);
    EXPECT_NE(error_of([&] { enc(two, zero_fps); }).find("fps must be in (0, 100]"), std::string::npos);
    EXPECT_NE(error_of([&] { enc({huge}, {}); }).find("outside 1.."), std::string::npos);
  }
  test::TempDir tmp;
  for (const std::string name : {"a.gif", "a.webp", "a.png"}) {
    const std::string path = tmp / name;
    EXPECT_THROW(write_animation(path, mixed), Error);
    EXPECT_FALSE(fs::exists(path)) << name;
  }
  write_animation(tmp / "ok.webp", two);
  EXPECT_EQ(decode_webp(read_file(tmp / "ok.webp")).rgb.size(), 2u);
}

TEST(Animation, NearestUpscale) {
  Image f{2, 1, 1, {10, 200}};
  Image u = upscale_nearest(f, 3);
  EXPECT_EQ(u.width, 6);
  EXPECT_EQ(u.height, 3);
  EXPECT_EQ(u.data,
            (std::vector<uint8_t>{10, 10, 10, 200, 200, 200, 10, 10, 10, 200, 200, 200, 10, 10, 10, 200, 200, 200}));
  EXPECT_THROW(upscale_nearest(f, 0), Error);
}
