#pragma once
// Internal state behind diffuse::Model (not part of the public API).
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "diffuse/model.h"
#include "pipelines/lora.h"
#include "pipelines/pixel_pipeline.h"
#include "pipelines/sd_pipeline.h"

namespace diffuse {

struct Model::Impl {
  std::string path;
  LoadOptions options;
  ModelInfo info;
  std::mutex mu;  // one generation at a time

  // Stable Diffusion: the pipeline in the dtype, weight storage and with the LoRAs it was last
  // asked for.
  std::unique_ptr<SDPipeline> sd;
  std::string sd_dtype, sd_weights;
  // LoadOptions::dtype resolved: what requests with dtype auto compute in.
  std::string dtype;
  std::vector<LoraSpec> sd_loras;
  std::vector<std::string> embeddings_loaded;  // triggers, reported by the next generation
  // SDXL refiner of the last request that asked for one (path and dtype it was loaded with).
  std::unique_ptr<SDPipeline> refiner;
  std::string refiner_path, refiner_dtype, refiner_weights;
  // Class-conditional / unconditional pipelines and the guides they were run with.
  std::unique_ptr<PixelPipeline> pixel;
  std::map<std::string, std::shared_ptr<const PixelPipeline>> guides;

  // One-shot models load no component here (see stage_sd).
  void load_sd(const std::string& dtype, const std::string& weights);
  // Reloads when the dtype, the weight storage or the LoRA set differs from what is loaded; for
  // one-shot models stages the components `want` names (stage_sd); then merges the LoRAs.
  void prepare_sd(const std::string& dtype, const std::string& weights, const std::vector<LoraSpec>& loras,
                  const GenerateHooks& hooks, const SDComponents& want = {});
  // One-shot models: releases the loaded components `want` does not name, then loads those it
  // names that are missing (with the model's VAE replacement and embeddings).
  void stage_sd(const SDComponents& want, const GenerateHooks& hooks);
  std::shared_ptr<const PixelPipeline> guide(const std::string& path);
};

// The state behind a Model, for the API's other operations (denoise, animate).
inline Model::Impl& model_impl(const Model& model) { return *model.impl_; }

// A pipeline error as a RequestError naming the option its message starts with ("sigma 9: ..."
// -> field sigma), else field "model" (denoise.cpp).
RequestError as_request_error(const Error& e);
// Runs f(), turning pipeline errors into RequestErrors (as_request_error); RequestError and
// Cancelled pass through.
template <typename F>
void with_request_errors(F&& f) {
  try {
    f();
  } catch (const RequestError&) {
    throw;
  } catch (const Cancelled&) {
    throw;
  } catch (const Error& e) {
    throw as_request_error(e);
  }
}

// Runs a resolved, validated request on each kind of model (model_generate.cpp).
GenerationResult generate_sd(Model::Impl& m, const GenerationRequest& r, const GenerateHooks& hooks);
GenerationResult generate_pixel(Model::Impl& m, const GenerationRequest& r, const GenerateHooks& hooks);
// The pixel pipeline's options for a resolved request: sampler settings, guidance and its guide model
// (model_generate.cpp).
GenerateOptions pixel_options(Model::Impl& m, const GenerationRequest& r);

}  // namespace diffuse
