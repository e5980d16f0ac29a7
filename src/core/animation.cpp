#include "core/animation.h"

#include <gif_lib.h>
#include <webp/encode.h>
#include <webp/mux.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <memory>

#include "core/atomic_file.h"
#include "core/error.h"

namespace diffuse {

namespace {

// The frames as one channel count (1 or 3) after the checks every format shares.
std::vector<Image> checked_frames(const std::vector<Image>& frames, const AnimationOptions& o, int max_side,
                                  const std::string& format) {
  const std::string what = format + " animation: ";
  if (frames.empty()) throw Error(what + "no frames");
  if (!(o.fps > 0 && o.fps <= 100)) throw Error(what + "fps must be in (0, 100], got " + std::to_string(o.fps));
  if (o.loop < 0 || o.loop > 65535) throw Error(what + "loop count must be in [0, 65535]");
  const Image& f0 = frames[0];
  if (f0.width < 1 || f0.height < 1 || f0.width > max_side || f0.height > max_side)
    throw Error(what + "frame size " + std::to_string(f0.width) + "x" + std::to_string(f0.height) + " is outside 1.." +
                std::to_string(max_side) + " px");
  bool grey = true;
  for (size_t i = 0; i < frames.size(); ++i) {
    const Image& f = frames[i];
    const std::string which = what + "frame " + std::to_string(i) + ": ";
    if (f.width != f0.width || f.height != f0.height)
      throw Error(which + "its size " + std::to_string(f.width) + "x" + std::to_string(f.height) +
                  " differs from the first frame's " + std::to_string(f0.width) + "x" + std::to_string(f0.height));
    if (f.channels != 1 && f.channels != 3 && f.channels != 4)
      throw Error(which + std::to_string(f.channels) + " channels (expected 1, 3 or 4)");
    if (f.data.size() != static_cast<size_t>(f.width) * f.height * f.channels)
      throw Error(which + "holds " + std::to_string(f.data.size()) + " bytes for a " + std::to_string(f.width) + "x" +
                  std::to_string(f.height) + "x" + std::to_string(f.channels) + " image");
    grey = grey && f.channels == 1;
  }
  std::vector<Image> out;
  out.reserve(frames.size());
  for (const auto& f : frames) out.push_back(f.channels == (grey ? 1 : 3) ? f : convert_channels(f, grey ? 1 : 3));
  return out;
}

int gif_write(GifFileType* gif, const GifByteType* data, int n) {
  static_cast<std::string*>(gif->UserData)->append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
  return n;
}

struct GifCloser {
  void operator()(GifFileType* g) const {
    int err = 0;
    EGifCloseFile(g, &err);
  }
};
struct MapFree {
  void operator()(ColorMapObject* m) const { GifFreeMapObject(m); }
};

void gif_check(int rc, GifFileType* gif, const char* step) {
  if (rc != GIF_OK) {
    const char* msg = GifErrorString(gif->Error);
    throw Error(std::string("gif animation: ") + step + ": " + (msg ? msg : "giflib error"));
  }
}

}  // namespace

std::string animation_format(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  if (ext == ".gif") return "gif";
  if (ext == ".webp") return "webp";
  throw Error(path + ": unknown animation format '" + (ext.empty() ? std::string("(none)") : ext) +
              "' (expected .gif or .webp)");
}

std::string encode_gif(const std::vector<Image>& input, const AnimationOptions& o) {
  const auto frames = checked_frames(input, o, 65535, "gif");
  const int w = frames[0].width, h = frames[0].height;
  const bool grey = frames[0].channels == 1;
  std::string out;
  int err = 0;
  std::unique_ptr<GifFileType, GifCloser> gif(EGifOpen(&out, gif_write, &err));
  if (!gif) throw Error(std::string("gif animation: ") + GifErrorString(err));
  EGifSetGifVersion(gif.get(), true);
  std::unique_ptr<ColorMapObject, MapFree> grey_map;
  if (grey) {
    grey_map.reset(GifMakeMapObject(256, nullptr));
    for (int i = 0; i < 256; ++i) grey_map->Colors[i] = {GifByteType(i), GifByteType(i), GifByteType(i)};
  }
  gif_check(EGifPutScreenDesc(gif.get(), w, h, 8, 0, grey_map.get()), gif.get(), "screen descriptor");
  // NETSCAPE2.0 application extension: the loop count.
  const GifByteType loop[3] = {1, GifByteType(o.loop & 0xff), GifByteType(o.loop >> 8)};
  gif_check(EGifPutExtensionLeader(gif.get(), APPLICATION_EXT_FUNC_CODE), gif.get(), "loop extension");
  gif_check(EGifPutExtensionBlock(gif.get(), 11, "NETSCAPE2.0"), gif.get(), "loop extension");
  gif_check(EGifPutExtensionBlock(gif.get(), 3, loop), gif.get(), "loop extension");
  gif_check(EGifPutExtensionTrailer(gif.get()), gif.get(), "loop extension");
  if (!o.comment.empty()) gif_check(EGifPutComment(gif.get(), o.comment.c_str()), gif.get(), "comment");
  const int delay = std::max(2, static_cast<int>(std::lround(100.0 / o.fps)));
  std::vector<GifByteType> index(static_cast<size_t>(w) * h);
  std::vector<GifByteType> r(index.size()), g(index.size()), b(index.size());
  for (const auto& f : frames) {
    GraphicsControlBlock gcb{DISPOSE_DO_NOT, false, delay, NO_TRANSPARENT_COLOR};
    GifByteType ext[4];
    const size_t len = EGifGCBToExtension(&gcb, ext);
    gif_check(EGifPutExtension(gif.get(), GRAPHICS_EXT_FUNC_CODE, static_cast<int>(len), ext), gif.get(),
              "frame delay");
    std::unique_ptr<ColorMapObject, MapFree> map;
    if (grey) {
      std::copy(f.data.begin(), f.data.end(), index.begin());
    } else {
      for (size_t i = 0; i < index.size(); ++i) {
        r[i] = f.data[3 * i];
        g[i] = f.data[3 * i + 1];
        b[i] = f.data[3 * i + 2];
      }
      map.reset(GifMakeMapObject(256, nullptr));
      std::fill(map->Colors, map->Colors + 256, GifColorType{0, 0, 0});
      int colours = 256;
      if (GifQuantizeBuffer(static_cast<unsigned>(w), static_cast<unsigned>(h), &colours, r.data(), g.data(), b.data(),
                            index.data(), map->Colors) != GIF_OK)
        throw Error("gif animation: colour quantisation failed");
      // giflib cuts at 5 bits per channel and returns box centres; each palette entry becomes the
      // mean colour of the pixels it stands for (exact for frames with few colours).
      std::vector<uint64_t> sum(256 * 4, 0);
      for (size_t i = 0; i < index.size(); ++i) {
        uint64_t* e = &sum[4 * index[i]];
        e[0] += r[i], e[1] += g[i], e[2] += b[i], e[3] += 1;
      }
      for (int k = 0; k < 256; ++k)
        if (const uint64_t n = sum[4 * k + 3])
          map->Colors[k] = {GifByteType((sum[4 * k] + n / 2) / n), GifByteType((sum[4 * k + 1] + n / 2) / n),
                            GifByteType((sum[4 * k + 2] + n / 2) / n)};
    }
    gif_check(EGifPutImageDesc(gif.get(), 0, 0, w, h, false, map.get()), gif.get(), "image descriptor");
    for (int y = 0; y < h; ++y)
      gif_check(EGifPutLine(gif.get(), index.data() + static_cast<size_t>(y) * w, w), gif.get(), "pixels");
  }
  GifFileType* raw = gif.release();
  if (EGifCloseFile(raw, &err) != GIF_OK) throw Error(std::string("gif animation: ") + GifErrorString(err));
  return out;
}

std::string encode_webp(const std::vector<Image>& input, const AnimationOptions& o) {
  const auto frames = checked_frames(input, o, WEBP_MAX_DIMENSION, "webp");
  const int w = frames[0].width, h = frames[0].height;
  WebPAnimEncoderOptions eo;
  WebPConfig config;
  if (!WebPAnimEncoderOptionsInit(&eo) || !WebPConfigInit(&config))
    throw Error("webp animation: libwebp version mismatch");
  eo.anim_params.loop_count = o.loop;
  eo.anim_params.bgcolor = 0xffffffff;
  config.lossless = 1;
  config.quality = 75;  // lossless: the effort spent on compression
  config.method = 4;
  std::unique_ptr<WebPAnimEncoder, void (*)(WebPAnimEncoder*)> enc(WebPAnimEncoderNew(w, h, &eo),
                                                                   WebPAnimEncoderDelete);
  if (!enc) throw Error("webp animation: cannot create the encoder");
  auto fail = [&](const std::string& step) {
    const char* msg = WebPAnimEncoderGetError(enc.get());
    throw Error("webp animation: " + step + (msg && *msg ? std::string(": ") + msg : std::string()));
  };
  std::vector<uint8_t> rgb(static_cast<size_t>(w) * h * 3);
  int timestamp = 0;
  for (size_t i = 0; i < frames.size(); ++i) {
    const Image& f = frames[i];
    for (size_t p = 0; p < static_cast<size_t>(w) * h; ++p)
      for (int c = 0; c < 3; ++c) rgb[3 * p + c] = f.channels == 1 ? f.data[p] : f.data[3 * p + c];
    WebPPicture pic;
    if (!WebPPictureInit(&pic)) fail("picture");
    pic.width = w;
    pic.height = h;
    pic.use_argb = 1;
    const bool ok =
        WebPPictureImportRGB(&pic, rgb.data(), 3 * w) && WebPAnimEncoderAdd(enc.get(), &pic, timestamp, &config);
    WebPPictureFree(&pic);
    if (!ok) fail("frame " + std::to_string(i));
    timestamp = static_cast<int>(std::lround(1000.0 * static_cast<double>(i + 1) / o.fps));
  }
  if (!WebPAnimEncoderAdd(enc.get(), nullptr, timestamp, nullptr)) fail("end of animation");
  WebPData data;
  WebPDataInit(&data);
  if (!WebPAnimEncoderAssemble(enc.get(), &data)) fail("assembly");
  std::string out(reinterpret_cast<const char*>(data.bytes), data.size);
  WebPDataClear(&data);
  return out;
}

void write_animation(const std::string& path, const std::vector<Image>& frames, const AnimationOptions& options) {
  const std::string format = animation_format(path);
  write_file_atomically(path, format == "gif" ? encode_gif(frames, options) : encode_webp(frames, options));
}

Image upscale_nearest(const Image& img, int factor) {
  if (factor < 1) throw Error("upscale_nearest: factor must be at least 1");
  if (factor == 1) return img;
  Image out;
  out.width = img.width * factor;
  out.height = img.height * factor;
  out.channels = img.channels;
  out.data.resize(static_cast<size_t>(out.width) * out.height * out.channels);
  const size_t c = static_cast<size_t>(img.channels);
  for (int y = 0; y < out.height; ++y)
    for (int x = 0; x < out.width; ++x) {
      const uint8_t* src = &img.data[(static_cast<size_t>(y / factor) * img.width + x / factor) * c];
      std::copy(src, src + c, &out.data[(static_cast<size_t>(y) * out.width + x) * c]);
    }
  return out;
}

}  // namespace diffuse
