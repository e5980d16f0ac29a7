#include "core/image.h"

#include <jpeglib.h>
#include <png.h>

#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/atomic_file.h"
#include "core/error.h"

namespace diffuse {

namespace {

struct PngReadCtx {
  const std::string* path;
  std::string msg;
};

void png_error_fn(png_structp png, png_const_charp msg) {
  auto* ctx = static_cast<PngReadCtx*>(png_get_error_ptr(png));
  if (ctx) ctx->msg = msg;
  png_longjmp(png, 1);
}
void png_warning_fn(png_structp, png_const_charp) {}

// A PNG held in memory, read through png_set_read_fn.
struct PngMemSource {
  const std::string* bytes;
  size_t pos;
};
void png_read_from_memory(png_structp png, png_bytep out, png_size_t len) {
  auto* src = static_cast<PngMemSource*>(png_get_io_ptr(png));
  if (src->bytes->size() - src->pos < len) png_error(png, "truncated PNG data");
  std::memcpy(out, src->bytes->data() + src->pos, len);
  src->pos += len;
}

// Whether a w x h image is plausible for a file of `bytes` bytes: at most 32768 a side and 2^28
// pixels, and (beyond 2^24 pixels) at most 4096 pixels per byte of file, so that a few hundred
// crafted bytes cannot make the decoder allocate gigabytes. Flat images compress to about a
// thousand pixels per byte.
bool plausible_size(uint64_t w, uint64_t h, uint64_t bytes) {
  const uint64_t pixels = w * h;
  return w > 0 && h > 0 && w <= 32768 && h <= 32768 && pixels <= (uint64_t(1) << 28) &&
         (pixels <= (uint64_t(1) << 24) || pixels / 4096 <= bytes);
}

// Reads a PNG from `fp` (when not null) or from `mem`; `what` names the source in errors.
Image read_png_from(const std::string& what, FILE* fp, PngMemSource* mem, uint64_t file_bytes,
                    std::map<std::string, std::string>* text_out) {
  PngReadCtx ctx{&what, {}};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &ctx, png_error_fn, png_warning_fn);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info) {
    if (fp) std::fclose(fp);
    throw Error(what + ": out of memory reading PNG");
  }
  Image img;
  std::vector<png_bytep> rows;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    if (fp) std::fclose(fp);
    throw Error(what + ": corrupt PNG: " + ctx.msg);
  }
  if (fp)
    png_init_io(png, fp);
  else
    png_set_read_fn(png, mem, png_read_from_memory);
  png_read_info(png, info);
  png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  if (!plausible_size(w, h, file_bytes)) png_error(png, "unsupported image size");
  int color = png_get_color_type(png, info);
  int depth = png_get_bit_depth(png, info);
  if (depth == 16) png_set_strip_16(png);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  const bool trns = png_get_valid(png, info, PNG_INFO_tRNS);
  if (trns) png_set_tRNS_to_alpha(png);
  // grey + alpha -> RGBA (transforms must all be set before png_read_update_info)
  if (color == PNG_COLOR_TYPE_GRAY_ALPHA || (color == PNG_COLOR_TYPE_GRAY && trns)) png_set_gray_to_rgb(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const int ch = png_get_channels(png, info);
  img.width = static_cast<int>(w);
  img.height = static_cast<int>(h);
  img.channels = ch;
  img.data.resize(static_cast<size_t>(w) * h * ch);
  rows.resize(h);
  for (png_uint_32 y = 0; y < h; ++y) rows[y] = img.data.data() + static_cast<size_t>(y) * w * ch;
  png_read_image(png, rows.data());
  png_read_end(png, info);
  if (text_out) {
    png_textp text = nullptr;
    int n = 0;
    png_get_text(png, info, &text, &n);
    for (int i = 0; i < n; ++i)
      (*text_out)[text[i].key] =
          std::string(text[i].text, text[i].text_length ? text[i].text_length : std::strlen(text[i].text));
  }
  png_destroy_read_struct(&png, &info, nullptr);
  if (fp) std::fclose(fp);
  return img;
}

Image read_png(const std::string& path, std::map<std::string, std::string>* text_out) {
  FILE* fp = std::fopen(path.c_str(), "rb");
  if (!fp) throw Error(path + ": cannot open: " + std::strerror(errno));
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  return read_png_from(path, fp, nullptr, ec ? 0 : size, text_out);
}

struct JpegErr {
  jpeg_error_mgr mgr;
  jmp_buf jump;
  char msg[JMSG_LENGTH_MAX];
};
void jpeg_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegErr*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->msg);
  longjmp(err->jump, 1);
}

Image decode_jpeg(const std::string& bytes, const std::string& path) {
  jpeg_decompress_struct cinfo{};
  JpegErr err{};
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_error_exit;
  // Everything with a destructor lives outside the setjmp / longjmp span.
  Image img;
  std::vector<unsigned char> line;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    throw Error(path + ": corrupt JPEG: " + err.msg);
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&cinfo, TRUE);
  if (!plausible_size(cinfo.image_width, cinfo.image_height, bytes.size())) {
    jpeg_destroy_decompress(&cinfo);
    throw Error(path + ": unsupported JPEG size " + std::to_string(cinfo.image_width) + "x" +
                std::to_string(cinfo.image_height));
  }
  // CMYK / YCCK (Adobe) JPEGs are decoded to CMYK and converted below; libjpeg has no CMYK -> RGB.
  const bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  cinfo.out_color_space = cmyk ? JCS_CMYK : cinfo.num_components == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&cinfo);
  img.width = static_cast<int>(cinfo.output_width);
  img.height = static_cast<int>(cinfo.output_height);
  const int in_ch = cinfo.output_components;
  img.channels = cmyk ? 3 : in_ch;
  img.data.resize(static_cast<size_t>(img.width) * img.height * img.channels);
  line.resize(static_cast<size_t>(img.width) * in_ch);
  const bool inverted = cinfo.saw_Adobe_marker;  // Adobe writes CMYK inverted (255 = no ink)
  while (cinfo.output_scanline < cinfo.output_height) {
    const size_t y = cinfo.output_scanline;
    unsigned char* row = cmyk ? line.data() : img.data.data() + y * img.width * img.channels;
    jpeg_read_scanlines(&cinfo, &row, 1);
    if (!cmyk) continue;
    unsigned char* out = img.data.data() + y * img.width * 3;
    for (int x = 0; x < img.width; ++x) {
      const unsigned char* p = line.data() + static_cast<size_t>(x) * 4;
      const int k = inverted ? p[3] : 255 - p[3];
      for (int c = 0; c < 3; ++c) out[x * 3 + c] = static_cast<unsigned char>((inverted ? p[c] : 255 - p[c]) * k / 255);
    }
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return img;
}

void png_write_to_string(png_structp png, png_bytep data, png_size_t len) {
  auto* out = static_cast<std::string*>(png_get_io_ptr(png));
  out->append(reinterpret_cast<const char*>(data), len);
}
void png_flush_noop(png_structp) {}

}  // namespace

Image read_image(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path + ": cannot open: " + std::strerror(errno));
  unsigned char magic[8] = {0};
  f.read(reinterpret_cast<char*>(magic), 8);
  if (f.gcount() >= 8 && png_sig_cmp(magic, 0, 8) == 0) return read_png(path, nullptr);
  if (f.gcount() >= 3 && magic[0] == 0xFF && magic[1] == 0xD8 && magic[2] == 0xFF)
    return decode_jpeg(read_file(path), path);
  throw Error(path + ": not a PNG or JPEG image");
}

Image decode_image(const std::string& bytes, const std::string& what) {
  if (bytes.size() >= 8 && png_sig_cmp(reinterpret_cast<png_const_bytep>(bytes.data()), 0, 8) == 0)
    return decode_png(bytes, what);
  if (bytes.size() >= 3 && static_cast<unsigned char>(bytes[0]) == 0xFF &&
      static_cast<unsigned char>(bytes[1]) == 0xD8 && static_cast<unsigned char>(bytes[2]) == 0xFF)
    return decode_jpeg(bytes, what);
  throw Error(what + ": not a PNG or JPEG image");
}

std::map<std::string, std::string> png_text_chunks(const std::string& bytes, const std::string& what) {
  if (bytes.size() < 8 || png_sig_cmp(reinterpret_cast<png_const_bytep>(bytes.data()), 0, 8) != 0)
    throw Error(what + ": not a PNG image");
  PngMemSource src{&bytes, 0};
  std::map<std::string, std::string> text;
  read_png_from(what, nullptr, &src, bytes.size(), &text);
  return text;
}

std::string encode_jpeg(const Image& img, int quality) {
  if (img.width <= 0 || img.height <= 0 || (img.channels != 1 && img.channels != 3) ||
      img.data.size() != static_cast<size_t>(img.width) * img.height * img.channels)
    throw Error("encode_jpeg: invalid image");
  jpeg_compress_struct cinfo{};
  JpegErr err{};
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_error_exit;
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  if (setjmp(err.jump)) {
    jpeg_destroy_compress(&cinfo);
    std::free(buf);
    throw Error(std::string("encode_jpeg: ") + err.msg);
  }
  jpeg_create_compress(&cinfo);
  jpeg_mem_dest(&cinfo, &buf, &size);
  cinfo.image_width = static_cast<JDIMENSION>(img.width);
  cinfo.image_height = static_cast<JDIMENSION>(img.height);
  cinfo.input_components = img.channels;
  cinfo.in_color_space = img.channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, quality, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    auto* row = const_cast<unsigned char*>(img.data.data() +
                                           static_cast<size_t>(cinfo.next_scanline) * img.width * img.channels);
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  std::string out(reinterpret_cast<const char*>(buf), size);
  jpeg_destroy_compress(&cinfo);
  std::free(buf);
  return out;
}

Image decode_png(const std::string& bytes, const std::string& what) {
  if (bytes.size() < 8 || png_sig_cmp(reinterpret_cast<png_const_bytep>(bytes.data()), 0, 8) != 0)
    throw Error(what + ": not a PNG image");
  PngMemSource src{&bytes, 0};
  return read_png_from(what, nullptr, &src, bytes.size(), nullptr);
}

std::map<std::string, std::string> read_png_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path + ": cannot open: " + std::strerror(errno));
  unsigned char magic[8] = {0};
  f.read(reinterpret_cast<char*>(magic), 8);
  if (f.gcount() < 8 || png_sig_cmp(magic, 0, 8) != 0) throw Error(path + ": not a PNG file");
  std::map<std::string, std::string> text;
  read_png(path, &text);
  return text;
}

std::string encode_png(const Image& img, const std::map<std::string, std::string>& text) {
  if (img.width <= 0 || img.height <= 0 || (img.channels != 1 && img.channels != 3 && img.channels != 4) ||
      img.data.size() != static_cast<size_t>(img.width) * img.height * img.channels)
    throw Error("encode_png: invalid image");
  std::string out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, png_error_fn, png_warning_fn);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info) throw Error("encode_png: out of memory");
  PngReadCtx ctx{nullptr, {}};
  png_set_error_fn(png, &ctx, png_error_fn, png_warning_fn);
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    throw Error("encode_png: " + ctx.msg);
  }
  png_set_write_fn(png, &out, png_write_to_string, png_flush_noop);
  int color = img.channels == 1 ? PNG_COLOR_TYPE_GRAY : img.channels == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_RGBA;
  png_set_IHDR(png, info, img.width, img.height, 8, color, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  std::vector<png_text> chunks;
  std::vector<std::string> keys, values;
  for (const auto& [k, v] : text) {
    keys.push_back(k.substr(0, 79));
    values.push_back(v);
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    png_text t{};
    t.compression = PNG_TEXT_COMPRESSION_NONE;
    t.key = const_cast<char*>(keys[i].c_str());
    t.text = const_cast<char*>(values[i].c_str());
    t.text_length = values[i].size();
    chunks.push_back(t);
  }
  if (!chunks.empty()) png_set_text(png, info, chunks.data(), static_cast<int>(chunks.size()));
  png_write_info(png, info);
  for (int y = 0; y < img.height; ++y)
    png_write_row(png, const_cast<png_bytep>(img.data.data() + static_cast<size_t>(y) * img.width * img.channels));
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  return out;
}

void write_png(const std::string& path, const Image& img, const std::map<std::string, std::string>& text) {
  write_file_atomically(path, encode_png(img, text));
}

torch::Tensor to_tensor(const Image& img) {
  auto t =
      torch::from_blob(const_cast<uint8_t*>(img.data.data()), {img.height, img.width, img.channels}, torch::kUInt8);
  return t.permute({2, 0, 1}).to(torch::kFloat32).div(127.5).sub(1.0).contiguous();
}

Image to_image(const torch::Tensor& chw) {
  if (chw.dim() != 3) throw Error("to_image: expected a [C, H, W] tensor");
  auto t = chw.detach().to(torch::kCPU, torch::kFloat32);
  auto u8 = t.add(1.0).mul(127.5).round().clamp(0, 255).to(torch::kUInt8).permute({1, 2, 0}).contiguous();
  Image img;
  img.channels = static_cast<int>(chw.size(0));
  img.height = static_cast<int>(chw.size(1));
  img.width = static_cast<int>(chw.size(2));
  img.data.assign(u8.data_ptr<uint8_t>(), u8.data_ptr<uint8_t>() + u8.numel());
  return img;
}

Image convert_channels(const Image& img, int channels) {
  if (img.channels == channels) return img;
  Image out;
  out.width = img.width;
  out.height = img.height;
  out.channels = channels;
  out.data.resize(static_cast<size_t>(img.width) * img.height * channels);
  const size_t n = static_cast<size_t>(img.width) * img.height;
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* p = img.data.data() + i * img.channels;
    float r, g, b, a = 1.0f;
    if (img.channels == 1) {
      r = g = b = p[0];
    } else {
      r = p[0];
      g = p[1];
      b = p[2];
      if (img.channels == 4) a = p[3] / 255.0f;
    }
    // Blend onto white.
    r = r * a + 255.0f * (1 - a);
    g = g * a + 255.0f * (1 - a);
    b = b * a + 255.0f * (1 - a);
    uint8_t* q = out.data.data() + i * channels;
    if (channels == 1) {
      q[0] = static_cast<uint8_t>(std::lround(0.299f * r + 0.587f * g + 0.114f * b));
    } else {
      q[0] = static_cast<uint8_t>(std::lround(r));
      q[1] = static_cast<uint8_t>(std::lround(g));
      q[2] = static_cast<uint8_t>(std::lround(b));
      if (channels == 4) q[3] = 255;
    }
  }
  return out;
}

torch::Tensor resize_center_crop(const torch::Tensor& chw, int size) {
  int64_t h = chw.size(1), w = chw.size(2);
  torch::Tensor x = chw;
  if (std::min(h, w) != size) {
    double scale = static_cast<double>(size) / std::min(h, w);
    int64_t nh = std::max<int64_t>(size, std::lround(h * scale)), nw = std::max<int64_t>(size, std::lround(w * scale));
    namespace F = torch::nn::functional;
    x = F::interpolate(x.unsqueeze(0),
                       F::InterpolateFuncOptions().size(std::vector<int64_t>{nh, nw}).mode(torch::kArea))
            .squeeze(0);
    h = nh;
    w = nw;
  }
  int64_t top = (h - size) / 2, left = (w - size) / 2;
  return x.slice(1, top, top + size).slice(2, left, left + size).contiguous();
}

torch::Tensor make_grid(const torch::Tensor& nchw, int nrow, int padding, double pad_value) {
  if (nchw.dim() != 4) throw Error("make_grid: expected [N, C, H, W]");
  int64_t n = nchw.size(0), c = nchw.size(1), h = nchw.size(2), w = nchw.size(3);
  nrow = std::max<int>(1, std::min<int>(nrow, static_cast<int>(n)));
  int64_t rows = (n + nrow - 1) / nrow;
  auto grid = torch::full({c, rows * (h + padding) + padding, nrow * (w + padding) + padding}, pad_value,
                          nchw.options().device(torch::kCPU));
  auto src = nchw.detach().to(torch::kCPU);
  for (int64_t i = 0; i < n; ++i) {
    int64_t r = i / nrow, col = i % nrow;
    grid.slice(1, padding + r * (h + padding), padding + r * (h + padding) + h)
        .slice(2, padding + col * (w + padding), padding + col * (w + padding) + w)
        .copy_(src[i]);
  }
  return grid;
}

}  // namespace diffuse
