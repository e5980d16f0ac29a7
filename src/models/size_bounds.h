#pragma once
// Lower bounds on what a model config makes us allocate, computed before any module is built.
//
// A config.json from the internet can ask for absurd channel or layer counts; building that
// module would reserve (and initialise) gigabytes before the weights are even read. Every
// folder loader compares the bound with the element count the weights file holds (header only)
// and refuses a config that cannot match its weights. The bounds count only tensors every
// variant of the architecture has, so they never exceed the real parameter count.
#include <string>

#include "models/autoencoder_kl.h"
#include "models/clip_text.h"
#include "models/dit.h"
#include "models/unet2d.h"
#include "models/unet2d_condition.h"

namespace diffuse {

double min_parameters(const UNet2DConfig& c);
double min_parameters(const UNet2DConditionConfig& c);
double min_parameters(const AutoencoderKLConfig& c);
double min_parameters(const DiTConfig& c);
double min_parameters(const CLIPTextConfig& c);

// Elements a model builds that are not stored (sinusoidal position tables, ...): bounded by an
// absolute limit since the weights file says nothing about them.
double min_buffer_elements(const DiTConfig& c);

namespace model_io {

// Total element count of the tensors in `dir`/`weights_file` (or its shards), read from the
// headers only; -1 when there is no such file (the loader reports that itself).
double stored_elements(const std::string& dir, const std::string& weights_file);

// Throws a diffuse::Error naming `dir`/config.json when a config implying `min_params`
// parameters (and `min_buffers` unstored elements) cannot be the one its weights were saved
// with, or exceeds what any model here may allocate.
void check_config_size(const std::string& dir, const std::string& weights_file, double min_params,
                       double min_buffers = 0);

}  // namespace model_io
}  // namespace diffuse
