#pragma once
// diffusers `Attention` (with the AttnProcessor math): optional group_norm, to_q / to_k /
// to_v projections, multi-head softmax(Q K^T * scale) V, to_out.0 (Linear) + to_out.1
// (Dropout), optional residual connection and output rescaling. Accepts tokens [B, N, C]
// or feature maps [B, C, H, W] (flattened to H*W tokens and restored), and optional
// encoder_hidden_states [B, M, cross_attention_dim] for cross-attention.
#include <torch/torch.h>

#include <cstdint>
#include <optional>

#include "nn/linear.h"

namespace diffuse::nn {

// softmax(q k^T * scale + mask) v over the last two dims.
// q [..., Nq, D], k [..., Nk, D], v [..., Nk, Dv]; mask (optional, additive) broadcastable to
// [..., Nq, Nk]. query_chunk > 0 processes that many query tokens at a time, bounding the
// score matrix to [..., query_chunk, Nk]; the result is the same as unchunked.
// query_chunk 0 (automatic) chunks only when the whole score matrix would exceed
// attention_memory_budget() bytes, with the largest chunk that fits; < 0 never chunks.
// upcast_attention computes q k^T in float32; upcast_softmax runs the softmax in float32.
// Uses matmul + softmax only (no baddbmm with beta = 0 on uninitialised memory).
torch::Tensor dot_product_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                    double scale, const torch::Tensor& mask = {}, int64_t query_chunk = 0,
                                    bool upcast_attention = false, bool upcast_softmax = false);

// Bytes one score matrix may take before automatic chunking starts (default 128 MiB).
int64_t attention_memory_budget();
void set_attention_memory_budget(int64_t bytes);
// The query chunk `query_chunk` resolves to for these shapes (0 = no chunking).
int64_t resolve_query_chunk(int64_t query_chunk, const torch::Tensor& q, int64_t nk);

struct AttentionOptions {
  int64_t query_dim = 0;
  std::optional<int64_t> cross_attention_dim;  // key/value input width; default query_dim
  int64_t heads = 8;
  int64_t dim_head = 64;
  double dropout = 0.0;
  bool bias = false;  // bias of to_q/to_k/to_v
  bool upcast_attention = false;
  bool upcast_softmax = false;
  std::optional<int64_t> norm_num_groups;  // adds `group_norm` over channels
  double eps = 1e-5;                       // group_norm eps
  bool out_bias = true;
  bool scale_qk = true;  // scale = dim_head^-0.5, else 1
  double rescale_output_factor = 1.0;
  bool residual_connection = false;
  std::optional<int64_t> out_dim;  // output width (and heads = out_dim / dim_head); default query_dim

  AttentionOptions() = default;
  AttentionOptions(int64_t query_dim_, int64_t heads_, int64_t dim_head_)
      : query_dim(query_dim_), heads(heads_), dim_head(dim_head_) {}
};

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const AttentionOptions& o);
  // hidden_states [B, N, C] or [B, C, H, W]; encoder_hidden_states [B, M, Ck] (cross-attention);
  // attention_mask: additive; [B, M], [B, N or 1, M] or broadcastable to [B, heads, N, M].
  torch::Tensor forward(const torch::Tensor& hidden_states, const torch::Tensor& encoder_hidden_states = {},
                        const torch::Tensor& attention_mask = {});

  // Query tokens per attention chunk (0 = automatic, see dot_product_attention; < 0 = all at
  // once); trades speed for peak memory.
  void set_query_chunk_size(int64_t n) { query_chunk_ = n; }
  int64_t query_chunk_size() const { return query_chunk_; }
  const AttentionOptions& options() const { return opt_; }
  int64_t heads() const { return heads_; }

  torch::nn::GroupNorm group_norm{nullptr};  // null unless norm_num_groups
  nn::Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr};
  torch::nn::ModuleList to_out{nullptr};  // [0] Linear, [1] Dropout
  nn::Linear to_out_linear{nullptr};
  torch::nn::Dropout to_out_dropout{nullptr};

 private:
  AttentionOptions opt_;
  int64_t heads_;
  int64_t inner_dim_;
  double scale_;
  int64_t query_chunk_ = 0;
};
TORCH_MODULE(Attention);

// Sets the query chunk size of every Attention inside `m`.
void set_attention_query_chunk_size(torch::nn::Module& m, int64_t n);

}  // namespace diffuse::nn
