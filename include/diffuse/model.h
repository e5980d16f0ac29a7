#pragma once
// A loaded model and what it can do: Stable Diffusion folders and single files, class-conditional
// and unconditional pixel or latent UNet / DiT pipelines, behind one handle.
#include <torch/torch.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "diffuse/error.h"
#include "diffuse/request.h"

namespace diffuse {

enum class ModelKind { StableDiffusion, ClassConditional, Unconditional };
// "stable-diffusion", "class-conditional", "unconditional".
std::string to_string(ModelKind kind);

struct ModelInfo {
  std::string name;  // folder or file name
  std::string path;
  ModelKind kind = ModelKind::Unconditional;
  std::string network;      // UNet2DConditionModel, UNet2DModel, DiTTransformer2DModel
  bool latent = false;      // samples in a VAE's latent space
  bool inpainting = false;  // a 9-channel inpainting UNet
  // Stable Diffusion: "SD1", "SD2", "SDXL" or "SDXL refiner" (+ " inpainting"); "" for other kinds.
  std::string architecture;
  std::vector<std::string> classes;
  int width = 0, height = 0;  // native size
  int channels = 3;           // image channels (1 = grey)
  int size_step = 8;          // image sides must be multiples of this
  // The recommended settings (generation_config.json), as a request whose set fields apply.
  GenerationRequest defaults;
};

struct LoadOptions {
  std::string device = "cpu";  // cpu, cuda, cuda:N, auto
  // Compute dtype (requests may ask for another): fp32, bf16, fp16 (Stable Diffusion only) or auto:
  // bf16 on a CPU with native bf16 (AVX-512 BF16 or AMX), fp32 otherwise and on CUDA.
  std::string dtype = "auto";
  std::string weights;                  // Stable Diffusion weight storage: "" (as stored) or "int8"
  std::string lora_dir;                 // LoRA files for GenerationRequest::loras and <lora:...> tags
  std::string embeddings_dir;           // textual-inversion embeddings used when their names occur
  std::vector<std::string> embeddings;  // embedding files always loaded
  std::string prediction;               // single files: epsilon or v_prediction
  std::string model_config;             // single files: a diffusers folder with the component configs
  std::string vae;                      // Stable Diffusion: VAE weights replacing the model's (folder or file)
  bool text_encoder = true;             // false: Stable Diffusion without its text encoder (prompt_embeds only)
  // Stable Diffusion, for a run of one request (the command line): each component is loaded only
  // while a request needs it (text encoders, then the UNet, then the VAE) and released after it,
  // so that peak memory is that of the largest component rather than of all of them. Each request
  // loads again what it needs. Requests with LoRAs, a refiner or an init image load the whole
  // model while they run.
  bool one_shot = false;
  // Whether request fields may name files (guide_model, loras), as on the command line. A server
  // turns this off and maps guide_model names with resolve_guide.
  bool allow_paths = true;
  std::function<std::string(const std::string& name)> resolve_guide;
};

// Progress of a running generation. `step` counts over all batches.
struct ProgressInfo {
  int step = 0, total = 0;
  double elapsed_s = 0, eta_s = 0;
  double sigma = 0;
  torch::Tensor preview;  // [3 or 1, H, W] float in [-1, 1], every preview_every steps; else undefined
};
using ProgressFn = std::function<void(const ProgressInfo&)>;

// Cancels a generation from another thread; honoured at the next step.
class CancelToken {
 public:
  CancelToken() : flag_(std::make_shared<std::atomic<bool>>(false)) {}
  void cancel() const { flag_->store(true); }
  bool cancelled() const { return flag_->load(); }

 private:
  std::shared_ptr<std::atomic<bool>> flag_;
};

struct GenerateHooks {
  ProgressFn progress;
  int preview_every = 0;  // 0 = no previews
  CancelToken cancel;
  std::function<void(const std::string&)> message;  // notices: LoRAs merged, embeddings loaded
  // One-shot models (LoadOptions::one_shot): each component a request loads ("text encoders",
  // "unet", "vae") and the seconds it took, once loaded.
  std::function<void(const std::string& component, double seconds)> loaded;
  // Expert inputs of Stable Diffusion (diffusers' latents= / prompt_embeds=), undefined = none;
  // SDXL also takes pooled_prompt_embeds / negative_pooled_prompt_embeds with them.
  torch::Tensor latents, prompt_embeds, negative_prompt_embeds;
  torch::Tensor pooled_prompt_embeds, negative_pooled_prompt_embeds;
  // Sharded generation across processes (class, unconditional and Stable Diffusion models): this
  // call computes only the batches of batch_size images whose index modulo `shards` is `shard`, and
  // the other images' rows of images, noise and latents are zero; summing the results of shards
  // 0..shards-1 gives the unsharded result exactly (each image depends only on its seed).
  int shard = 0, shards = 1;
};

struct GenerationResult {
  torch::Tensor images;                // [n, C, H, W] float in [-1, 1] nominal, not clamped
  torch::Tensor latents;               // final latents (latent models)
  torch::Tensor noise;                 // the starting noise
  std::vector<int64_t> seeds;          // per image
  std::vector<std::string> infotexts;  // per image: A1111 parameters text
  GenerationRequest request;           // the request as run: defaults filled in, seed resolved
  double seconds = 0;
};

class Model {
 public:
  // Loads a model folder or a Stable Diffusion .safetensors file (.ckpt pickles are refused).
  static Model load(const std::string& path, const LoadOptions& options = {});

  const ModelInfo& info() const;
  // The request with this model's recommended settings and the library defaults filled in.
  GenerationRequest resolve(const GenerationRequest& request) const;
  // validate() plus what depends on the model: fields that do not apply to its kind, class
  // names, sizes (multiples of info().size_step).
  std::vector<FieldError> validate(const GenerationRequest& request) const;
  // Runs one request (throws RequestError when validate() finds problems, Cancelled when the
  // token is cancelled). Calls on one Model are serialised.
  GenerationResult generate(const GenerationRequest& request, const GenerateHooks& hooks = {}) const;

  // Approximate resident size of the weights in bytes.
  int64_t weight_bytes() const;

  struct Impl;  // internal

 private:
  std::shared_ptr<Impl> impl_;
  friend Impl& model_impl(const Model& model);  // src/api
};

struct SamplerInfo {
  std::string name, summary, a1111;  // a1111: A1111's display name ("" = none)
  int order = 1;
  bool stochastic = false;
};
struct ScheduleInfo {
  std::string name, summary;
};
std::vector<SamplerInfo> list_samplers();
std::vector<ScheduleInfo> list_schedules();

// [C, H, W] float image in [-1, 1] -> PNG (with a "parameters" text chunk) or JPEG bytes.
std::string encode_image(const torch::Tensor& chw, const std::string& format, const std::string& parameters = "");
// PNG or JPEG bytes -> [C, H, W] float in [-1, 1] with `channels` channels (alpha over white).
torch::Tensor decode_image(const std::string& bytes, int channels, const std::string& what);
// The "parameters" text of PNG bytes ("" when none).
std::string png_parameters(const std::string& png_bytes);

}  // namespace diffuse
