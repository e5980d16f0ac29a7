#pragma once
// The one place where `diffuse generate` flags map to GenerationRequest / LoadOptions fields,
// and back: library errors name request fields, which the CLI shows as its flags.
#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "diffuse/diffuse.h"

namespace diffuse::cli {

// Values of the generation flags; each flag sets its field only when given.
struct RequestArgs {
  GenerationRequest req;  // the fields flags write into (copied over the base request)
  std::string init_image_path, mask_path, outpaint, params_from, sigmas;
  std::string original_size, crop_coords, target_size;  // SDXL: "H,W", "TOP,LEFT", "H,W"
  std::string negative_original_size, negative_crop_coords, negative_target_size;
  double aesthetic_score = 0, negative_aesthetic_score = 0;
  std::vector<std::string> loras;  // FILE[:weight]
  std::vector<CLI::Option*> given;
  std::vector<std::pair<CLI::Option*, const char*>> fields;  // option -> request field
  // typed values of the flags whose fields are optional
  int n = 0, batch = 0, steps = 0;
  double guidance = 0, eta = 0, guidance_lo = 0, guidance_hi = 0;
  bool guide_unconditional = false;
  // load options
  LoadOptions load;
  std::string latents, prompt_embeds;
};

// Registers every generation flag on `cmd`.
void add_request_options(CLI::App* cmd, RequestArgs* a);
// The request: --params-from's infotext (if given), then every flag given on the command line.
GenerationRequest build_request(RequestArgs& a);
// Rewrites request field names in a library message as the flags that set them
// ("guide_model /x: ..." -> "--guide-model /x: ...").
std::string fields_as_flags(const std::string& message);

}  // namespace diffuse::cli
