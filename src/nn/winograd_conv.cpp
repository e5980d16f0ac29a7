#include "nn/winograd_conv.h"

#include <algorithm>
#include <atomic>
#include <unordered_map>

#if DIFFUSE_HAVE_DNNL
#include <map>
#include <memory>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <tuple>
#endif

namespace diffuse::nn {

namespace {
std::atomic<bool>& enabled() {
  static std::atomic<bool> on{true};
  return on;
}
}  // namespace

void set_winograd_convolutions(bool on) { enabled() = on; }
bool winograd_convolutions() { return enabled(); }

#if !DIFFUSE_HAVE_DNNL

bool winograd_available() { return false; }
torch::Tensor winograd_conv2d(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) { return {}; }

#else

namespace {

using dnnl::memory;
using Tag = memory::format_tag;

dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

dnnl::stream& stream() {
  thread_local dnnl::stream s(engine());
  return s;
}

// The primitives of one convolution shape; each pass is created on first use.
struct Plan {
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_forward fwd;
  std::once_flag data_once, weights_once;
  dnnl::convolution_backward_data::primitive_desc data_pd;
  dnnl::convolution_backward_data data;
  dnnl::convolution_backward_weights::primitive_desc weights_pd;
  dnnl::convolution_backward_weights weights;
};

// N, C, H, W, O, bias
using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, bool>;

memory::desc any_desc(const memory::dims& d) { return memory::desc(d, memory::data_type::f32, Tag::any); }

struct Shape {
  memory::dims src, wei, bia, dst;
  memory::dims strides{1, 1}, pad{1, 1};
  explicit Shape(const Key& k) {
    const auto [n, c, h, w, o, b] = k;
    src = {n, c, h, w}, wei = {o, c, 3, 3}, bia = {o}, dst = {n, o, h, w};
  }
  dnnl::convolution_forward::desc fwd_desc(bool bias) const {
    const auto kind = dnnl::prop_kind::forward_training;
    const auto alg = dnnl::algorithm::convolution_winograd;
    if (bias)
      return {kind,
              alg,
              any_desc(src),
              any_desc(wei),
              memory::desc(bia, memory::data_type::f32, Tag::x),
              any_desc(dst),
              strides,
              pad,
              pad};
    return {kind, alg, any_desc(src), any_desc(wei), any_desc(dst), strides, pad, pad};
  }
};

dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr a;
  a.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return a;
}

// The plan for a shape, or null when oneDNN has no Winograd kernel for it (also remembered).
Plan* plan_for(const Key& key) {
  static std::mutex mu;
  static std::map<Key, std::unique_ptr<Plan> > plans;
  std::lock_guard<std::mutex> lock(mu);
  auto it = plans.find(key);
  if (it != plans.end()) return it->second.get();
  std::unique_ptr<Plan> p;
  try {
    auto pd =
        dnnl::convolution_forward::primitive_desc(Shape(key).fwd_desc(std::get<5>(key)), user_scratchpad(), engine());
    p = std::make_unique<Plan>();
    p->fwd_pd = pd;
    p->fwd = dnnl::convolution_forward(pd);
  } catch (const dnnl::error&) {
    p.reset();
  }
  return (plans[key] = std::move(p)).get();
}

void ensure_data(Plan& p, const Key& key) {
  std::call_once(p.data_once, [&] {
    const Shape s(key);
    dnnl::convolution_backward_data::desc d(dnnl::algorithm::convolution_winograd, any_desc(s.src), any_desc(s.wei),
                                            any_desc(s.dst), s.strides, s.pad, s.pad);
    p.data_pd = dnnl::convolution_backward_data::primitive_desc(d, user_scratchpad(), engine(), p.fwd_pd);
    p.data = dnnl::convolution_backward_data(p.data_pd);
  });
}

void ensure_weights(Plan& p, const Key& key) {
  std::call_once(p.weights_once, [&] {
    const Shape s(key);
    const auto alg = dnnl::algorithm::convolution_winograd;
    auto d = std::get<5>(key)
                 ? dnnl::convolution_backward_weights::desc(alg, any_desc(s.src), any_desc(s.wei),
                                                            memory::desc(s.bia, memory::data_type::f32, Tag::x),
                                                            any_desc(s.dst), s.strides, s.pad, s.pad)
                 : dnnl::convolution_backward_weights::desc(alg, any_desc(s.src), any_desc(s.wei), any_desc(s.dst),
                                                            s.strides, s.pad, s.pad);
    p.weights_pd = dnnl::convolution_backward_weights::primitive_desc(d, user_scratchpad(), engine(), p.fwd_pd);
    p.weights = dnnl::convolution_backward_weights(p.weights_pd);
  });
}

// A 4-D fp32 tensor in a layout oneDNN names: contiguous (nchw) or channels-last (nhwc).
torch::Tensor dense(const torch::Tensor& t, Tag& tag) {
  if (!t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    tag = Tag::nhwc;
    return t;
  }
  tag = Tag::nchw;
  return t.contiguous();
}

memory wrap(const torch::Tensor& t, const memory::dims& dims, Tag tag) {
  return memory(memory::desc(dims, memory::data_type::f32, tag), engine(), t.data_ptr());
}

// `user` as memory in the primitive's layout `want`: the user's memory itself where the layouts
// agree, else a reordered copy held by `keep`.
memory to_layout(memory user, const memory::desc& want, torch::Tensor& keep) {
  if (user.get_desc() == want) return user;
  keep = torch::empty({static_cast<int64_t>(want.get_size())}, torch::kUInt8);
  memory m(want, engine(), keep.data_ptr());
  dnnl::reorder(user, m).execute(stream(), user, m);
  return m;
}

// Memory in the primitive's layout `have` for an output whose user memory is `user`: `user`
// itself where the layouts agree, else a buffer that from_layout copies back.
memory output_in(memory user, const memory::desc& have, torch::Tensor& keep) {
  if (user.get_desc() == have) return user;
  keep = torch::empty({static_cast<int64_t>(have.get_size())}, torch::kUInt8);
  return memory(have, engine(), keep.data_ptr());
}

void from_layout(memory out, memory user) {
  if (out.get_data_handle() != user.get_data_handle()) dnnl::reorder(out, user).execute(stream(), out, user);
}

torch::Tensor scratchpad(const memory::desc& d, std::unordered_map<int, memory>& args) {
  auto t = torch::empty({static_cast<int64_t>(std::max<size_t>(1, d.get_size()))}, torch::kUInt8);
  args.insert({DNNL_ARG_SCRATCHPAD, memory(d, engine(), t.data_ptr())});
  return t;
}

Key key_of(const torch::Tensor& x, const torch::Tensor& w, bool bias) {
  return {x.size(0), x.size(1), x.size(2), x.size(3), w.size(0), bias};
}

torch::Tensor forward_pass(Plan& p, const Key& key, const torch::Tensor& x, const torch::Tensor& w,
                           const torch::Tensor& b) {
  const Shape s(key);
  Tag tag;
  auto xd = dense(x, tag);
  auto wd = w.contiguous();
  auto out = torch::empty(
      {s.dst[0], s.dst[1], s.dst[2], s.dst[3]},
      x.options().memory_format(tag == Tag::nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  torch::Tensor k1, k2, k3;
  auto src = to_layout(wrap(xd, s.src, tag), p.fwd_pd.src_desc(), k1);
  auto wei = to_layout(wrap(wd, s.wei, Tag::oihw), p.fwd_pd.weights_desc(), k2);
  auto dst_user = wrap(out, s.dst, tag);
  auto dst = output_in(dst_user, p.fwd_pd.dst_desc(), k3);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}};
  torch::Tensor bd;
  if (b.defined()) {
    bd = b.contiguous();
    args.insert({DNNL_ARG_BIAS, wrap(bd, s.bia, Tag::x)});
  }
  auto pad = scratchpad(p.fwd_pd.scratchpad_desc(), args);
  p.fwd.execute(stream(), args);
  from_layout(dst, dst_user);
  stream().wait();
  return out;
}

// The output gradient in a primitive's layout: `dd` where it already is in that layout (the
// other pass's copy), else a reordered copy of `user` held by `keep`.
memory diff_dst_in(const memory& user, const memory& dd, const memory::desc& want, torch::Tensor& keep) {
  if (dd && dd.get_desc() == want) return dd;
  return to_layout(user, want, keep);
}

torch::Tensor data_pass(Plan& p, const Key& key, const memory& grad, memory& dd, torch::Tensor& dd_keep,
                        const torch::Tensor& w, Tag tag, const torch::TensorOptions& options) {
  ensure_data(p, key);
  const Shape s(key);
  auto gx = torch::empty(
      {s.src[0], s.src[1], s.src[2], s.src[3]},
      options.memory_format(tag == Tag::nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  auto wd = w.contiguous();
  torch::Tensor k2, k3;
  dd = diff_dst_in(grad, dd, p.data_pd.diff_dst_desc(), dd_keep);
  auto wei = to_layout(wrap(wd, s.wei, Tag::oihw), p.data_pd.weights_desc(), k2);
  auto ds_user = wrap(gx, s.src, tag);
  auto ds = output_in(ds_user, p.data_pd.diff_src_desc(), k3);
  std::unordered_map<int, memory> args{{DNNL_ARG_DIFF_DST, dd}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DIFF_SRC, ds}};
  auto pad = scratchpad(p.data_pd.scratchpad_desc(), args);
  p.data.execute(stream(), args);
  from_layout(ds, ds_user);
  stream().wait();
  return gx;
}

std::pair<torch::Tensor, torch::Tensor> weights_pass(Plan& p, const Key& key, const memory& grad, const memory& dd,
                                                     const torch::Tensor& x, Tag tag, bool bias) {
  ensure_weights(p, key);
  const Shape s(key);
  auto gw = torch::empty({s.wei[0], s.wei[1], 3, 3}, x.options());
  torch::Tensor gb = bias ? torch::empty({s.bia[0]}, x.options()) : torch::Tensor();
  torch::Tensor k1, k2, k3;
  auto src = to_layout(wrap(x, s.src, tag), p.weights_pd.src_desc(), k1);
  auto own = diff_dst_in(grad, dd, p.weights_pd.diff_dst_desc(), k2);
  auto dw_user = wrap(gw, s.wei, Tag::oihw);
  auto dw = output_in(dw_user, p.weights_pd.diff_weights_desc(), k3);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, own}, {DNNL_ARG_DIFF_WEIGHTS, dw}};
  if (bias) args.insert({DNNL_ARG_DIFF_BIAS, wrap(gb, s.bia, Tag::x)});
  auto pad = scratchpad(p.weights_pd.scratchpad_desc(), args);
  p.weights.execute(stream(), args);
  from_layout(dw, dw_user);
  stream().wait();
  return {gw, gb};
}

torch::Tensor convolve(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w,
                       const torch::Tensor& b) {
  const auto key = key_of(x, w, b.defined());
  Tag tag;
  auto xd = dense(x, tag);
  ctx->save_for_backward({xd, w});
  return forward_pass(*plan_for(key), key, xd, w, b);
}

// Gradients for input, weight and (with `bias`) bias.
torch::autograd::tensor_list gradients(torch::autograd::AutogradContext* ctx, const torch::Tensor& grad, bool bias) {
  const auto saved = ctx->get_saved_variables();
  const auto& x = saved[0];
  const auto& w = saved[1];
  const auto key = key_of(x, w, bias);
  Plan& p = *plan_for(key);
  Tag tag;
  dense(x, tag);
  const auto g = tag == Tag::nhwc ? grad.contiguous(at::MemoryFormat::ChannelsLast) : grad.contiguous();
  const auto user = wrap(g, Shape(key).dst, tag);
  memory dd;  // the output gradient reordered once for both passes where they take the same layout
  torch::Tensor dd_keep;
  torch::Tensor gx, gw, gb;
  if (ctx->needs_input_grad(0)) gx = data_pass(p, key, user, dd, dd_keep, w, tag, x.options());
  if (ctx->needs_input_grad(1) || (bias && ctx->needs_input_grad(2))) {
    std::tie(gw, gb) = weights_pass(p, key, user, dd, x, tag, bias);
    if (!ctx->needs_input_grad(1)) gw = torch::Tensor();
  }
  if (!bias) return {gx, gw};
  return {gx, gw, gb};
}

// Two functions, as autograd takes no undefined input.
struct BiasedConv : torch::autograd::Function<BiasedConv> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w,
                               const torch::Tensor& b) {
    return convolve(ctx, x, w, b);
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list g) {
    return gradients(ctx, g[0], true);
  }
};

struct UnbiasedConv : torch::autograd::Function<UnbiasedConv> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w) {
    return convolve(ctx, x, w, torch::Tensor());
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list g) {
    return gradients(ctx, g[0], false);
  }
};

}  // namespace

bool winograd_available() {
  static const bool ok = plan_for(Key{16, 16, 8, 8, 16, true}) != nullptr;
  return ok;
}

torch::Tensor winograd_conv2d(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias) {
  if (!winograd_convolutions() || !input.device().is_cpu() || input.scalar_type() != torch::kFloat32 ||
      weight.scalar_type() != torch::kFloat32 || input.dim() != 4 || weight.dim() != 4 || weight.size(2) != 3 ||
      weight.size(3) != 3 || weight.size(1) != input.size(1) || input.numel() == 0 || !weight.device().is_cpu() ||
      (bias.defined() && (bias.scalar_type() != torch::kFloat32 || bias.numel() != weight.size(0))))
    return {};
  // oneDNN computes in blocks of 16 channels and pads the rest: a first layer of 1-4 channels would
  // do 4-16 times its work (its forward pass runs faster direct), and a ragged count wastes part.
  if (input.size(1) % 16 != 0 || weight.size(0) % 16 != 0) return {};
  const auto key = key_of(input, weight, bias.defined());
  if (!plan_for(key)) return {};
  return bias.defined() ? BiasedConv::apply(input, weight, bias) : UnbiasedConv::apply(input, weight);
}

#endif

}  // namespace diffuse::nn
