#pragma once
// `diffuse eval`: scores generated samples (from a pipeline or a folder of images) in a
// feature network's space against a real-data reference set, beside the real-data floor
// (the same metrics for held-out real images).
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "eval/classifier.h"
#include "eval/metrics.h"
#include "eval/reference.h"
#include "pipelines/pixel_pipeline.h"
#include "pipelines/sd_pipeline.h"

namespace diffuse {

// NaN marks a metric that was not computed (e.g. class agreement without classes).
struct QualityMetrics {
  int64_t n = 0;
  double fid = NAN;
  double fid_mean = NAN;  // the mean term ||mu - mu_ref||^2 of the FID (the rest is the covariances')
  double kid = NAN;
  double kid_std = NAN;
  double precision = NAN;
  double recall = NAN;
  double class_agreement = NAN;
};

// The samples' metrics restricted to one class of the feature network, beside the same for the
// floor's held-out images of that class. FID is against the training images of that class.
struct ClassMetrics {
  std::string name;  // the feature network's class name (its id when it has none)
  int64_t n = 0;     // samples asked for this class
  double fid = NAN;
  double class_agreement = NAN;
  int64_t floor_n = 0;  // held-out images of this class scored for its floor
  double floor_fid = NAN;
  double floor_class_agreement = NAN;

  double fid_ratio() const { return floor_fid > 0 ? fid / floor_fid : NAN; }
};

struct MetricOptions {
  int k = 3;          // precision/recall neighbourhood
  KidOptions kid;     // 100 subsets of min(1000, n)
  uint64_t seed = 0;  // reference subset for precision/recall (and KID subsets)
  bool compute_kid = true;
  bool compute_precision_recall = true;
};

// Scores embedded samples against `ref`: FID/KID against all reference features, precision/recall
// against a random reference subset of the same size as the samples. `wanted` holds the feature
// network's class id per sample (-1 unknown) or is undefined (no class agreement).
QualityMetrics score_embedding(const Embedding& samples, const torch::Tensor& wanted, const ReferenceSet& ref,
                               const MetricOptions& opt = {});

// Per-class FID and class agreement for each of `class_names` (ids 0..K-1): the samples whose wanted
// class is k against the reference images labelled k (FID stays NaN with fewer than 2 of either).
// With `test` (a labelled held-out split), class k's floor is as many random held-out images of
// class k as there are samples of it (`seed` picks them), scored the same way.
std::vector<ClassMetrics> per_class_metrics(const Embedding& samples, const torch::Tensor& wanted,
                                            const ReferenceSet& ref, const std::vector<std::string>& class_names,
                                            const ReferenceSet* test = nullptr, uint64_t seed = 0);

// Progress of a long stage ("generate", "embed", "reference", "metrics").
using EvalProgress = std::function<void(const std::string& stage, int64_t done, int64_t total)>;

// Class-balanced generation for evaluation: image i gets class i mod K (K = the pipeline's classes,
// unconditional models get none) and seed opt.seed + i, in chunks of opt.batch_size. Returns 8-bit
// images [n, C, H, W] (quantised as a saved PNG would be); `classes` receives the pipeline class ids.
// With opt.shards > 1 only the chunks whose index modulo opt.shards is opt.shard are generated and
// the other rows are zero (each image is the same as without sharding).
torch::Tensor generate_for_eval(const PixelPipeline& pipe, const GenerateOptions& opt, int n,
                                std::vector<int64_t>* classes = nullptr, const EvalProgress& progress = {});

// Writes 8-bit images [n, C, H, W] from generate_for_eval to `dir` as dir/<class folder>/<i>.png
// (dir/<i>.png without classes), each with its generation parameters (seed opt.seed + i), all or
// nothing: into a temporary sibling folder renamed to `dir` at the end. Throws when `dir` is a
// file or a non-empty folder.
void save_eval_samples(const std::string& dir, const torch::Tensor& images, const PixelPipeline& pipe,
                       const GenerateOptions& opt, const std::vector<int64_t>& classes);

// Throws diffuse::Error when the pipeline's images cannot be fed to the feature network
// (channel count differs, or the size is neither equal nor centre-croppable).
void check_compatible(const PixelPipeline& pipe, const FeatureNet& net);

struct EvalOptions {
  std::string data;          // reference dataset ("" = the feature network's training data)
  int n = 10000;             // samples (images: at most this many, 0 = all)
  GenerateOptions generate;  // sampler, steps, guidance, seed, batch size (n and classes are set here)
  MetricOptions metrics;
  std::string cache_dir = default_cache_dir();  // "" = no cache
  bool floor = true;                            // also score n held-out real images
  bool per_class = false;                       // also report per-class FID and agreement
  // Model evaluations: also write the scored images as PNGs to this folder (one subfolder per class,
  // named by class_folder_name; file i is seed + i), so `evaluate_images` can score them again.
  // The folder must not exist or be empty; it appears only when every image is written.
  std::string save_samples;
  EvalProgress progress;
  // Sharded generation across processes (generate.shard of generate.shards): `gather` receives this
  // process's images (the other shards' rows zero) and returns all n of them, or an undefined tensor
  // where this process only generates: evaluate_pipeline then returns without scoring.
  std::function<torch::Tensor(const torch::Tensor&)> gather;
};

struct EvalReport {
  std::string kind;     // "model" or "images"
  std::string subject;  // model or image folder
  std::string data;
  std::string classifier;
  std::string classifier_fingerprint;
  int64_t reference_n = 0;
  std::string reference_cache;
  bool conditional = false;
  std::string class_note;    // why class agreement is missing, if it is
  GenerateOptions generate;  // settings used (model evaluations)
  QualityMetrics samples;
  QualityMetrics floor;
  std::vector<ClassMetrics> per_class;  // with EvalOptions::per_class and known classes
  std::string samples_dir;              // where the samples were saved ("" = not saved)
  double generate_seconds = 0;
  double total_seconds = 0;

  // FID of the samples divided by the floor's (NaN without a floor).
  double fid_ratio() const { return floor.fid > 0 ? samples.fid / floor.fid : NAN; }
  std::string to_json() const;  // NaN -> null
  std::string table() const;    // human-readable, one metric per row
};

EvalReport evaluate_pipeline(const PixelPipeline& pipe, const FeatureNet& net, const EvalOptions& opt);
// Scores every PNG/JPEG in `dir` (or a random `opt.n` of them); labelled subfolders named after the
// feature network's classes give class agreement. Images are converted to the network's channels and
// centre-cropped/resized to its size.
EvalReport evaluate_images(const std::string& dir, const FeatureNet& net, const EvalOptions& opt);
// A text-to-image model (a Stable Diffusion pipeline) on the held-out captions of a captioned
// dataset with classes (emoji-captions): one image per caption at the feature network's size (at
// most opt.n, in order; image i
// has seed opt.generate.seed + i, an empty negative prompt and opt.generate's sampler, steps and
// guidance), scored against the real images of the dataset with classes (emoji), the wanted class
// of each image being its caption's. The floor, with opt.n at least the held-out split's size, is
// the real images of those captions.
EvalReport evaluate_text_to_image(const SDPipeline& pipe, const FeatureNet& net, const EvalOptions& opt);

// The real-data floor alone: n random held-out images of `data` scored against `ref`.
QualityMetrics real_data_floor(const FeatureNet& net, const std::string& data, const ReferenceSet& ref, int64_t n,
                               const std::string& cache_dir, const MetricOptions& opt = {},
                               const EvalProgress& progress = {});

// The same from an already embedded held-out split.
QualityMetrics real_data_floor(const ReferenceSet& test, const ReferenceSet& ref, int64_t n,
                               const MetricOptions& opt = {});

// FID of n class-balanced samples against `ref` (e.g. training-set statistics), for tracking
// during training. `opt` gives sampler/steps/guidance/seed (its n and classes are ignored).
double quick_fid(const PixelPipeline& pipe, const FeatureNet& net, const FeatureStats& ref, int n,
                 const GenerateOptions& opt = {});

// Finds the shipped feature network for a dataset name ("<data>-classifier"): $DIFFUSE_CLASSIFIER_DIR,
// then models/<data>-classifier under the working directory and under the executable's ancestors.
// Throws diffuse::Error listing the places tried.
std::string find_classifier(const std::string& data = "fashion-mnist");

// The evaluation of `diffuse train --eval-every` (TrainOptions::evaluate): FID of `n` samples of the
// pipeline folder it is given (the default sampler, seed 0) against the training-set statistics of
// the feature network's dataset. The network (`classifier_dir`, or find_classifier()) and the
// statistics are loaded on the first call and kept by the returned function.
std::function<double(const std::string& pipeline_dir)> train_fid_evaluator(const std::string& classifier_dir, int n);

}  // namespace diffuse
