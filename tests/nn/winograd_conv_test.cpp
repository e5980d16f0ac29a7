#include "nn/winograd_conv.h"

#include <gtest/gtest.h>

#include "nn/autocast.h"
#include "nn/conv2d.h"

namespace diffuse::nn {
namespace {

// Restores the process-wide switch.
struct WinogradSwitch {
  bool before = winograd_convolutions();
  explicit WinogradSwitch(bool on) { set_winograd_convolutions(on); }
  ~WinogradSwitch() { set_winograd_convolutions(before); }
};

#define REQUIRE_KERNELS() \
  if (!winograd_available()) GTEST_SKIP() << "this build or CPU has no oneDNN Winograd kernels"

// Largest difference relative to the largest magnitude of the fp64 reference.
double relative_error(const torch::Tensor& got, const torch::Tensor& reference) {
  return (got.to(torch::kFloat64) - reference).abs().max().item<double>() / reference.abs().max().item<double>();
}

struct Case {
  int64_t n, c, o, h, w;
  bool bias;
};

// Output and all three gradients against the same convolution computed in fp64: Winograd's
// rounding stays within a few 1e-6 of the scale, as close as 4x the direct algorithm's.
TEST(WinogradConv, ForwardAndGradientsMatchFloat64) {
  REQUIRE_KERNELS();
  WinogradSwitch on(true);
  for (const Case& k : {Case{4, 32, 32, 12, 12, true}, Case{3, 64, 48, 7, 9, true}, Case{2, 16, 32, 14, 14, false}}) {
    SCOPED_TRACE(c10::str(k.n, "x", k.c, "->", k.o, " ", k.h, "x", k.w, " bias ", k.bias));
    torch::manual_seed(k.c + k.o);
    const auto x = torch::randn({k.n, k.c, k.h, k.w}).requires_grad_();
    const auto w = (torch::randn({k.o, k.c, 3, 3}) * 0.1).requires_grad_();
    const auto b = k.bias ? torch::randn({k.o}).requires_grad_() : torch::Tensor();
    const auto g = torch::randn({k.n, k.o, k.h, k.w});

    const auto y = winograd_conv2d(x, w, b);
    ASSERT_TRUE(y.defined());
    const auto grads = torch::autograd::grad(
        {y}, k.bias ? std::vector<torch::Tensor>{x, w, b} : std::vector<torch::Tensor>{x, w}, {g});
    const auto x64 = x.detach().to(torch::kFloat64).requires_grad_();
    const auto w64 = w.detach().to(torch::kFloat64).requires_grad_();
    const auto b64 = k.bias ? b.detach().to(torch::kFloat64).requires_grad_() : torch::Tensor();
    const auto y64 = torch::conv2d(x64, w64, b64, 1, 1);
    const auto ref = torch::autograd::grad(
        {y64}, k.bias ? std::vector<torch::Tensor>{x64, w64, b64} : std::vector<torch::Tensor>{x64, w64},
        {g.to(torch::kFloat64)});
    // The direct algorithm in fp32, for scale.
    const auto y32 = torch::conv2d(x.detach(), w.detach(), k.bias ? b.detach() : torch::Tensor(), 1, 1);
    EXPECT_EQ(y.sizes(), y64.sizes());
    EXPECT_LT(relative_error(y, y64), 1e-5);
    EXPECT_LT(relative_error(y, y64), 8 * relative_error(y32, y64) + 1e-6);
    const char* names[] = {"input", "weight", "bias"};
    for (size_t i = 0; i < grads.size(); ++i) EXPECT_LT(relative_error(grads[i], ref[i]), 1e-5) << names[i];
  }
}

// A channels-last input gives a channels-last result with the values of the contiguous one.
TEST(WinogradConv, ChannelsLastKeepsItsLayout) {
  REQUIRE_KERNELS();
  WinogradSwitch on(true);
  torch::manual_seed(3);
  const auto x = torch::randn({2, 32, 10, 10});
  const auto w = torch::randn({16, 32, 3, 3}) * 0.1, b = torch::randn({16});
  const auto xl = x.contiguous(at::MemoryFormat::ChannelsLast).requires_grad_();
  const auto y = winograd_conv2d(x, w, b), yl = winograd_conv2d(xl, w, b);
  EXPECT_TRUE(yl.is_contiguous(at::MemoryFormat::ChannelsLast));
  EXPECT_TRUE(torch::allclose(y, yl, 1e-5, 1e-5));
  const auto gl = torch::autograd::grad({yl}, {xl}, {torch::ones_like(yl)})[0];
  EXPECT_TRUE(gl.is_contiguous(at::MemoryFormat::ChannelsLast));
}

// Same inputs, same bits, and the same on one thread as on two: training resumes bit for bit.
TEST(WinogradConv, IsDeterministic) {
  REQUIRE_KERNELS();
  WinogradSwitch on(true);
  torch::manual_seed(4);
  const auto x = torch::randn({8, 32, 14, 14}).requires_grad_();
  const auto w = (torch::randn({32, 32, 3, 3}) * 0.1).requires_grad_();
  const auto b = torch::randn({32}).requires_grad_();
  auto run = [&] {
    const auto y = winograd_conv2d(x, w, b);
    auto g = torch::autograd::grad({y}, {x, w, b}, {torch::cos(y)});
    g.insert(g.begin(), y);
    return g;
  };
  const auto a = run(), again = run();
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const auto one = run();
  at::set_num_threads(threads);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::equal(a[i], again[i])) << i;
    EXPECT_TRUE(torch::allclose(a[i], one[i], 1e-5, 1e-5)) << i;
  }
}

// Where the kernels do not apply the function says so, and the caller convolves as before.
TEST(WinogradConv, DeclinesWhatItDoesNotCompute) {
  REQUIRE_KERNELS();
  const auto x = torch::randn({2, 16, 8, 8}), w = torch::randn({16, 16, 3, 3}), b = torch::randn({16});
  {
    WinogradSwitch off(false);
    EXPECT_FALSE(winograd_conv2d(x, w, b).defined());
  }
  WinogradSwitch on(true);
  EXPECT_TRUE(winograd_conv2d(x, w, b).defined());
  EXPECT_FALSE(winograd_conv2d(x.to(torch::kBFloat16), w.to(torch::kBFloat16), b.to(torch::kBFloat16)).defined());
  EXPECT_FALSE(winograd_conv2d(x, torch::randn({16, 16, 1, 1}), b).defined());  // 1x1
  EXPECT_FALSE(winograd_conv2d(x, torch::randn({16, 8, 3, 3}), b).defined());   // channels disagree
  EXPECT_FALSE(winograd_conv2d(x, w, torch::randn({8})).defined());             // bias disagrees
  // Channel counts oneDNN would pad to its blocks of 16: a first layer, a last one, a ragged one.
  EXPECT_FALSE(winograd_conv2d(torch::randn({2, 3, 8, 8}), torch::randn({16, 3, 3, 3}), b).defined());
  EXPECT_FALSE(winograd_conv2d(x, torch::randn({4, 16, 3, 3}), torch::Tensor()).defined());
  EXPECT_FALSE(winograd_conv2d(torch::randn({2, 24, 8, 8}), torch::randn({16, 24, 3, 3}), b).defined());
  EXPECT_FALSE(winograd_conv2d(x.to(torch::kFloat64), w, b).defined());
}

// nn::Conv2d takes the kernels for 3x3 stride-1 convolutions in fp32 and nothing else: strided,
// 1x1 and autocast convolutions are the frontend's, bit for bit, and so is everything when the
// switch is off.
TEST(WinogradConv, Conv2dModuleUsesThemWhereTheyApply) {
  REQUIRE_KERNELS();
  torch::manual_seed(5);
  const auto x = torch::randn({2, 16, 9, 9});
  Conv2d same(torch::nn::Conv2dOptions(16, 32, 3).padding(1));
  Conv2d strided(torch::nn::Conv2dOptions(16, 32, 3).padding(1).stride(2));
  Conv2d pointwise(torch::nn::Conv2dOptions(16, 32, 1));
  Conv2d first(torch::nn::Conv2dOptions(3, 32, 3).padding(1));
  auto frontend = [&](Conv2d& c) { return c->torch::nn::Conv2dImpl::forward(x); };
  WinogradSwitch on(true);
  EXPECT_TRUE(torch::equal(same(x), winograd_conv2d(x, same->weight, same->bias)));
  EXPECT_FALSE(torch::equal(same(x), frontend(same)));  // another algorithm: other rounding
  EXPECT_TRUE(torch::allclose(same(x), frontend(same), 1e-5, 1e-5));
  EXPECT_TRUE(torch::equal(strided(x), frontend(strided)));
  EXPECT_TRUE(torch::equal(pointwise(x), frontend(pointwise)));
  const auto rgb = torch::randn({2, 3, 9, 9});
  EXPECT_TRUE(torch::equal(first(rgb), first->torch::nn::Conv2dImpl::forward(rgb)));
  {
    AutocastGuard autocast(torch::kCPU, true);
    const auto y = same(x);
    EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  }
  WinogradSwitch off(false);
  EXPECT_TRUE(torch::equal(same(x), frontend(same)));
}

}  // namespace
}  // namespace diffuse::nn
