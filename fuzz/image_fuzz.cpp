// PNG and JPEG decoding into tensors: decoded or refused with diffuse::Error.
#include "core/error.h"
#include "core/image.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const diffuse::Image img = diffuse::decode_image(diffuse::fuzz::as_string(data, size), "fuzz");
    auto t = diffuse::to_tensor(diffuse::convert_channels(img, 3));
    (void)t.sum().item<double>();
    (void)diffuse::png_text_chunks(diffuse::fuzz::as_string(data, size), "fuzz");
  } catch (const diffuse::Error&) {
  }
  return 0;
}
