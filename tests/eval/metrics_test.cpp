#include "eval/metrics.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "core/error.h"

namespace diffuse {
namespace {

// Gaussian samples with mean mu and covariance A A^T.
torch::Tensor gaussian(int64_t n, const torch::Tensor& mu, const torch::Tensor& a, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  auto z = at::randn({n, mu.size(0)}, gen, torch::kFloat64);
  return z.mm(a.t()) + mu.unsqueeze(0);
}

// Closed-form Frechet distance via an independent route: sqrtm(S1 S2) through the eigen-
// decomposition of the product's similar symmetric matrix S2^1/2 S1 S2^1/2 (roles swapped).
double closed_form(const torch::Tensor& mu1, const torch::Tensor& s1, const torch::Tensor& mu2,
                   const torch::Tensor& s2) {
  auto [w, v] = torch::linalg::eigh(s2, "L");
  auto r2 = (v * w.clamp_min(0).sqrt().unsqueeze(0)).mm(v.t());
  auto m = r2.mm(s1).mm(r2);
  double tr = torch::linalg::eigvalsh(0.5 * (m + m.t()), "L").clamp_min(0).sqrt().sum().item<double>();
  return (mu1 - mu2).pow(2).sum().item<double>() + s1.trace().item<double>() + s2.trace().item<double>() - 2 * tr;
}

TEST(FeatureStats, MeanAndUnbiasedCovariance) {
  auto x = torch::tensor({{1.0, 2.0}, {3.0, 6.0}, {5.0, 4.0}}, torch::kFloat64);
  auto s = feature_stats(x);
  EXPECT_EQ(s.n, 3);
  EXPECT_NEAR(s.mu[0].item<double>(), 3.0, 1e-12);
  EXPECT_NEAR(s.mu[1].item<double>(), 4.0, 1e-12);
  // numpy.cov(x, rowvar=False) = [[4, 2], [2, 4]]
  EXPECT_NEAR(s.sigma[0][0].item<double>(), 4.0, 1e-12);
  EXPECT_NEAR(s.sigma[0][1].item<double>(), 2.0, 1e-12);
  EXPECT_NEAR(s.sigma[1][1].item<double>(), 4.0, 1e-12);
  EXPECT_EQ(s.sigma.scalar_type(), torch::kFloat64);
}

TEST(Fid, SetWithItselfIsZero) {
  auto x = torch::randn({500, 32}).relu();  // rank-deficient-ish, like post-ReLU features
  EXPECT_NEAR(fid(x, x), 0.0, 1e-6);
  auto s = feature_stats(x);
  EXPECT_NEAR(frechet_distance(s, s), 0.0, 1e-6);
}

TEST(Fid, KnownClosedFormForDiagonalGaussians) {
  // 1-D: (mu1-mu2)^2 + (s1 - s2)^2 for standard deviations s1, s2.
  FeatureStats a, b;
  a.mu = torch::tensor({1.0}, torch::kFloat64);
  a.sigma = torch::tensor({{4.0}}, torch::kFloat64);
  a.n = 10;
  b.mu = torch::tensor({-1.0}, torch::kFloat64);
  b.sigma = torch::tensor({{9.0}}, torch::kFloat64);
  b.n = 10;
  EXPECT_NEAR(frechet_distance(a, b), 4.0 + 1.0, 1e-9);
  const auto p = frechet_parts(a, b);
  EXPECT_NEAR(p.mean, 4.0, 1e-12);
  EXPECT_NEAR(p.cov, 1.0, 1e-9);
  // Swapping the sides changes neither term; equal means leave only the covariance term.
  const auto q = frechet_parts(b, a);
  EXPECT_NEAR(q.mean, 4.0, 1e-12);
  EXPECT_NEAR(q.cov, 1.0, 1e-9);
  b.mu = a.mu.clone();
  EXPECT_EQ(frechet_parts(a, b).mean, 0.0);
  EXPECT_NEAR(frechet_distance(a, b), 1.0, 1e-9);
}

TEST(Fid, MatchesClosedFormForGaussianSamples) {
  const int64_t d = 4, n = 200000;
  auto mu1 = torch::tensor({0.0, 1.0, -1.0, 0.5}, torch::kFloat64);
  auto mu2 = torch::tensor({0.5, 0.5, -1.0, 0.0}, torch::kFloat64);
  auto a1 = torch::tensor({{1.0, 0.0, 0.0, 0.0}, {0.5, 1.0, 0.0, 0.0}, {0.0, 0.3, 0.8, 0.0}, {0.2, 0.0, 0.1, 1.2}},
                          torch::kFloat64);
  auto a2 = torch::tensor({{1.5, 0.0, 0.0, 0.0}, {0.0, 0.7, 0.0, 0.0}, {0.4, 0.0, 1.0, 0.0}, {0.0, 0.6, 0.0, 0.9}},
                          torch::kFloat64);
  auto s1 = a1.mm(a1.t()), s2 = a2.mm(a2.t());
  double expected = closed_form(mu1, s1, mu2, s2);
  double got = fid(gaussian(n, mu1, a1, 1), gaussian(n, mu2, a2, 2));
  RecordProperty("expected", std::to_string(expected));
  RecordProperty("got", std::to_string(got));
  // Sampling error of the estimate is O(sqrt(d / n)) relative; 2 % is several standard errors.
  EXPECT_NEAR(got, expected, 0.02 * expected + 1e-3) << "expected " << expected;
  EXPECT_GT(expected, 0.5);
  (void)d;
}

TEST(Fid, BadInput) {
  auto one = torch::randn({1, 8});
  EXPECT_THROW(fid(one, torch::randn({10, 8})), Error);
  EXPECT_THROW(fid(torch::randn({10, 8}), torch::randn({10, 9})), Error);
  EXPECT_THROW(feature_stats(torch::randn({10})), Error);
  auto nan = torch::randn({10, 4});
  nan[3][2] = NAN;
  EXPECT_THROW(feature_stats(nan), Error);
  EXPECT_THROW(frechet_distance(FeatureStats{}, FeatureStats{}), Error);
}

TEST(Kid, UnbiasedForOneDistribution) {
  // Many independent pairs from one distribution: mean over repeats ~ 0 (can be negative).
  KidOptions o;
  o.subsets = 20;
  o.subset_size = 200;
  double sum = 0, sum_abs_shift = 0;
  const int repeats = 10;
  std::vector<double> vals;
  for (int r = 0; r < repeats; ++r) {
    auto x = torch::randn({400, 16}, torch::kFloat64);
    auto y = torch::randn({400, 16}, torch::kFloat64);
    o.seed = r;
    double v = kid(x, y, o).mean;
    vals.push_back(v);
    sum += v;
    sum_abs_shift += kid(x, y + 0.5, o).mean;
  }
  double mean = sum / repeats, shifted = sum_abs_shift / repeats;
  RecordProperty("null_mean", std::to_string(mean));
  RecordProperty("shifted_mean", std::to_string(shifted));
  // Shift of 0.5 in each of 16 dims: clearly positive and far above the spread of the null.
  EXPECT_GT(shifted, 0.05);
  EXPECT_LT(std::abs(mean), 0.02 * shifted) << "mean KID " << mean << " vs shifted " << shifted;
  bool some_negative = false;
  for (double v : vals) some_negative |= v < 0;
  EXPECT_TRUE(some_negative) << "an unbiased estimator should sometimes go below 0";
}

TEST(Kid, ExactMmdOnTinySets) {
  // Hand-computed unbiased MMD^2 with k(x, y) = (x y / 1 + 1)^3 in one dimension.
  auto x = torch::tensor({{0.0}, {1.0}}, torch::kFloat64);
  auto y = torch::tensor({{1.0}, {2.0}}, torch::kFloat64);
  auto k = [](double a, double b) { return std::pow(a * b + 1, 3); };
  double kxx = 2 * k(0, 1) / 2, kyy = 2 * k(1, 2) / 2;
  double kxy = (k(0, 1) + k(0, 2) + k(1, 1) + k(1, 2)) / 4;
  EXPECT_NEAR(polynomial_mmd2(x, y), kxx + kyy - 2 * kxy, 1e-9);
  auto r = kid(x, y, KidOptions{});
  EXPECT_EQ(r.subset_size, 2);
  EXPECT_NEAR(r.mean, kxx + kyy - 2 * kxy, 1e-9);
}

TEST(Kid, BadInput) {
  EXPECT_THROW(kid(torch::randn({1, 4}), torch::randn({10, 4})), Error);
  EXPECT_THROW(kid(torch::randn({10, 4}), torch::randn({10, 5})), Error);
  KidOptions o;
  o.subsets = 0;
  EXPECT_THROW(kid(torch::randn({10, 4}), torch::randn({10, 4}), o), Error);
}

TEST(PrecisionRecall, IdenticalSetsAreOne) {
  auto x = torch::randn({300, 8});
  auto pr = precision_recall(x, x, 3);
  EXPECT_DOUBLE_EQ(pr.precision, 1.0);
  EXPECT_DOUBLE_EQ(pr.recall, 1.0);
  EXPECT_EQ(pr.k, 3);
}

TEST(PrecisionRecall, DisjointFarApartSetsAreZero) {
  auto x = torch::randn({300, 8});
  auto y = torch::randn({300, 8}) + 100.0;
  auto pr = precision_recall(x, y, 3);
  EXPECT_DOUBLE_EQ(pr.precision, 0.0);
  EXPECT_DOUBLE_EQ(pr.recall, 0.0);
}

TEST(PrecisionRecall, PartialOverlap) {
  // Fake covers only half of the real modes: precision stays high, recall drops to about half.
  auto real_a = torch::randn({500, 4});
  auto real_b = torch::randn({500, 4}) + 50.0;
  auto real = torch::cat({real_a, real_b});
  auto fake = torch::randn({1000, 4});
  auto pr = precision_recall(real, fake, 3);
  RecordProperty("half_modes_precision", std::to_string(pr.precision));
  RecordProperty("half_modes_recall", std::to_string(pr.recall));
  EXPECT_GT(pr.precision, 0.8);
  EXPECT_LE(pr.recall, 0.5);  // the far mode is never covered
  EXPECT_GT(pr.recall, 0.4);
  // And the converse: fake has an extra far mode -> precision about half, recall high.
  auto fake2 = torch::cat({torch::randn({500, 4}), torch::randn({500, 4}) - 50.0});
  auto pr2 = precision_recall(torch::randn({1000, 4}), fake2, 3);
  RecordProperty("extra_mode_precision", std::to_string(pr2.precision));
  RecordProperty("extra_mode_recall", std::to_string(pr2.recall));
  EXPECT_LE(pr2.precision, 0.5);
  EXPECT_GT(pr2.precision, 0.4);
  EXPECT_GT(pr2.recall, 0.8);
}

TEST(PrecisionRecall, RadiiAreKthNeighbourDistances) {
  auto x = torch::tensor({{0.0}, {1.0}, {3.0}, {7.0}});
  auto r1 = knn_radii(x, 1);
  EXPECT_NEAR(r1[0].item<float>(), 1.0f, 1e-5);
  EXPECT_NEAR(r1[2].item<float>(), 2.0f, 1e-5);
  EXPECT_NEAR(r1[3].item<float>(), 4.0f, 1e-5);
  auto r3 = knn_radii(x, 3);
  EXPECT_NEAR(r3[0].item<float>(), 7.0f, 1e-5);
  EXPECT_NEAR(r3[3].item<float>(), 7.0f, 1e-5);
  // A query just inside / outside the radius of one point.
  auto q = torch::tensor({{7.0f + 3.9f}, {7.0f + 4.1f}});
  auto in = in_manifold(x, r1, q);
  EXPECT_TRUE(in[0].item<bool>());
  EXPECT_FALSE(in[1].item<bool>());
}

TEST(PrecisionRecall, BadInput) {
  EXPECT_THROW(precision_recall(torch::randn({3, 4}), torch::randn({10, 4}), 3), Error);  // n <= k
  EXPECT_THROW(precision_recall(torch::randn({10, 4}), torch::randn({10, 5}), 3), Error);
  EXPECT_THROW(knn_radii(torch::randn({10, 4}), 0), Error);
}

TEST(ClassAgreement, CountsMatchesAndIgnoresUnknown) {
  auto pred = torch::tensor({0, 1, 2, 2}, torch::kInt64);
  auto want = torch::tensor({0, 1, 1, -1}, torch::kInt64);
  EXPECT_NEAR(class_agreement(pred, want), 2.0 / 3.0, 1e-12);
  auto logits = torch::tensor({{5.0, 0.0}, {0.0, 5.0}});
  EXPECT_DOUBLE_EQ(class_agreement(logits, torch::tensor({0, 0}, torch::kInt64)), 0.5);
  EXPECT_THROW(class_agreement(pred, torch::tensor({-1, -1, -1, -1}, torch::kInt64)), Error);
  EXPECT_THROW(class_agreement(pred, torch::tensor({0, 1}, torch::kInt64)), Error);
}

}  // namespace
}  // namespace diffuse
