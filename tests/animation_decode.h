#pragma once
// Test helper: decodes animated GIF (giflib's DGifSlurp) and WebP (libwebp's WebPAnimDecoder)
// bytes independently of the encoders in src/core/animation.cpp.
#include <gif_lib.h>
#include <webp/demux.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace diffuse::test {

struct DecodedAnimation {
  int width = 0, height = 0;
  std::vector<std::vector<uint8_t>> rgb;  // per frame, HWC
  std::vector<int> delay_ms;              // per frame
  std::string comment;                    // GIF comment extension
};

namespace detail {
struct GifReader {
  const std::string* bytes;
  size_t pos = 0;
};
inline int gif_read(GifFileType* gif, GifByteType* out, int n) {
  auto* r = static_cast<GifReader*>(gif->UserData);
  const size_t k = std::min(static_cast<size_t>(n), r->bytes->size() - r->pos);
  std::memcpy(out, r->bytes->data() + r->pos, k);
  r->pos += k;
  return static_cast<int>(k);
}
}  // namespace detail

// Every frame composited onto the logical screen (the encoders write full frames).
inline DecodedAnimation decode_gif(const std::string& bytes) {
  detail::GifReader reader{&bytes};
  int err = 0;
  GifFileType* gif = DGifOpen(&reader, detail::gif_read, &err);
  if (!gif) throw std::runtime_error(std::string("DGifOpen: ") + GifErrorString(err));
  if (DGifSlurp(gif) != GIF_OK) {
    std::string msg = GifErrorString(gif->Error);
    DGifCloseFile(gif, &err);
    throw std::runtime_error("DGifSlurp: " + msg);
  }
  DecodedAnimation d;
  d.width = gif->SWidth;
  d.height = gif->SHeight;
  for (int i = 0; i < gif->ImageCount; ++i) {
    const SavedImage& im = gif->SavedImages[i];
    const ColorMapObject* map = im.ImageDesc.ColorMap ? im.ImageDesc.ColorMap : gif->SColorMap;
    std::vector<uint8_t> rgb(static_cast<size_t>(d.width) * d.height * 3, 0);
    for (int y = 0; y < im.ImageDesc.Height; ++y)
      for (int x = 0; x < im.ImageDesc.Width; ++x) {
        const GifColorType c = map->Colors[im.RasterBits[y * im.ImageDesc.Width + x]];
        const size_t o = (static_cast<size_t>(y + im.ImageDesc.Top) * d.width + x + im.ImageDesc.Left) * 3;
        rgb[o] = c.Red;
        rgb[o + 1] = c.Green;
        rgb[o + 2] = c.Blue;
      }
    d.rgb.push_back(std::move(rgb));
    GraphicsControlBlock gcb;
    d.delay_ms.push_back(DGifSavedExtensionToGCB(gif, i, &gcb) == GIF_OK ? gcb.DelayTime * 10 : -1);
    for (int e = 0; e < im.ExtensionBlockCount; ++e)
      if (im.ExtensionBlocks[e].Function == COMMENT_EXT_FUNC_CODE)
        d.comment.append(reinterpret_cast<const char*>(im.ExtensionBlocks[e].Bytes), im.ExtensionBlocks[e].ByteCount);
  }
  DGifCloseFile(gif, &err);
  return d;
}

inline DecodedAnimation decode_webp(const std::string& bytes) {
  WebPData data{reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()};
  WebPAnimDecoderOptions opt;
  if (!WebPAnimDecoderOptionsInit(&opt)) throw std::runtime_error("WebPAnimDecoderOptionsInit");
  opt.color_mode = MODE_RGBA;
  WebPAnimDecoder* dec = WebPAnimDecoderNew(&data, &opt);
  if (!dec) throw std::runtime_error("WebPAnimDecoderNew: not an animated WebP");
  WebPAnimInfo info;
  WebPAnimDecoderGetInfo(dec, &info);
  DecodedAnimation d;
  d.width = static_cast<int>(info.canvas_width);
  d.height = static_cast<int>(info.canvas_height);
  int prev = 0;
  while (WebPAnimDecoderHasMoreFrames(dec)) {
    uint8_t* buf = nullptr;
    int ts = 0;
    if (!WebPAnimDecoderGetNext(dec, &buf, &ts)) {
      WebPAnimDecoderDelete(dec);
      throw std::runtime_error("WebPAnimDecoderGetNext");
    }
    std::vector<uint8_t> rgb(static_cast<size_t>(d.width) * d.height * 3);
    for (size_t p = 0; p < rgb.size() / 3; ++p)
      for (int c = 0; c < 3; ++c) rgb[3 * p + c] = buf[4 * p + c];
    d.rgb.push_back(std::move(rgb));
    d.delay_ms.push_back(ts - prev);  // ts is the end time of the frame
    prev = ts;
  }
  WebPAnimDecoderDelete(dec);
  return d;
}

}  // namespace diffuse::test
