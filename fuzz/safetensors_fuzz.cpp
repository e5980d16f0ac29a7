// safetensors header and tensor table: any bytes are read or refused with diffuse::Error.
#include "core/error.h"
#include "core/safetensors.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  diffuse::fuzz::MemFile f(diffuse::fuzz::as_string(data, size));
  try {
    auto file = diffuse::safetensors::File::open(f.path());
    for (const auto& name : file.names()) {
      auto t = file.get(name);
      if (t.numel() > 0 && t.is_floating_point()) (void)t.to(torch::kFloat32).sum().item<double>();
    }
  } catch (const diffuse::Error&) {
  }
  return 0;
}
