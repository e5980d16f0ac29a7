#include "pipelines/ldm_convert.h"

#include <algorithm>
#include <set>
#include <unordered_map>

#include "core/error.h"

namespace diffuse {

namespace {

const std::string kUnetPrefix = "model.diffusion_model.";
const std::string kVaePrefix = "first_stage_model.";
const std::string kClipPrefix = "cond_stage_model.transformer.";  // + text_model.*
const std::string kOpenClipPrefix = "cond_stage_model.model.";
const std::string kSgmPrefix = "conditioner.embedders.";  // SDXL: N.transformer.* (CLIP-L), N.model.* (bigG)

using Pairs = std::vector<std::pair<std::string, std::string>>;  // LDM name, diffusers name

// Renames inside a module, LDM -> diffusers.
const Pairs kUnetResnet = {{"in_layers.0", "norm1"},  {"in_layers.2", "conv1"},  {"emb_layers.1", "time_emb_proj"},
                           {"out_layers.0", "norm2"}, {"out_layers.3", "conv2"}, {"skip_connection", "conv_shortcut"}};
const Pairs kVaeResnet = {{"nin_shortcut", "conv_shortcut"}};
const Pairs kVaeAttention = {
    {"norm", "group_norm"}, {"q", "to_q"}, {"k", "to_k"}, {"v", "to_v"}, {"proj_out", "to_out.0"}};
const Pairs kNone = {};

// One module: its LDM path, its diffusers path and the renames of its tensors.
struct Rule {
  std::string ldm, diffusers;
  const Pairs* inner = &kNone;
  bool attention_1x1 = false;  // VAE attention: LDM 1x1 convs are diffusers linears
};

struct Table {
  std::vector<Rule> rules;
  std::unordered_map<std::string, size_t> by_ldm, by_diffusers;
  void add(std::string ldm, std::string diff, const Pairs* inner = &kNone, bool attn = false) {
    by_ldm[ldm] = rules.size();
    by_diffusers[diff] = rules.size();
    rules.push_back({std::move(ldm), std::move(diff), inner, attn});
  }
  // Maps `key` (forward: LDM -> diffusers); false when no module matches.
  bool map(const std::string& key, bool forward, std::string* out, const Rule** rule) const {
    const auto& index = forward ? by_ldm : by_diffusers;
    for (size_t pos = key.rfind('.'); pos != std::string::npos && pos > 0; pos = key.rfind('.', pos - 1)) {
      auto it = index.find(key.substr(0, pos));
      if (it == index.end()) continue;
      const Rule& r = rules[it->second];
      std::string rest = key.substr(pos + 1);
      for (const auto& [l, d] : *r.inner) {
        const std::string& from = forward ? l : d;
        const std::string& to = forward ? d : l;
        if (rest.compare(0, from.size() + 1, from + ".") == 0) {
          rest = to + rest.substr(from.size());
          break;
        }
      }
      *out = (forward ? r.diffusers : r.ldm) + "." + rest;
      *rule = &r;
      return true;
    }
    return false;
  }
};

bool has_attention(const std::string& block_type) { return block_type.rfind("CrossAttn", 0) == 0; }

Table unet_table(const UNet2DConditionConfig& c) {
  Table t;
  const auto n = static_cast<int>(c.num_blocks());
  const auto L = static_cast<int>(c.layers_per_block.at(0));
  t.add("time_embed.0", "time_embedding.linear_1");
  t.add("time_embed.2", "time_embedding.linear_2");
  t.add("input_blocks.0.0", "conv_in");
  t.add("out.0", "conv_norm_out");
  t.add("out.2", "conv_out");
  if (c.text_time()) {  // SDXL's added conditioning MLP
    t.add("label_emb.0.0", "add_embedding.linear_1");
    t.add("label_emb.0.2", "add_embedding.linear_2");
  }
  int idx = 1;
  for (int b = 0; b < n; ++b) {
    const std::string db = "down_blocks." + std::to_string(b);
    for (int l = 0; l < L; ++l, ++idx) {
      const std::string ib = "input_blocks." + std::to_string(idx);
      t.add(ib + ".0", db + ".resnets." + std::to_string(l), &kUnetResnet);
      if (has_attention(c.down_block_types[b])) t.add(ib + ".1", db + ".attentions." + std::to_string(l));
    }
    if (b != n - 1) t.add("input_blocks." + std::to_string(idx++) + ".0.op", db + ".downsamplers.0.conv");
  }
  t.add("middle_block.0", "mid_block.resnets.0", &kUnetResnet);
  t.add("middle_block.1", "mid_block.attentions.0");
  t.add("middle_block.2", "mid_block.resnets.1", &kUnetResnet);
  idx = 0;
  for (int b = 0; b < n; ++b) {
    const std::string ub = "up_blocks." + std::to_string(b);
    for (int l = 0; l <= L; ++l, ++idx) {
      const std::string ob = "output_blocks." + std::to_string(idx);
      t.add(ob + ".0", ub + ".resnets." + std::to_string(l), &kUnetResnet);
      int k = 1;
      if (has_attention(c.up_block_types[b]))
        t.add(ob + "." + std::to_string(k++), ub + ".attentions." + std::to_string(l));
      if (l == L && b != n - 1) t.add(ob + "." + std::to_string(k) + ".conv", ub + ".upsamplers.0.conv");
    }
  }
  return t;
}

Table vae_table(const AutoencoderKLConfig& c) {
  Table t;
  const auto n = static_cast<int>(c.block_out_channels.size());
  const auto L = static_cast<int>(c.layers_per_block);
  for (const std::string part : {"encoder", "decoder"}) {
    t.add(part + ".conv_in", part + ".conv_in");
    t.add(part + ".conv_out", part + ".conv_out");
    t.add(part + ".norm_out", part + ".conv_norm_out");
    t.add(part + ".mid.block_1", part + ".mid_block.resnets.0", &kVaeResnet);
    t.add(part + ".mid.block_2", part + ".mid_block.resnets.1", &kVaeResnet);
    t.add(part + ".mid.attn_1", part + ".mid_block.attentions.0", &kVaeAttention, true);
  }
  for (int i = 0; i < n; ++i) {
    const std::string d = "encoder.down." + std::to_string(i), db = "encoder.down_blocks." + std::to_string(i);
    for (int j = 0; j < L; ++j)
      t.add(d + ".block." + std::to_string(j), db + ".resnets." + std::to_string(j), &kVaeResnet);
    if (i != n - 1) t.add(d + ".downsample.conv", db + ".downsamplers.0.conv");
    const std::string u = "decoder.up." + std::to_string(i), ub = "decoder.up_blocks." + std::to_string(n - 1 - i);
    for (int j = 0; j <= L; ++j)
      t.add(u + ".block." + std::to_string(j), ub + ".resnets." + std::to_string(j), &kVaeResnet);
    if (i != 0) t.add(u + ".upsample.conv", ub + ".upsamplers.0.conv");
  }
  t.add("quant_conv", "quant_conv");
  t.add("post_quant_conv", "post_quant_conv");
  return t;
}

// Tensors under `prefix`, with the prefix removed.
TensorMap strip(const TensorMap& all, const std::string& prefix) {
  TensorMap out;
  for (auto it = all.lower_bound(prefix); it != all.end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it)
    out[it->first.substr(prefix.size())] = it->second;
  return out;
}

const torch::Tensor& need(const TensorMap& t, const std::string& key, const std::string& what) {
  auto it = t.find(key);
  if (it == t.end()) throw Error(what + ": tensor '" + key + "' not found: unknown architecture");
  return it->second;
}

bool has_prefix(const TensorMap& t, const std::string& prefix) {
  auto it = t.lower_bound(prefix);
  return it != t.end() && it->first.compare(0, prefix.size(), prefix) == 0;
}

int count_indexed(const TensorMap& t, const std::string& head, const std::string& tail = ".") {
  int n = 0;
  while (has_prefix(t, head + std::to_string(n) + tail)) ++n;
  return n;
}

template <typename Config>
Config with_overrides(const Config& c, const nlohmann::json& over) {
  if (over.empty()) return c;
  auto j = c.to_json();
  j.merge_patch(over);
  return Config::from_json(j);
}

UNet2DConditionConfig detect_unet(const TensorMap& t, const std::string& src) {
  const std::string what = src + " (UNet)";
  UNet2DConditionConfig c;
  const auto& conv_in = need(t, "input_blocks.0.0.weight", what);
  c.in_channels = conv_in.size(1);
  c.out_channels = need(t, "out.2.weight", what).size(0);
  std::vector<int64_t> widths, depths;
  std::vector<bool> attn;
  std::vector<int> layers{0};
  int64_t context = 0;
  bool linear_proj = false;
  for (int i = 1; has_prefix(t, "input_blocks." + std::to_string(i) + "."); ++i) {
    const std::string ib = "input_blocks." + std::to_string(i);
    if (t.count(ib + ".0.op.weight")) {
      layers.push_back(0);
      continue;
    }
    const int64_t w = need(t, ib + ".0.out_layers.3.weight", what).size(0);
    const bool a = has_prefix(t, ib + ".1.");
    if (layers.back() == 0) {
      widths.push_back(w);
      attn.push_back(a);
      depths.push_back(a ? count_indexed(t, ib + ".1.transformer_blocks.") : 1);
    }
    ++layers.back();
    if (a && context == 0) {
      context = need(t, ib + ".1.transformer_blocks.0.attn2.to_k.weight", what).size(1);
      linear_proj = need(t, ib + ".1.proj_in.weight", what).dim() == 2;
    }
  }
  if (widths.empty() || layers.size() != widths.size()) throw Error(what + ": unexpected input_blocks layout");
  for (int l : layers)
    if (l != layers[0]) throw Error(what + ": levels with different numbers of resnets are not supported");
  c.block_out_channels = widths;
  c.layers_per_block = layers[0];
  c.down_block_types.clear();
  c.up_block_types.clear();
  for (size_t b = 0; b < widths.size(); ++b) {
    c.down_block_types.push_back(attn[b] ? "CrossAttnDownBlock2D" : "DownBlock2D");
    c.up_block_types.insert(c.up_block_types.begin(), attn[b] ? "CrossAttnUpBlock2D" : "UpBlock2D");
  }
  if (context == 0) throw Error(what + ": no cross-attention found: unknown architecture");
  c.cross_attention_dim = context;
  c.use_linear_projection = linear_proj;
  // transformer depth per level (SDXL: 1 / 2 / 10); one value when every attention level agrees
  bool same_depth = true;
  for (size_t b = 0; b < depths.size(); ++b)
    if (attn[b] && depths[b] != depths[std::find(attn.begin(), attn.end(), true) - attn.begin()]) same_depth = false;
  if (same_depth) {
    c.transformer_layers_per_block = depths[std::find(attn.begin(), attn.end(), true) - attn.begin()];
  } else {
    PerBlockInt d;
    d.list = true;
    d.values = depths;
    c.transformer_layers_per_block = d;
  }
  const bool xl = t.count("label_emb.0.0.weight") > 0;
  if (xl) {  // SDXL: pooled text embeddings + time ids through label_emb (add_embedding)
    c.addition_embed_type = "text_time";
    c.addition_time_embed_dim = 256;
    c.projection_class_embeddings_input_dim = need(t, "label_emb.0.0.weight", what).size(1);
  }
  if (context == 1024 || xl) {  // SD 2.x and SDXL: 64-wide heads
    PerBlockInt heads;
    heads.list = true;
    for (int64_t w : widths) heads.values.push_back(w / 64);
    c.attention_head_dim = heads;
  } else {
    c.attention_head_dim = PerBlockInt(8);
  }
  c.sample_size = {xl ? 128 : 64};
  return c;
}

AutoencoderKLConfig detect_vae(const TensorMap& t, const std::string& src) {
  const std::string what = src + " (VAE)";
  AutoencoderKLConfig c;
  const int n = count_indexed(t, "encoder.down.");
  if (n == 0) throw Error(what + ": no encoder.down blocks: unknown architecture");
  c.block_out_channels.clear();
  for (int i = 0; i < n; ++i)
    c.block_out_channels.push_back(
        need(t, "encoder.down." + std::to_string(i) + ".block.0.conv1.weight", what).size(0));
  c.layers_per_block = count_indexed(t, "encoder.down.0.block.");
  c.down_block_types.assign(static_cast<size_t>(n), "DownEncoderBlock2D");
  c.up_block_types.assign(static_cast<size_t>(n), "UpDecoderBlock2D");
  c.in_channels = need(t, "encoder.conv_in.weight", what).size(1);
  c.out_channels = need(t, "decoder.conv_out.weight", what).size(0);
  c.latent_channels = need(t, "decoder.conv_in.weight", what).size(1);
  c.sample_size = 512;
  return c;
}

CLIPTextConfig detect_clip(const TensorMap& t, bool openclip, const std::string& src) {
  const std::string what = src + " (text encoder)";
  CLIPTextConfig c;
  const auto& tok = need(t, "text_model.embeddings.token_embedding.weight", what);
  c.vocab_size = tok.size(0);
  c.hidden_size = tok.size(1);
  c.max_position_embeddings = need(t, "text_model.embeddings.position_embedding.weight", what).size(0);
  c.num_hidden_layers = count_indexed(t, "text_model.encoder.layers.");
  c.intermediate_size = need(t, "text_model.encoder.layers.0.mlp.fc1.weight", what).size(0);
  c.num_attention_heads = c.hidden_size / 64;
  c.hidden_act = openclip ? "gelu" : "quick_gelu";
  c.bos_token_id = 0;  // the SD text-encoder configs (pre-4.31 transformers): eos by argmax
  c.eos_token_id = 2;
  if (t.count("text_projection.weight")) {  // SDXL's OpenCLIP bigG: CLIPTextModelWithProjection
    c.with_projection = true;
    c.projection_dim = t.at("text_projection.weight").size(0);
  }
  return c;
}

// OpenCLIP text tower -> transformers CLIPTextModel names. SD 2.x (`xl` false): the last resblock
// and text_projection are dropped (SD 2.x conditions on the penultimate layer, as diffusers'
// 23-layer text encoder does). SDXL: every layer is kept and text_projection (x @ P) becomes the
// Linear weight text_projection.weight = P^T (CLIPTextModelWithProjection), for the pooled output.
TensorMap convert_openclip(const TensorMap& t, const std::string& prefix, bool xl, std::vector<std::string>* ignored,
                           std::vector<std::string>* unknown) {
  TensorMap out;
  const int blocks = count_indexed(t, "transformer.resblocks.");
  const Pairs renames = {{"ln_1", "layer_norm1"},
                         {"ln_2", "layer_norm2"},
                         {"mlp.c_fc", "mlp.fc1"},
                         {"mlp.c_proj", "mlp.fc2"},
                         {"attn.out_proj", "self_attn.out_proj"}};
  for (const auto& [k, v] : t) {
    if (k == "token_embedding.weight") {
      out["text_model.embeddings.token_embedding.weight"] = v;
    } else if (k == "positional_embedding") {
      out["text_model.embeddings.position_embedding.weight"] = v;
    } else if (k == "ln_final.weight" || k == "ln_final.bias") {
      out["text_model.final_layer_norm." + k.substr(9)] = v;
    } else if (k == "text_projection" && xl) {
      out["text_projection.weight"] = v.t();
    } else if (k == "text_projection" || k == "logit_scale") {
      ignored->push_back(prefix + k);
    } else if (k.rfind("transformer.resblocks.", 0) == 0) {
      const auto dot = k.find('.', 22);
      const int i = std::stoi(k.substr(22, dot - 22));
      const std::string rest = k.substr(dot + 1), layer = "text_model.encoder.layers." + std::to_string(i) + ".";
      if (i == blocks - 1 && !xl) {
        ignored->push_back(prefix + k);
        continue;
      }
      if (rest == "attn.in_proj_weight" || rest == "attn.in_proj_bias") {
        auto qkv = v.chunk(3, 0);
        const std::string kind = rest == "attn.in_proj_weight" ? "weight" : "bias";
        out[layer + "self_attn.q_proj." + kind] = qkv[0];
        out[layer + "self_attn.k_proj." + kind] = qkv[1];
        out[layer + "self_attn.v_proj." + kind] = qkv[2];
        continue;
      }
      bool done = false;
      for (const auto& [from, to] : renames)
        if (rest.compare(0, from.size() + 1, from + ".") == 0) {
          out[layer + to + rest.substr(from.size())] = v;
          done = true;
          break;
        }
      if (!done) unknown->push_back(prefix + k);
    } else {
      unknown->push_back(prefix + k);
    }
  }
  return out;
}

std::string list(const std::vector<std::string>& keys) {
  std::string s;
  for (size_t i = 0; i < keys.size() && i < 20; ++i) s += (i ? ", " : "") + keys[i];
  if (keys.size() > 20) s += ", ... (" + std::to_string(keys.size()) + " in all)";
  return s;
}

}  // namespace

LdmCheckpoint convert_ldm(const TensorMap& all, const std::string& source, const LdmConfigOverrides& over) {
  LdmCheckpoint ck;
  auto unet_t = strip(all, kUnetPrefix), vae_t = strip(all, kVaePrefix);
  auto clip_t = strip(all, kClipPrefix), openclip_t = strip(all, kOpenClipPrefix);
  // SDXL (SGM naming): conditioner.embedders.N.transformer.* is CLIP ViT-L (HF names),
  // conditioner.embedders.N.model.* OpenCLIP ViT-bigG; a refiner has only the latter.
  TensorMap sgm_clip, sgm_openclip;
  std::string sgm_clip_prefix, sgm_openclip_prefix;
  std::set<std::string> embedders;  // "conditioner.embedders.N."
  for (auto it = all.lower_bound(kSgmPrefix); it != all.end() && it->first.rfind(kSgmPrefix, 0) == 0; ++it) {
    const auto dot = it->first.find('.', kSgmPrefix.size());
    if (dot != std::string::npos) embedders.insert(it->first.substr(0, dot + 1));
  }
  for (const auto& e : embedders) {
    if (has_prefix(all, e + "transformer.")) {
      sgm_clip_prefix = e + "transformer.";
      sgm_clip = strip(all, sgm_clip_prefix);
    } else if (has_prefix(all, e + "model.")) {
      sgm_openclip_prefix = e + "model.";
      sgm_openclip = strip(all, sgm_openclip_prefix);
    }
  }
  ck.xl = !sgm_openclip.empty();
  std::vector<std::string> missing;
  if (unet_t.empty()) missing.push_back("UNet (" + kUnetPrefix + "*)");
  if (vae_t.empty()) missing.push_back("VAE (" + kVaePrefix + "*)");
  if (clip_t.empty() && openclip_t.empty() && !ck.xl)
    missing.push_back("text encoder (" + kClipPrefix + "text_model.*, " + kOpenClipPrefix + "* or " + kSgmPrefix +
                      "N.model.*)");
  if (!missing.empty()) {
    std::string m;
    for (const auto& s : missing) m += (m.empty() ? "" : ", ") + s;
    throw Error(source + ": not a Stable Diffusion 1.x/2.x/XL checkpoint: missing " + m);
  }
  ck.unet_config = with_overrides(detect_unet(unet_t, source), over.unet);
  ck.unet_config.validate();
  ck.vae_config = detect_vae(vae_t, source);
  if (ck.xl) ck.vae_config.scaling_factor = 0.13025;  // SDXL's VAE (force_upcast: it runs in float32)
  ck.vae_config = with_overrides(ck.vae_config, over.vae);
  ck.vae_config.validate();
  std::vector<std::string> unknown;
  auto take_clip = [&](const TensorMap& t, const std::string& prefix) {
    TensorMap out;
    for (auto& [k, v] : t) {
      if (k == "text_model.embeddings.position_ids")
        ck.ignored.push_back(prefix + k);
      else
        out[k] = v;
    }
    return out;
  };
  if (ck.xl) {
    if (!ck.unet_config.text_time())
      throw Error(source + ": SDXL text encoders (" + kSgmPrefix +
                  "*) but no label_emb in the UNet: unknown architecture");
    if (!sgm_clip.empty()) {
      ck.text = take_clip(sgm_clip, sgm_clip_prefix);
      ck.text_config = with_overrides(detect_clip(ck.text, false, source), over.text);
      ck.text_config.validate();
    }
    ck.text_2 = convert_openclip(sgm_openclip, sgm_openclip_prefix, true, &ck.ignored, &unknown);
    ck.text_2_config = with_overrides(detect_clip(ck.text_2, true, source), over.text_2);
    ck.text_2_config.validate();
    if (!ck.text_2_config.with_projection)
      throw Error(source + ": " + sgm_openclip_prefix + "text_projection not found (SDXL's pooled text embeddings)");
    const int64_t k = ck.unet_config.num_time_ids(ck.text_2_config.projection_dim);
    if (k != 5 && k != 6)
      throw Error(source + ": the UNet's label_emb takes " +
                  std::to_string(ck.unet_config.projection_class_embeddings_input_dim.value_or(0)) + " features, not " +
                  std::to_string(ck.text_2_config.projection_dim) +
                  " pooled text features plus 5 or 6 time ids: unknown architecture");
    ck.architecture = k == 5 ? "SDXL refiner" : "SDXL";
    if (k == 6 && ck.text.empty())
      throw Error(source + ": an SDXL base needs its CLIP ViT-L text encoder (" + kSgmPrefix + "0.transformer.*)");
  } else {
    ck.openclip = clip_t.empty();
    if (ck.openclip)
      ck.text = convert_openclip(openclip_t, kOpenClipPrefix, false, &ck.ignored, &unknown);
    else
      ck.text = take_clip(clip_t, kClipPrefix);
    ck.text_config = with_overrides(detect_clip(ck.text, ck.openclip, source), over.text);
    ck.text_config.validate();
    ck.architecture = ck.unet_config.cross_attention_dim.at(0) == 1024 ? "SD2" : "SD1";
  }
  if (ck.unet_config.in_channels == 9) ck.architecture += " inpainting";

  auto convert = [&](const TensorMap& t, const Table& table, const std::string& prefix, TensorMap* out) {
    for (const auto& [k, v] : t) {
      std::string name;
      const Rule* rule = nullptr;
      if (!table.map(k, true, &name, &rule)) {
        unknown.push_back(prefix + k);
        continue;
      }
      (*out)[name] = rule->attention_1x1 && v.dim() == 4 ? v.flatten(1) : v;
    }
  };
  convert(unet_t, unet_table(ck.unet_config), kUnetPrefix, &ck.unet);
  convert(vae_t, vae_table(ck.vae_config), kVaePrefix, &ck.vae);
  // everything else: the LDM noise-schedule buffers are known; anything else is reported
  for (const auto& [k, v] : all) {
    if (k.rfind(kUnetPrefix, 0) == 0 || k.rfind(kVaePrefix, 0) == 0 || k.rfind("cond_stage_model.", 0) == 0) {
      if (k.rfind("cond_stage_model.", 0) == 0 && k.rfind(kClipPrefix, 0) != 0 && k.rfind(kOpenClipPrefix, 0) != 0)
        unknown.push_back(k);
      continue;
    }
    if (k.rfind(kSgmPrefix, 0) == 0) {  // SDXL text encoders, converted above
      if ((sgm_clip_prefix.empty() || k.rfind(sgm_clip_prefix, 0) != 0) &&
          (sgm_openclip_prefix.empty() || k.rfind(sgm_openclip_prefix, 0) != 0))
        unknown.push_back(k);
      continue;
    }
    static const char* kSchedule[] = {"betas",
                                      "alphas_cumprod",
                                      "alphas_cumprod_prev",
                                      "sqrt_alphas_cumprod",
                                      "sqrt_one_minus_alphas_cumprod",
                                      "log_one_minus_alphas_cumprod",
                                      "sqrt_recip_alphas_cumprod",
                                      "sqrt_recipm1_alphas_cumprod",
                                      "posterior_variance",
                                      "posterior_log_variance_clipped",
                                      "posterior_mean_coef1",
                                      "posterior_mean_coef2",
                                      "logvar",
                                      "model_ema.decay",
                                      "model_ema.num_updates",
                                      "denoiser.sigmas",
                                      "denoiser.log_sigmas"};
    const std::string& key = k;  // (a structured binding cannot be captured in C++17)
    if (std::find_if(std::begin(kSchedule), std::end(kSchedule), [&](const char* s) { return key == s; }) !=
            std::end(kSchedule) ||
        k.rfind("model_ema.", 0) == 0)
      ck.ignored.push_back(k);
    else
      unknown.push_back(k);
  }
  if (!unknown.empty())
    throw Error(source + ": " + std::to_string(unknown.size()) +
                " tensors of no known Stable Diffusion module: " + list(unknown));
  return ck;
}

TensorMap convert_ldm_vae(const TensorMap& tensors, const AutoencoderKLConfig& config, const std::string& source) {
  const Table table = vae_table(config);
  TensorMap out;
  std::vector<std::string> unknown;
  for (const auto& [k, v] : tensors) {
    std::string name;
    const Rule* rule = nullptr;
    if (!table.map(k, true, &name, &rule)) {
      unknown.push_back(k);
      continue;
    }
    out[name] = rule->attention_1x1 && v.dim() == 4 ? v.flatten(1) : v;
  }
  if (!unknown.empty())
    throw Error(source + ": " + std::to_string(unknown.size()) + " tensors of no VAE module: " + list(unknown));
  return out;
}

TensorMap to_ldm(const UNet2DConditionConfig& unet_config, const TensorMap& unet, const AutoencoderKLConfig& vae_config,
                 const TensorMap& vae, const TensorMap& text) {
  TensorMap out;
  auto back = [&](const TensorMap& t, const Table& table, const std::string& prefix) {
    for (const auto& [k, v] : t) {
      std::string name;
      const Rule* rule = nullptr;
      if (!table.map(k, false, &name, &rule)) throw Error("to_ldm: no LDM name for '" + k + "'");
      out[prefix + name] = rule->attention_1x1 && v.dim() == 2 ? v.reshape({v.size(0), v.size(1), 1, 1}) : v;
    }
  };
  back(unet, unet_table(unet_config), kUnetPrefix);
  back(vae, vae_table(vae_config), kVaePrefix);
  for (const auto& [k, v] : text) out[kClipPrefix + k] = v;
  return out;
}

}  // namespace diffuse
