#pragma once
// Captioned image datasets for text-to-image training, in the conventions people already use:
//  - kohya: `image.png` + `image.txt` (the caption extension is an option); a first-level
//    subfolder named `N_name` repeats its images N times per epoch;
//  - Hugging Face imagefolder: `metadata.jsonl` lines {"file_name": ..., "text": ...} (file_name
//    relative to the metadata file's folder; any folder of the tree may hold one);
//  - `emoji-captions`: the emoji dataset (train/emoji.h), each emoji captioned with its Unicode
//    name and subgroup ("red apple, food-fruit"), with the emoji dataset's held-out split.
// Images that are not square are bucketed by aspect ratio (kohya / NovelAI): bucket sides are
// multiples of a size step with an area close to resolution², each image is resized to cover its
// bucket and centre-cropped, and every batch is drawn from one bucket.
#include <torch/torch.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace diffuse {

struct CaptionedOptions {
  std::string caption_ext = ".txt";  // kohya caption files: image stem + this
  int resolution = 0;                // target side (bucket area ~ resolution²); 0 = 512 (emoji-captions: 64)
  int size_step = 64;                // bucket sides are multiples of this (the model's size step)
  bool buckets = true;               // false: every image is resized and centre-cropped to resolution²
  std::string split = "train";       // emoji-captions: train | test | all
  // Non-empty: every image of the folder gets this caption and caption files are not read (class
  // images for prior preservation).
  std::string caption;
};

struct CaptionedBucket {
  int width = 0, height = 0;
  torch::Tensor images;        // uint8 [n, 3, height, width]
  std::vector<int64_t> items;  // row -> index into CaptionedDataset's per-image vectors
};

struct CaptionedDataset {
  std::vector<std::string> captions;  // per image
  std::vector<std::string> files;     // per image: the file (emoji: its name)
  std::vector<int> repeats;           // per image: times per epoch (>= 1)
  std::vector<int> bucket_of;         // per image: its bucket
  std::vector<int64_t> row_of;        // per image: its row in the bucket
  std::vector<CaptionedBucket> buckets;
  torch::Tensor labels;                  // emoji-captions: subgroup ids [N]; undefined otherwise
  std::vector<std::string> class_names;  // emoji-captions: the subgroups
  std::string source;
  int resolution = 0;

  int64_t size() const { return static_cast<int64_t>(captions.size()); }
  // Images per epoch, repeats included.
  int64_t epoch_size() const;
};

// Bucket resolutions (width, height) for a target side and size step: for every width from
// max(step, resolution/2 rounded down) to 2 * resolution, the largest height (a multiple of
// `step`, in the same range) with width * height <= resolution², and the transposes. Sorted by
// aspect ratio; always includes the square (resolution rounded down to the step).
std::vector<std::pair<int, int>> bucket_resolutions(int resolution, int step);
// The bucket whose aspect ratio is closest to w / h (ties: the larger area).
std::pair<int, int> nearest_bucket(int w, int h, const std::vector<std::pair<int, int>>& buckets);
// Resizes [C, H, W] (area interpolation when shrinking, bilinear when enlarging) so that it covers
// width x height, then centre-crops to exactly that.
torch::Tensor resize_cover_crop(const torch::Tensor& chw, int width, int height);

// `spec`: "emoji-captions" or a folder (kohya captions and/or metadata.jsonl). Throws
// diffuse::Error naming the folder and listing the images without a caption, with an empty
// caption, or that cannot be read, and metadata lines that name no image.
CaptionedDataset load_captioned(const std::string& spec, const CaptionedOptions& opt = {});

// Whether `spec` names a captioned dataset: "emoji-captions", or a folder holding caption files
// (`caption_ext`) or a metadata.jsonl.
bool is_captioned_dataset(const std::string& spec, const std::string& caption_ext = ".txt");

// The built-in dataset of the images a built-in captioned dataset captions ("emoji-captions" ->
// "emoji", with the same classes and split), or "" for any other spec.
std::string captioned_images_dataset(const std::string& spec);

struct CaptionedBatch {
  int64_t step = 0;
  int bucket = 0;
  std::vector<int64_t> rows;          // rows of the bucket
  std::vector<int64_t> items;         // indices into the dataset's per-image vectors
  std::vector<std::string> captions;  // per batch element
  torch::Tensor images;               // float [B, 3, h, w] in [-1, 1] (B <= batch size)
};

// Deterministic batches: the batch of a step depends only on (seed, step), so an interrupted run
// resumes with the same data order. Each epoch every image appears `repeats` times; within each
// bucket the copies are shuffled and cut into batches (the last one may be smaller), and the
// batches of all buckets are shuffled together.
class CaptionedLoader {
 public:
  CaptionedLoader(const CaptionedDataset& data, int batch_size, uint64_t seed);
  int64_t batches_per_epoch() const { return batches_per_epoch_; }
  CaptionedBatch make(int64_t step) const;

 private:
  struct Planned {
    int bucket;
    std::vector<int64_t> rows;
  };
  std::vector<Planned> plan(int64_t epoch) const;

  const CaptionedDataset& data_;
  int batch_size_;
  uint64_t seed_;
  int64_t batches_per_epoch_ = 0;
  mutable std::mutex mu_;
  mutable int64_t cached_epoch_ = -1;
  mutable std::vector<Planned> cached_;
};

}  // namespace diffuse
