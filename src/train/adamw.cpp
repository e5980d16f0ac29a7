#include "train/adamw.h"

#include <cmath>

#include "core/error.h"
#include "train/fused_updates.h"

namespace diffuse {

AdamW::AdamW(std::vector<std::pair<std::string, torch::Tensor>> params, Options opt)
    : params_(std::move(params)), opt_(opt) {
  for (const auto& p : params_) {
    m_.push_back(torch::zeros_like(p.second));
    v_.push_back(torch::zeros_like(p.second));
  }
  mirrors_.resize(params_.size());
}

void AdamW::mirror(const torch::Tensor& param, torch::Tensor copy) {
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!params_[i].second.is_same(param)) continue;
    if (copy.scalar_type() != torch::kBFloat16 || copy.sizes() != param.sizes())
      throw Error("AdamW: the mirror of '" + params_[i].first + "' must be a bf16 tensor of its shape");
    mirrors_[i] = std::move(copy);
    return;
  }
  throw Error("AdamW: mirror of a tensor that is not one of its parameters");
}

void AdamW::zero_grad() {
  for (auto& p : params_) p.second.mutable_grad() = torch::Tensor();
}

void AdamW::step(double lr, double grad_scale) {
  torch::NoGradGuard ng;
  ++t_;
  const double bc1 = 1.0 - std::pow(opt_.beta1, static_cast<double>(t_));
  const double bc2 = 1.0 - std::pow(opt_.beta2, static_cast<double>(t_));
  const double step_size = lr / bc1;
  const double bc2_sqrt = std::sqrt(bc2);
  const AdamWStep fused{float(opt_.beta1),       float(opt_.beta2),       float(opt_.eps),
                        float(1.0 - opt_.beta1), float(1.0 - opt_.beta2), float(1.0 - lr * opt_.weight_decay),
                        float(step_size),        float(bc2_sqrt),         float(grad_scale)};
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i].second;
    if (!p.grad().defined()) continue;
    if (adamw_step_fused(p, p.grad(), m_[i], v_[i], fused, mirrors_[i])) continue;
    auto g = p.grad().to(p.scalar_type());
    if (grad_scale != 1.0) g = g.mul(grad_scale);
    if (opt_.weight_decay != 0) p.mul_(1.0 - lr * opt_.weight_decay);
    m_[i].mul_(opt_.beta1).add_(g, 1.0 - opt_.beta1);
    v_[i].mul_(opt_.beta2).addcmul_(g, g, 1.0 - opt_.beta2);
    auto denom = (v_[i].sqrt() / bc2_sqrt).add_(opt_.eps);
    p.addcdiv_(m_[i], denom, -step_size);
    if (mirrors_[i].defined()) mirrors_[i].copy_(p);
  }
}

std::map<std::string, torch::Tensor> AdamW::state() const {
  std::map<std::string, torch::Tensor> st;
  for (size_t i = 0; i < params_.size(); ++i) {
    st[params_[i].first + ".exp_avg"] = m_[i];
    st[params_[i].first + ".exp_avg_sq"] = v_[i];
  }
  return st;
}

void AdamW::load_state(const std::map<std::string, torch::Tensor>& st, int64_t steps, const std::string& source) {
  torch::NoGradGuard ng;
  for (size_t i = 0; i < params_.size(); ++i) {
    for (auto [suffix, dst] : {std::pair<const char*, torch::Tensor*>{".exp_avg", &m_[i]}, {".exp_avg_sq", &v_[i]}}) {
      auto it = st.find(params_[i].first + suffix);
      if (it == st.end()) throw Error(source + ": optimizer state lacks '" + params_[i].first + suffix + "'");
      if (it->second.sizes() != dst->sizes())
        throw Error(source + ": optimizer state '" + it->first + "' has the wrong shape");
      dst->copy_(it->second);
    }
  }
  t_ = steps;
}

GradNorm grad_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  torch::NoGradGuard ng;
  std::vector<torch::Tensor> norms;
  for (const auto& p : params)
    if (p.grad().defined()) norms.push_back(p.grad().to(torch::kFloat32).norm().unsqueeze(0));
  GradNorm out;
  if (norms.empty()) return out;
  out.norm = torch::cat(norms).norm().item<double>();
  if (max_norm > 0 && out.norm > max_norm && std::isfinite(out.norm)) out.scale = max_norm / (out.norm + 1e-6);
  return out;
}

double clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  const GradNorm n = grad_norm(params, max_norm);
  if (n.scale == 1.0) return n.norm;
  torch::NoGradGuard ng;
  for (auto p : params) {
    if (!p.grad().defined()) continue;
    if (p.grad().scalar_type() == p.scalar_type())
      p.grad().mul_(n.scale);
    else  // a bf16 gradient of a float32 parameter is scaled in float32, as autocast's would be
      p.mutable_grad() = p.grad().to(p.scalar_type()).mul_(n.scale);
  }
  return n.norm;
}

}  // namespace diffuse
