#pragma once
// Sample-quality metrics on feature vectors ([N, D] tensors, any feature network):
// FID (Heusel et al. 2017), KID (Binkowski et al. 2018), improved precision/recall
// (Kynkaanniemi et al. 2019) and class agreement. All bad input throws diffuse::Error.
#include <torch/torch.h>

#include <cstdint>

namespace diffuse {

// Mean and covariance (unbiased, N - 1) of a feature set, in float64 on the CPU.
struct FeatureStats {
  torch::Tensor mu;     // [D] float64
  torch::Tensor sigma;  // [D, D] float64
  int64_t n = 0;

  int64_t dim() const { return mu.defined() ? mu.size(0) : 0; }
  bool defined() const { return mu.defined() && sigma.defined(); }
};

// Needs at least 2 rows.
FeatureStats feature_stats(const torch::Tensor& features);

// Frechet distance between two Gaussians:
//   ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrtm(S1 S2),
// with tr sqrtm(S1 S2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1))) (symmetric, stays real;
// tiny negative eigenvalues from rounding are clipped to 0). Clamped at 0.
double frechet_distance(const FeatureStats& a, const FeatureStats& b);
// The two terms of the Frechet distance: what the means contribute and what the covariances do.
// A model whose samples sit off-centre shows in `mean`; one with the wrong spread or shape in `cov`.
struct FrechetParts {
  double mean = 0;  // ||mu1 - mu2||^2
  double cov = 0;   // tr(S1) + tr(S2) - 2 tr sqrtm(S1 S2)
  double total() const { return mean + cov; }
};
FrechetParts frechet_parts(const FeatureStats& a, const FeatureStats& b);
// FID between two feature sets.
double fid(const torch::Tensor& a, const torch::Tensor& b);

struct KidOptions {
  int subsets = 100;       // as the reference implementation
  int subset_size = 1000;  // capped by both set sizes
  int degree = 3;          // polynomial kernel k(x, y) = (gamma x.y + coef0)^degree
  double gamma = 0;        // 0 = 1 / D
  double coef0 = 1;
  uint64_t seed = 0;  // subset sampling
};
struct KidResult {
  double mean = 0;  // unbiased MMD^2 averaged over subsets (can be slightly negative)
  double std = 0;   // standard deviation over subsets
  int subsets = 0;
  int subset_size = 0;
};
// Kernel Inception Distance (in whatever feature space `a` and `b` live in).
KidResult kid(const torch::Tensor& a, const torch::Tensor& b, const KidOptions& opt = {});
// Unbiased MMD^2 with the polynomial kernel between two full sets (sizes >= 2).
double polynomial_mmd2(const torch::Tensor& a, const torch::Tensor& b, int degree = 3, double gamma = 0,
                       double coef0 = 1);

struct PrecisionRecall {
  double precision = 0;  // share of `fake` inside the real manifold
  double recall = 0;     // share of `real` inside the fake manifold
  int k = 3;
};
// Distance from each row to its k-th nearest other row ([N] float32). Needs N > k.
torch::Tensor knn_radii(const torch::Tensor& x, int k, int64_t block = 1024);
// For each row of `query`: does it fall within radii[j] of some row j of `manifold`?
torch::Tensor in_manifold(const torch::Tensor& manifold, const torch::Tensor& radii, const torch::Tensor& query,
                          int64_t block = 1024);
// Improved precision and recall (k-NN hyperspheres, k = 3 as in the paper).
PrecisionRecall precision_recall(const torch::Tensor& real, const torch::Tensor& fake, int k = 3);

// Share of predictions equal to the wanted class; entries with wanted < 0 are ignored.
// `predicted` is class ids [N] or logits [N, K]. Throws when no entry has a wanted class.
double class_agreement(const torch::Tensor& predicted, const torch::Tensor& wanted);

}  // namespace diffuse
