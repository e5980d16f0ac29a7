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
}

void AdamW::zero_grad() {
  for (auto& p : params_) {
    auto& g = p.second.mutable_grad();
    if (g.defined()) g.zero_();
  }
}

void AdamW::step(double lr) {
  torch::NoGradGuard ng;
  ++t_;
  const double bc1 = 1.0 - std::pow(opt_.beta1, static_cast<double>(t_));
  const double bc2 = 1.0 - std::pow(opt_.beta2, static_cast<double>(t_));
  const double step_size = lr / bc1;
  const double bc2_sqrt = std::sqrt(bc2);
  const AdamWStep fused{float(opt_.beta1),       float(opt_.beta2),       float(opt_.eps),
                        float(1.0 - opt_.beta1), float(1.0 - opt_.beta2), float(1.0 - lr * opt_.weight_decay),
                        float(step_size),        float(bc2_sqrt)};
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i].second;
    const auto& g = p.grad();
    if (!g.defined()) continue;
    if (adamw_step_fused(p, g, m_[i], v_[i], fused)) continue;
    if (opt_.weight_decay != 0) p.mul_(1.0 - lr * opt_.weight_decay);
    m_[i].mul_(opt_.beta1).add_(g, 1.0 - opt_.beta1);
    v_[i].mul_(opt_.beta2).addcmul_(g, g, 1.0 - opt_.beta2);
    auto denom = (v_[i].sqrt() / bc2_sqrt).add_(opt_.eps);
    p.addcdiv_(m_[i], denom, -step_size);
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

double clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  torch::NoGradGuard ng;
  std::vector<torch::Tensor> norms;
  for (const auto& p : params)
    if (p.grad().defined()) norms.push_back(p.grad().to(torch::kFloat32).norm().unsqueeze(0));
  if (norms.empty()) return 0.0;
  double total = torch::cat(norms).norm().item<double>();
  if (max_norm > 0 && total > max_norm && std::isfinite(total)) {
    double scale = max_norm / (total + 1e-6);
    for (const auto& p : params)
      if (p.grad().defined()) p.grad().mul_(scale);
  }
  return total;
}

}  // namespace diffuse
