#include "models/diffusion_net.h"

#include <algorithm>

#include "core/error.h"
#include "models/model_io.h"

namespace diffuse {

DiffusionNet::DiffusionNet(UNet2DModel unet) : unet_(std::move(unet)) {}
DiffusionNet::DiffusionNet(DiTTransformer2DModel dit) : dit_(std::move(dit)) {}

DiffusionNet DiffusionNet::from_config(const nlohmann::json& j, const std::string& source) {
  const std::string cls = j.value("_class_name", std::string());
  try {
    if (cls == "UNet2DModel") return DiffusionNet(UNet2DModel(UNet2DConfig::from_json(j)));
    if (cls == "DiTTransformer2DModel" || cls == "Transformer2DModel") {
      DiTConfig c = DiTConfig::from_json(j);
      c.validate();
      return DiffusionNet(DiTTransformer2DModel(c));
    }
  } catch (const Error& e) {
    throw Error(source + ": " + e.what());
  }
  throw Error(source + ": _class_name " + (cls.empty() ? std::string("(missing)") : cls) +
              " is not a denoising network (expected UNet2DModel or DiTTransformer2DModel)");
}

std::string DiffusionNet::class_name() const {
  if (!defined()) throw Error("DiffusionNet: no model");
  return is_dit() ? "DiTTransformer2DModel" : "UNet2DModel";
}

torch::Tensor DiffusionNet::forward(const torch::Tensor& x, const torch::Tensor& t,
                                    const torch::Tensor& class_labels) const {
  if (dit_) {
    auto out = dit_.ptr()->forward(x, t, class_labels);
    const int64_t c = dit_->config().in_channels;
    return out.size(1) == c ? out : out.slice(1, 0, c);
  }
  if (!unet_) throw Error("DiffusionNet: no model");
  auto out = unet_.ptr()->forward(x, t, class_labels);
  const int64_t c = unet_->config().in_channels;
  return out.size(1) > c ? out.slice(1, 0, c) : out;
}

torch::nn::Module& DiffusionNet::module() const {
  if (dit_) return *dit_.ptr();
  if (!unet_) throw Error("DiffusionNet: no model");
  return *unet_.ptr();
}

int64_t DiffusionNet::in_channels() const { return dit_ ? dit_->config().in_channels : unet_->config().in_channels; }

int64_t DiffusionNet::sample_size() const {
  if (dit_) return dit_->config().sample_size;
  const auto& s = unet_->config().sample_size;
  if (s.empty()) throw Error("the UNet config has no sample_size");
  return s[0];
}

int64_t DiffusionNet::size_multiple() const {
  if (dit_) return dit_->config().patch_size;
  return int64_t(1) << std::max<int64_t>(0, static_cast<int64_t>(unet_->config().block_out_channels.size()) - 1);
}

int64_t DiffusionNet::class_embeddings() const {
  if (dit_) return dit_->config().num_embeds_ada_norm + 1;
  return unet_->config().num_class_embeds.value_or(0);
}

int64_t DiffusionNet::builtin_null_class() const { return dit_ ? dit_->config().num_embeds_ada_norm : -1; }

nlohmann::json DiffusionNet::config_json() const { return dit_ ? dit_->config().to_json() : unet_->config().to_json(); }

int64_t DiffusionNet::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : module().parameters()) n += p.numel();
  return n;
}

DiffusionNet DiffusionNet::clone_architecture() const {
  if (dit_) return DiffusionNet(DiTTransformer2DModel(dit_->config()));
  return DiffusionNet(UNet2DModel(unet_->config()));
}

void DiffusionNet::save(const std::string& dir) const {
  if (dit_)
    save_dit(dit_, dir);
  else
    save_unet2d(unet_, dir);
}

DiffusionNet load_diffusion_net(const std::string& dir) {
  const auto j = model_io::read_config(dir, "model");
  const std::string cls = j.value("_class_name", std::string());
  if (cls == "UNet2DModel") return DiffusionNet(load_unet2d(dir));
  if (cls == "DiTTransformer2DModel" || cls == "Transformer2DModel") return DiffusionNet(load_dit(dir));
  throw Error(dir + "/config.json: _class_name " + (cls.empty() ? std::string("(missing)") : cls) +
              " is not a denoising network (expected UNet2DModel or DiTTransformer2DModel)");
}

}  // namespace diffuse
