#pragma once
// Animated images: GIF through giflib, WebP through libwebp's WebPAnimEncoder. Frames are 8-bit
// images of one size (grey, RGB or RGBA; alpha is blended onto white).
#include <string>
#include <vector>

#include "core/image.h"

namespace diffuse {

struct AnimationOptions {
  double fps = 8;       // frames per second, in (0, 100]
  int loop = 0;         // times to play (0 = forever)
  std::string comment;  // GIF only: a comment extension (e.g. the generation parameters)
};

// "gif" or "webp" from a file name's extension (case-insensitive). Throws diffuse::Error naming
// the extension otherwise.
std::string animation_format(const std::string& path);

// Animated GIF bytes. Grey frames keep every level (a 256-grey palette); colour frames are reduced
// to 256 colours per frame by giflib's median cut (GifQuantizeBuffer). Frame delays are whole
// hundredths of a second (at least 2, as browsers show shorter delays at 10).
// Throws diffuse::Error for no frames, frames of different sizes or channel counts, a side over
// 65535 px, a bad fps or loop count, or an image whose data does not match its size.
std::string encode_gif(const std::vector<Image>& frames, const AnimationOptions& options = {});

// Animated WebP bytes (lossless; each frame shown for 1000/fps ms). WebPAnimEncoder stores a frame
// identical to the one before it as a longer showing of that frame (the total duration is kept).
// Same checks as encode_gif, with WebP's side limit of 16383 px.
std::string encode_webp(const std::vector<Image>& frames, const AnimationOptions& options = {});

// Encodes by the extension of `path` (animation_format) and writes the file atomically.
void write_animation(const std::string& path, const std::vector<Image>& frames, const AnimationOptions& options = {});

// Each pixel repeated factor x factor times (factor >= 1).
Image upscale_nearest(const Image& img, int factor);

}  // namespace diffuse
