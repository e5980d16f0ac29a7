// Compiled with OpenMP (src/nn/CMakeLists.txt), so that at::parallel_for runs on the OpenMP team
// libtorch's own kernels use rather than serially, and outside the unity build.
#include "nn/group_norm.h"

#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "nn/bf16_tensor.h"
#include "nn/vector_math.h"

namespace diffuse::nn {

namespace {

struct Block {
  int64_t channels;  // channels per group
  int64_t spatial;   // elements per channel
};

// out = act(x * scale + shift) over one channel.
DIFFUSE_VECTOR_CLONES
void affine_act(const uint16_t* x, uint16_t* out, int64_t n, float scale, float shift, bool silu) {
  if (silu) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float y = bf16_to_float(x[i]) * scale + shift;
      out[i] = float_to_bf16(y * sigmoid(y));
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) out[i] = float_to_bf16(bf16_to_float(x[i]) * scale + shift);
  }
}

// One channel of the backward pass, first half: dy = dL/d(norm output) into `dy`, and the
// channel's sums of dy and dy * xhat.
DIFFUSE_VECTOR_CLONES
void channel_grad(const uint16_t* x, const uint16_t* dout, float* dy, int64_t n, float mean, float rstd, float gamma,
                  float beta, bool silu, float* sum_dy, float* sum_dy_xhat) {
  float a = 0.f, b = 0.f;
  if (silu) {
#pragma omp simd reduction(+ : a, b)
    for (int64_t i = 0; i < n; ++i) {
      const float xhat = (bf16_to_float(x[i]) - mean) * rstd;
      const float y = xhat * gamma + beta;
      const float s = sigmoid(y);
      const float g = bf16_to_float(dout[i]) * (s * (1.f + y * (1.f - s)));
      dy[i] = g;
      a += g;
      b += g * xhat;
    }
  } else {
#pragma omp simd reduction(+ : a, b)
    for (int64_t i = 0; i < n; ++i) {
      const float xhat = (bf16_to_float(x[i]) - mean) * rstd;
      const float g = bf16_to_float(dout[i]);
      dy[i] = g;
      a += g;
      b += g * xhat;
    }
  }
  *sum_dy = a;
  *sum_dy_xhat = b;
}

// Second half: dx = rstd * (gamma * dy - m1 - xhat * m2).
DIFFUSE_VECTOR_CLONES
void channel_dx(const uint16_t* x, const float* dy, uint16_t* dx, int64_t n, float mean, float rstd, float gamma,
                float m1, float m2) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float xhat = (bf16_to_float(x[i]) - mean) * rstd;
    dx[i] = float_to_bf16(rstd * (gamma * dy[i] - m1 - xhat * m2));
  }
}

// Parameters as fp32 vectors (1 and 0 where the norm has none).
std::vector<float> per_channel(const torch::Tensor& t, int64_t c, float fill) {
  if (!t.defined() || t.numel() == 0) return std::vector<float>(size_t(c), fill);
  auto f = t.detach().to(torch::kFloat).contiguous();
  const float* p = f.data_ptr<float>();
  return std::vector<float>(p, p + c);
}

void forward_kernel(const torch::Tensor& x, int64_t groups, const std::vector<float>& gamma,
                    const std::vector<float>& beta, double eps, bool silu, torch::Tensor& out, torch::Tensor& mean,
                    torch::Tensor& rstd) {
  const int64_t N = x.size(0), C = x.size(1), S = x.numel() / (N * C);
  const Block blk{C / groups, S};
  const uint16_t* xp = bf16_bits(x);
  uint16_t* op = bf16_bits_mutable(out);
  float* mp = mean.data_ptr<float>();
  float* rp = rstd.data_ptr<float>();
  at::parallel_for(0, N * groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ng = begin; ng < end; ++ng) {
      const int64_t offset = ng * blk.channels * blk.spatial;
      bf16_moments(xp + offset, blk.channels * blk.spatial, eps, mp + ng, rp + ng);
      const int64_t c0 = (ng % groups) * blk.channels;
      for (int64_t c = 0; c < blk.channels; ++c) {
        const float scale = rp[ng] * gamma[size_t(c0 + c)];
        const float shift = beta[size_t(c0 + c)] - mp[ng] * scale;
        affine_act(xp + offset + c * blk.spatial, op + offset + c * blk.spatial, blk.spatial, scale, shift, silu);
      }
    }
  });
}

// Gradient of the input; the per-(sample, channel) sums of dy and dy * xhat go to sums [2, N, C]
// for the parameters' gradients.
void backward_kernel(const torch::Tensor& x, const torch::Tensor& dout, int64_t groups, const std::vector<float>& gamma,
                     const std::vector<float>& beta, bool silu, const torch::Tensor& mean, const torch::Tensor& rstd,
                     torch::Tensor& dx, torch::Tensor& sums) {
  const int64_t N = x.size(0), C = x.size(1), S = x.numel() / (N * C);
  const Block blk{C / groups, S};
  const uint16_t* xp = bf16_bits(x);
  const uint16_t* gp = bf16_bits(dout);
  uint16_t* dxp = bf16_bits_mutable(dx);
  const float* mp = mean.data_ptr<float>();
  const float* rp = rstd.data_ptr<float>();
  float* sum_dy = sums.data_ptr<float>();
  float* sum_dy_xhat = sum_dy + N * C;
  at::parallel_for(0, N * groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> dy(size_t(blk.channels * blk.spatial));
    for (int64_t ng = begin; ng < end; ++ng) {
      const int64_t offset = ng * blk.channels * blk.spatial;
      const int64_t n = ng / groups, c0 = (ng % groups) * blk.channels;
      float m1 = 0.f, m2 = 0.f;
      for (int64_t c = 0; c < blk.channels; ++c) {
        const int64_t ch = c0 + c, at = offset + c * blk.spatial;
        float a = 0.f, b = 0.f;
        channel_grad(xp + at, gp + at, dy.data() + c * blk.spatial, blk.spatial, mp[ng], rp[ng], gamma[size_t(ch)],
                     beta[size_t(ch)], silu, &a, &b);
        sum_dy[n * C + ch] = a;
        sum_dy_xhat[n * C + ch] = b;
        m1 += gamma[size_t(ch)] * a;
        m2 += gamma[size_t(ch)] * b;
      }
      const float count = float(blk.channels * blk.spatial);
      m1 /= count;
      m2 /= count;
      for (int64_t c = 0; c < blk.channels; ++c) {
        const int64_t at = offset + c * blk.spatial;
        channel_dx(xp + at, dy.data() + c * blk.spatial, dxp + at, blk.spatial, mp[ng], rp[ng], gamma[size_t(c0 + c)],
                   m1, m2);
      }
    }
  });
}

// ---- Channels innermost: x is [N, S, C] in memory (channels-last images, or the attention's
// [B, tokens, C] seen as [B, C, tokens]). Each sample's rows are split into chunks; per-channel
// partial sums of the chunks are added up per sample, then per group.

// acc[c] += x[r, c] (center null) or (x[r, c] - center[c])^2, over `rows` rows.
DIFFUSE_VECTOR_CLONES
void cl_channel_sums(const uint16_t* x, int64_t rows, int64_t C, const float* center, float* acc) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* row = x + r * C;
    if (center) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const float d = bf16_to_float(row[c]) - center[c];
        acc[c] += d * d;
      }
    } else {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) acc[c] += bf16_to_float(row[c]);
    }
  }
}

DIFFUSE_VECTOR_CLONES
void cl_affine_act(const uint16_t* x, uint16_t* out, int64_t rows, int64_t C, const float* scale, const float* shift,
                   bool silu) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* in = x + r * C;
    uint16_t* o = out + r * C;
    if (silu) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const float y = bf16_to_float(in[c]) * scale[c] + shift[c];
        o[c] = float_to_bf16(y * sigmoid(y));
      }
    } else {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = float_to_bf16(bf16_to_float(in[c]) * scale[c] + shift[c]);
    }
  }
}

// dy of one element, as channel_grad computes it.
inline float norm_output_grad(float xhat, float dout, float gamma, float beta, bool silu) {
  if (!silu) return dout;
  const float y = xhat * gamma + beta;
  const float s = sigmoid(y);
  return dout * (s * (1.f + y * (1.f - s)));
}

// a[c] += dy, b[c] += dy * xhat over `rows` rows.
DIFFUSE_VECTOR_CLONES
void cl_grad_sums(const uint16_t* x, const uint16_t* dout, int64_t rows, int64_t C, const float* mean,
                  const float* rstd, const float* gamma, const float* beta, bool silu, float* a, float* b) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* xr = x + r * C;
    const uint16_t* gr = dout + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const float xhat = (bf16_to_float(xr[c]) - mean[c]) * rstd[c];
      const float g = norm_output_grad(xhat, bf16_to_float(gr[c]), gamma[c], beta[c], silu);
      a[c] += g;
      b[c] += g * xhat;
    }
  }
}

DIFFUSE_VECTOR_CLONES
void cl_dx(const uint16_t* x, const uint16_t* dout, uint16_t* dx, int64_t rows, int64_t C, const float* mean,
           const float* rstd, const float* gamma, const float* beta, const float* m1, const float* m2, bool silu) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* xr = x + r * C;
    const uint16_t* gr = dout + r * C;
    uint16_t* o = dx + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const float xhat = (bf16_to_float(xr[c]) - mean[c]) * rstd[c];
      const float g = norm_output_grad(xhat, bf16_to_float(gr[c]), gamma[c], beta[c], silu);
      o[c] = float_to_bf16(rstd[c] * (gamma[c] * g - m1[c] - xhat * m2[c]));
    }
  }
}

// How a channels-innermost tensor is cut: K chunks of up to R rows per sample.
struct RowChunks {
  int64_t N, S, C, R, K;
  RowChunks(const torch::Tensor& x) : N(x.size(0)), C(x.size(1)) {
    S = x.numel() / (N * C);
    R = std::max<int64_t>(1, std::min<int64_t>(S, 16384 / std::max<int64_t>(1, C)));
    K = (S + R - 1) / R;
  }
  int64_t rows(int64_t k) const { return std::min(R, S - k * R); }
  // Runs f(n, k, first row's element offset, rows) for every chunk, in parallel.
  template <typename F>
  void each(const F& f) const {
    at::parallel_for(0, N * K, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / K, k = t % K;
        f(n, k, (n * S + k * R) * C, rows(k));
      }
    });
  }
  // partial [N, K, C] -> per-sample channel sums [N, C].
  std::vector<float> reduce(const std::vector<float>& partial) const {
    std::vector<float> out(size_t(N * C), 0.f);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t c = 0; c < C; ++c) out[size_t(n * C + c)] += partial[size_t((n * K + k) * C + c)];
    return out;
  }
};

// Per-channel copies of each sample's group statistics: [N, C] from [N, G].
std::vector<float> per_channel_of_group(const float* v, int64_t N, int64_t C, int64_t groups) {
  std::vector<float> out(size_t(N * C));
  const int64_t cpg = C / groups;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) out[size_t(n * C + c)] = v[n * groups + c / cpg];
  return out;
}

void forward_kernel_cl(const torch::Tensor& x, int64_t groups, const std::vector<float>& gamma,
                       const std::vector<float>& beta, double eps, bool silu, torch::Tensor& out, torch::Tensor& mean,
                       torch::Tensor& rstd) {
  const RowChunks ch(x);
  const int64_t N = ch.N, C = ch.C, cpg = C / groups;
  const uint16_t* xp = bf16_bits(x);
  uint16_t* op = bf16_bits_mutable(out);
  float* mp = mean.data_ptr<float>();
  float* rp = rstd.data_ptr<float>();
  const double count = double(cpg * ch.S);
  std::vector<float> partial(size_t(N * ch.K * C));
  auto zero = [&] { std::fill(partial.begin(), partial.end(), 0.f); };
  auto group_sums = [&](const std::vector<float>& per_channel, int64_t n, int64_t g) {
    double s = 0;
    for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) s += per_channel[size_t(n * C + c)];
    return s;
  };
  zero();
  ch.each([&](int64_t n, int64_t k, int64_t at, int64_t rows) {
    cl_channel_sums(xp + at, rows, C, nullptr, partial.data() + (n * ch.K + k) * C);
  });
  auto sums = ch.reduce(partial);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < groups; ++g) mp[n * groups + g] = float(group_sums(sums, n, g) / count);
  const auto mean_c = per_channel_of_group(mp, N, C, groups);
  zero();
  ch.each([&](int64_t n, int64_t k, int64_t at, int64_t rows) {
    cl_channel_sums(xp + at, rows, C, mean_c.data() + n * C, partial.data() + (n * ch.K + k) * C);
  });
  sums = ch.reduce(partial);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < groups; ++g)
      rp[n * groups + g] = float(1.0 / std::sqrt(group_sums(sums, n, g) / count + eps));
  std::vector<float> scale(size_t(N * C)), shift(size_t(N * C));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const size_t i = size_t(n * C + c);
      scale[i] = rp[n * groups + c / cpg] * gamma[size_t(c)];
      shift[i] = beta[size_t(c)] - mp[n * groups + c / cpg] * scale[i];
    }
  ch.each([&](int64_t n, int64_t, int64_t at, int64_t rows) {
    cl_affine_act(xp + at, op + at, rows, C, scale.data() + n * C, shift.data() + n * C, silu);
  });
}

void backward_kernel_cl(const torch::Tensor& x, const torch::Tensor& dout, int64_t groups,
                        const std::vector<float>& gamma, const std::vector<float>& beta, bool silu,
                        const torch::Tensor& mean, const torch::Tensor& rstd, torch::Tensor& dx, torch::Tensor& sums) {
  const RowChunks ch(x);
  const int64_t N = ch.N, C = ch.C, cpg = C / groups;
  const uint16_t* xp = bf16_bits(x);
  const uint16_t* gp = bf16_bits(dout);
  uint16_t* dxp = bf16_bits_mutable(dx);
  const auto mean_c = per_channel_of_group(mean.data_ptr<float>(), N, C, groups);
  const auto rstd_c = per_channel_of_group(rstd.data_ptr<float>(), N, C, groups);
  std::vector<float> pa(size_t(N * ch.K * C), 0.f), pb(pa.size(), 0.f);
  ch.each([&](int64_t n, int64_t k, int64_t at, int64_t rows) {
    const int64_t o = (n * ch.K + k) * C;
    cl_grad_sums(xp + at, gp + at, rows, C, mean_c.data() + n * C, rstd_c.data() + n * C, gamma.data(), beta.data(),
                 silu, pa.data() + o, pb.data() + o);
  });
  const auto a = ch.reduce(pa), b = ch.reduce(pb);
  float* sum_dy = sums.data_ptr<float>();
  float* sum_dy_xhat = sum_dy + N * C;
  std::copy(a.begin(), a.end(), sum_dy);
  std::copy(b.begin(), b.end(), sum_dy_xhat);
  const float count = float(cpg * ch.S);
  std::vector<float> m1(size_t(N * C)), m2(size_t(N * C));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < groups; ++g) {
      float s1 = 0.f, s2 = 0.f;
      for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) {
        s1 += gamma[size_t(c)] * a[size_t(n * C + c)];
        s2 += gamma[size_t(c)] * b[size_t(n * C + c)];
      }
      for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) {
        m1[size_t(n * C + c)] = s1 / count;
        m2[size_t(n * C + c)] = s2 / count;
      }
    }
  ch.each([&](int64_t n, int64_t, int64_t at, int64_t rows) {
    cl_dx(xp + at, gp + at, dxp + at, rows, C, mean_c.data() + n * C, rstd_c.data() + n * C, gamma.data(), beta.data(),
          m1.data() + n * C, m2.data() + n * C, silu);
  });
}

// Whether x is dense with its channels innermost (dimension 1 last in memory).
bool channels_innermost(const torch::Tensor& x) {
  return x.dim() >= 3 && x.size(1) > 1 && !x.is_contiguous() && x.movedim(1, -1).is_contiguous();
}

struct GroupNormSiLU : torch::autograd::Function<GroupNormSiLU> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& input, int64_t groups,
                               const torch::Tensor& weight, const torch::Tensor& bias, double eps, bool silu) {
    const bool cl = channels_innermost(input);
    auto x = cl ? input : input.contiguous();
    const int64_t N = x.size(0), C = x.size(1);
    auto out = torch::empty_like(x);  // the input's layout
    auto mean = torch::empty({N, groups}, x.options().dtype(torch::kFloat));
    auto rstd = torch::empty_like(mean);
    const auto gamma = per_channel(weight, C, 1.f), beta = per_channel(bias, C, 0.f);
    if (cl)
      forward_kernel_cl(x, groups, gamma, beta, eps, silu, out, mean, rstd);
    else
      forward_kernel(x, groups, gamma, beta, eps, silu, out, mean, rstd);
    ctx->save_for_backward({x, weight, bias, mean, rstd});
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["silu"] = silu;
    return out;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &weight = saved[1], &bias = saved[2], &mean = saved[3], &rstd = saved[4];
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const bool silu = ctx->saved_data["silu"].toBool();
    const int64_t N = x.size(0), C = x.size(1);
    const bool cl = channels_innermost(x);
    auto dout = grads[0].to(torch::kBFloat16);
    // The gradient in x's layout: its memory then reads like x's.
    dout = cl ? dout.movedim(1, -1).contiguous().movedim(-1, 1) : dout.contiguous();
    auto dx = torch::empty_like(x);
    auto sums = torch::empty({2, N, C}, x.options().dtype(torch::kFloat));
    const auto gamma = per_channel(weight, C, 1.f), beta = per_channel(bias, C, 0.f);
    if (cl)
      backward_kernel_cl(x, dout, groups, gamma, beta, silu, mean, rstd, dx, sums);
    else
      backward_kernel(x, dout, groups, gamma, beta, silu, mean, rstd, dx, sums);
    torch::Tensor dweight, dbias;
    if (weight.numel() > 0 && weight.requires_grad()) dweight = sums[1].sum(0).to(weight.scalar_type());
    if (bias.numel() > 0 && bias.requires_grad()) dbias = sums[0].sum(0).to(bias.scalar_type());
    return {dx, torch::Tensor(), dweight, dbias, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor group_norm_silu_bf16(const torch::Tensor& x, int64_t groups, const torch::Tensor& weight,
                                   const torch::Tensor& bias, double eps, bool silu) {
  if (x.scalar_type() != torch::kBFloat16 || !x.device().is_cpu())
    throw Error("group_norm_silu_bf16: expected a bf16 CPU tensor, got " + std::string(c10::toString(x.scalar_type())) +
                " on " + x.device().str());
  if (x.dim() < 2 || groups <= 0 || x.size(1) % groups != 0)
    throw Error("group_norm_silu_bf16: " + std::to_string(x.dim() < 2 ? 0 : x.size(1)) +
                " channels are not divisible into " + std::to_string(groups) + " groups");
  for (const auto* p : {&weight, &bias})
    if (p->defined() && (p->numel() != x.size(1) || !p->device().is_cpu()))
      throw Error("group_norm_silu_bf16: affine parameters must have one value per channel (" +
                  std::to_string(x.size(1)) + "), got " + std::to_string(p->numel()));
  if (x.numel() == 0) return x.clone();
  // Autograd functions take defined tensors only: an absent parameter travels as an empty one.
  auto or_empty = [&](const torch::Tensor& t) {
    return t.defined() ? t : torch::empty({0}, x.options().dtype(torch::kFloat));
  };
  return GroupNormSiLU::apply(x, groups, or_empty(weight), or_empty(bias), eps, silu);
}

bool group_norm_act_fuses(const torch::nn::GroupNormImpl& norm, const torch::Tensor& x, std::optional<Activation> act) {
  if (act && *act != Activation::SiLU) return false;
  if (x.scalar_type() != torch::kBFloat16 || !x.device().is_cpu() || x.dim() < 2 || x.numel() == 0) return false;
  const auto& w = norm.weight;
  const auto& b = norm.bias;
  return (!w.defined() || w.scalar_type() == torch::kFloat) && (!b.defined() || b.scalar_type() == torch::kFloat);
}

torch::Tensor group_norm_act(torch::nn::GroupNormImpl& norm, const torch::Tensor& x, std::optional<Activation> act) {
  if (group_norm_act_fuses(norm, x, act)) {
    const auto& o = norm.options;
    return group_norm_silu_bf16(x, o.num_groups(), norm.weight, norm.bias, o.eps(), act.has_value());
  }
  auto h = norm.forward(x);
  return act ? activate_temporary(*act, std::move(h)) : h;
}

}  // namespace diffuse::nn
