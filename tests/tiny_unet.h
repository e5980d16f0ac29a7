#pragma once
// A tiny UNet2DModel config for pipeline, eval and trainer tests.
#include "models/unet2d.h"

namespace diffuse::test {
// A two-level UNet without attention (widths 8, 16) on `size` px, `channels` in and out, with
// `classes` + 1 class embeddings (the last for CFG) when `classes` > 0.
inline UNet2DConfig tiny_unet_config(int size, int channels, int classes) {
  UNet2DConfig c;
  c.sample_size = {size};
  c.in_channels = channels;
  c.out_channels = channels;
  c.block_out_channels = {8, 16};
  c.down_block_types = {"DownBlock2D", "DownBlock2D"};
  c.up_block_types = {"UpBlock2D", "UpBlock2D"};
  c.layers_per_block = 1;
  c.norm_num_groups = 4;
  c.add_attention = false;
  if (classes > 0) c.num_class_embeds = classes + 1;
  return c;
}
}  // namespace diffuse::test
