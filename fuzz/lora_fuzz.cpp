// LoRA and textual-inversion key matching on the tiny Stable Diffusion fixture: a safetensors
// file of any keys and shapes is merged or refused with diffuse::Error.
#include "core/error.h"
#include "core/safetensors.h"
#include "fuzz_util.h"
#include "pipelines/lora.h"
#include "pipelines/sd_pipeline.h"
#include "pipelines/textual_inversion.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static diffuse::SDPipeline pipe = diffuse::SDPipeline::load(std::string(DIFFUSE_FIXTURES) + "/sd_pipeline_tiny");
  diffuse::fuzz::MemFile f(diffuse::fuzz::as_string(data, size));
  std::map<std::string, torch::Tensor> tensors;
  try {
    tensors = diffuse::safetensors::File::open(f.path()).load_all();
  } catch (const diffuse::Error&) {
    return 0;
  }
  try {
    diffuse::apply_lora(pipe, tensors, 1e-6, "fuzz.safetensors");
  } catch (const diffuse::Error&) {
  }
  try {
    const std::string path = "/dev/shm/diffuse_fuzz_" + std::to_string(getpid()) + ".safetensors";
    diffuse::safetensors::save(path, tensors);
    diffuse::load_embedding(*pipe.text, path);
    std::remove(path.c_str());
  } catch (const diffuse::Error&) {
  }
  return 0;
}
