#include "eval/metrics.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"

namespace diffuse {

namespace {

std::string shape_str(const torch::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

// Validates an [N, D] feature matrix and returns it as a contiguous CPU tensor of `dtype`.
torch::Tensor check_features(const torch::Tensor& f, const char* what, int64_t min_rows,
                             torch::ScalarType dtype = torch::kFloat64) {
  if (!f.defined()) throw Error(std::string(what) + ": no features");
  if (f.dim() != 2) throw Error(std::string(what) + ": expected features [N, D], got " + shape_str(f));
  if (f.size(0) < min_rows)
    throw Error(std::string(what) + ": needs at least " + std::to_string(min_rows) + " samples, got " +
                std::to_string(f.size(0)));
  if (f.size(1) < 1) throw Error(std::string(what) + ": features have dimension 0");
  auto out = f.detach().to(torch::kCPU, dtype).contiguous();
  if (!torch::isfinite(out).all().item<bool>()) throw Error(std::string(what) + ": features contain NaN or Inf");
  return out;
}

void check_same_dim(const torch::Tensor& a, const torch::Tensor& b, const char* what) {
  if (a.size(1) != b.size(1))
    throw Error(std::string(what) + ": feature dimensions differ (" + std::to_string(a.size(1)) + " vs " +
                std::to_string(b.size(1)) + ")");
}

// Symmetric PSD square root via eigen-decomposition (negative eigenvalues clipped).
torch::Tensor sqrt_psd(const torch::Tensor& s) {
  auto [w, v] = at::linalg_eigh(s, "L");
  return (v * w.clamp_min(0).sqrt().unsqueeze(0)).mm(v.t());
}

// Picks m of n indices without replacement (partial Fisher-Yates).
std::vector<int64_t> choose(int64_t n, int64_t m, std::mt19937_64& rng) {
  std::vector<int64_t> p(n);
  std::iota(p.begin(), p.end(), 0);
  for (int64_t i = 0; i < m; ++i) {
    int64_t j = i + static_cast<int64_t>(rng() % static_cast<uint64_t>(n - i));
    std::swap(p[i], p[j]);
  }
  p.resize(m);
  return p;
}

// Squared Euclidean distances between rows, [a, b], clamped at 0.
torch::Tensor sq_dists(const torch::Tensor& a, const torch::Tensor& a_sq, const torch::Tensor& b,
                       const torch::Tensor& b_sq) {
  return (a_sq.unsqueeze(1) + b_sq.unsqueeze(0) - 2 * a.mm(b.t())).clamp_min_(0);
}

}  // namespace

FeatureStats feature_stats(const torch::Tensor& features) {
  auto f = check_features(features, "feature statistics", 2);
  FeatureStats s;
  s.n = f.size(0);
  s.mu = f.mean(0);
  auto c = f - s.mu.unsqueeze(0);
  s.sigma = c.t().mm(c) / static_cast<double>(s.n - 1);
  return s;
}

FrechetParts frechet_parts(const FeatureStats& a, const FeatureStats& b) {
  if (!a.defined() || !b.defined()) throw Error("FID: statistics are empty");
  if (a.n < 2 || b.n < 2) throw Error("FID: needs at least 2 samples on each side");
  if (a.dim() != b.dim())
    throw Error("FID: feature dimensions differ (" + std::to_string(a.dim()) + " vs " + std::to_string(b.dim()) + ")");
  auto mu1 = a.mu.to(torch::kCPU, torch::kFloat64), mu2 = b.mu.to(torch::kCPU, torch::kFloat64);
  auto s1 = a.sigma.to(torch::kCPU, torch::kFloat64), s2 = b.sigma.to(torch::kCPU, torch::kFloat64);
  if (s1.dim() != 2 || s1.size(0) != a.dim() || s1.size(1) != a.dim() || s2.dim() != 2 || s2.size(0) != b.dim() ||
      s2.size(1) != b.dim())
    throw Error("FID: covariance shape does not match the mean");
  s1 = 0.5 * (s1 + s1.t());
  s2 = 0.5 * (s2 + s2.t());
  auto r1 = sqrt_psd(s1);
  auto m = r1.mm(s2).mm(r1);
  m = 0.5 * (m + m.t());
  double tr_covmean = at::linalg_eigvalsh(m, "L").clamp_min(0).sqrt().sum().item<double>();
  double diff = (mu1 - mu2).pow(2).sum().item<double>();
  FrechetParts p;
  p.mean = diff;
  p.cov = s1.trace().item<double>() + s2.trace().item<double>() - 2 * tr_covmean;
  if (!std::isfinite(p.total())) throw Error("FID: result is not finite (degenerate statistics?)");
  return p;
}

double frechet_distance(const FeatureStats& a, const FeatureStats& b) {
  return std::max(0.0, frechet_parts(a, b).total());
}

double fid(const torch::Tensor& a, const torch::Tensor& b) {
  auto fa = check_features(a, "FID", 2), fb = check_features(b, "FID", 2);
  check_same_dim(fa, fb, "FID");
  return frechet_distance(feature_stats(fa), feature_stats(fb));
}

double polynomial_mmd2(const torch::Tensor& a, const torch::Tensor& b, int degree, double gamma, double coef0) {
  auto x = check_features(a, "KID", 2), y = check_features(b, "KID", 2);
  check_same_dim(x, y, "KID");
  if (x.size(0) != y.size(0)) throw Error("KID: subsets must have equal sizes");
  if (degree < 1) throw Error("KID: kernel degree must be >= 1");
  const double g = gamma > 0 ? gamma : 1.0 / static_cast<double>(x.size(1));
  const double m = static_cast<double>(x.size(0));
  auto kxx = (x.mm(x.t()) * g + coef0).pow(degree);
  auto kyy = (y.mm(y.t()) * g + coef0).pow(degree);
  auto kxy = (x.mm(y.t()) * g + coef0).pow(degree);
  double sxx = (kxx.sum() - kxx.diagonal().sum()).item<double>() / (m * (m - 1));
  double syy = (kyy.sum() - kyy.diagonal().sum()).item<double>() / (m * (m - 1));
  double sxy = kxy.sum().item<double>() / (m * m);
  return sxx + syy - 2 * sxy;
}

KidResult kid(const torch::Tensor& a, const torch::Tensor& b, const KidOptions& opt) {
  auto x = check_features(a, "KID", 2), y = check_features(b, "KID", 2);
  check_same_dim(x, y, "KID");
  if (opt.subsets < 1) throw Error("KID: subsets must be >= 1");
  if (opt.subset_size < 2) throw Error("KID: subset size must be >= 2");
  const int64_t m = std::min<int64_t>({opt.subset_size, x.size(0), y.size(0)});
  std::mt19937_64 rng(opt.seed);
  std::vector<double> v;
  for (int s = 0; s < opt.subsets; ++s) {
    auto ix = torch::tensor(choose(x.size(0), m, rng), torch::kInt64);
    auto iy = torch::tensor(choose(y.size(0), m, rng), torch::kInt64);
    v.push_back(polynomial_mmd2(x.index_select(0, ix), y.index_select(0, iy), opt.degree, opt.gamma, opt.coef0));
  }
  KidResult r;
  r.subsets = opt.subsets;
  r.subset_size = static_cast<int>(m);
  r.mean = std::accumulate(v.begin(), v.end(), 0.0) / v.size();
  double ss = 0;
  for (double e : v) ss += (e - r.mean) * (e - r.mean);
  r.std = v.size() > 1 ? std::sqrt(ss / v.size()) : 0.0;  // numpy's std (ddof=0), as the reference
  return r;
}

torch::Tensor knn_radii(const torch::Tensor& features, int k, int64_t block) {
  if (k < 1) throw Error("precision/recall: k must be >= 1");
  auto x = check_features(features, "precision/recall", k + 1, torch::kFloat32);
  auto x_sq = x.pow(2).sum(1);
  const int64_t n = x.size(0);
  auto radii = torch::empty({n}, torch::kFloat32);
  for (int64_t i = 0; i < n; i += block) {
    int64_t b = std::min(block, n - i);
    auto d = sq_dists(x.narrow(0, i, b), x_sq.narrow(0, i, b), x, x_sq);
    // The row's own distance (0) is the smallest: the k-th neighbour is the (k+1)-th value.
    radii.narrow(0, i, b).copy_(std::get<0>(d.kthvalue(k + 1, 1)).sqrt());
  }
  return radii;
}

torch::Tensor in_manifold(const torch::Tensor& manifold, const torch::Tensor& radii, const torch::Tensor& query,
                          int64_t block) {
  auto m = check_features(manifold, "precision/recall", 1, torch::kFloat32);
  auto q = check_features(query, "precision/recall", 1, torch::kFloat32);
  check_same_dim(m, q, "precision/recall");
  if (!radii.defined() || radii.dim() != 1 || radii.size(0) != m.size(0))
    throw Error("precision/recall: radii must have one entry per manifold sample");
  auto r_sq = radii.to(torch::kCPU, torch::kFloat32).pow(2).unsqueeze(0);
  auto m_sq = m.pow(2).sum(1), q_sq = q.pow(2).sum(1);
  auto out = torch::empty({q.size(0)}, torch::kBool);
  for (int64_t i = 0; i < q.size(0); i += block) {
    int64_t b = std::min(block, q.size(0) - i);
    auto d = sq_dists(q.narrow(0, i, b), q_sq.narrow(0, i, b), m, m_sq);
    out.narrow(0, i, b).copy_(d.le(r_sq).any(1));
  }
  return out;
}

PrecisionRecall precision_recall(const torch::Tensor& real, const torch::Tensor& fake, int k) {
  auto r = check_features(real, "precision/recall (real)", k + 1, torch::kFloat32);
  auto f = check_features(fake, "precision/recall (generated)", k + 1, torch::kFloat32);
  check_same_dim(r, f, "precision/recall");
  PrecisionRecall pr;
  pr.k = k;
  pr.precision = in_manifold(r, knn_radii(r, k), f).to(torch::kFloat64).mean().item<double>();
  pr.recall = in_manifold(f, knn_radii(f, k), r).to(torch::kFloat64).mean().item<double>();
  return pr;
}

double class_agreement(const torch::Tensor& predicted, const torch::Tensor& wanted) {
  if (!predicted.defined() || !wanted.defined()) throw Error("class agreement: no predictions or classes");
  auto p = predicted.dim() == 2 ? predicted.argmax(1) : predicted;
  if (p.dim() != 1 || wanted.dim() != 1 || p.size(0) != wanted.size(0))
    throw Error("class agreement: predictions and wanted classes must be [N] with equal N");
  p = p.to(torch::kCPU, torch::kInt64);
  auto w = wanted.to(torch::kCPU, torch::kInt64);
  auto valid = w.ge(0);
  int64_t n = valid.sum().item<int64_t>();
  if (n == 0) throw Error("class agreement: no sample has a known class");
  return p.eq(w).logical_and(valid).sum().item<double>() / static_cast<double>(n);
}

}  // namespace diffuse
