#pragma once
// Image files: PNG (with tEXt chunks) and JPEG reading, PNG writing (atomic),
// and conversion between 8-bit images and float tensors in [-1, 1].
#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace diffuse {

struct Image {
  int width = 0;
  int height = 0;
  int channels = 0;           // 1 (grey), 3 (RGB) or 4 (RGBA)
  std::vector<uint8_t> data;  // row-major, interleaved (HWC)
};

// Reads PNG or JPEG (detected from the file's first bytes). Throws diffuse::Error naming the file.
Image read_image(const std::string& path);
// Decodes PNG bytes held in memory; `what` names their source in errors.
Image decode_png(const std::string& bytes, const std::string& what);
// Decodes PNG or JPEG bytes held in memory (detected from their first bytes).
Image decode_image(const std::string& bytes, const std::string& what);
// tEXt / iTXt / zTXt chunks of PNG bytes held in memory.
std::map<std::string, std::string> png_text_chunks(const std::string& bytes, const std::string& what);
// JPEG bytes (baseline, 4:2:0) of a grey or RGB image.
std::string encode_jpeg(const Image& img, int quality = 90);
// Writes a PNG atomically with tEXt chunks (key -> value, e.g. "parameters").
void write_png(const std::string& path, const Image& img, const std::map<std::string, std::string>& text = {});
// PNG bytes in memory.
std::string encode_png(const Image& img, const std::map<std::string, std::string>& text = {});
// tEXt / iTXt / zTXt chunks of a PNG file.
std::map<std::string, std::string> read_png_text(const std::string& path);

// [C, H, W] float in [-1, 1] <-> 8-bit image. `to_image` clamps and rounds.
torch::Tensor to_tensor(const Image& img);
Image to_image(const torch::Tensor& chw);
// Converts channel count (1 <-> 3, drops/blends alpha onto white).
Image convert_channels(const Image& img, int channels);
// Resizes so the shorter side is `size` (bilinear, antialiased) then centre-crops to size x size.
torch::Tensor resize_center_crop(const torch::Tensor& chw, int size);

// Tiles [N, C, H, W] images into one image with `nrow` images per row and `padding` pixels between.
torch::Tensor make_grid(const torch::Tensor& nchw, int nrow, int padding = 2, double pad_value = 1.0);

}  // namespace diffuse
