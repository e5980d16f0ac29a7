#pragma once
// The diffuse library: load a model, fill a GenerationRequest, generate, save the images.
//
//   auto model = diffuse::Model::load("models/fashion-mnist");
//   diffuse::GenerationRequest req;
//   req.class_label = "sneaker";
//   auto result = model.generate(req);
//   std::string png = diffuse::encode_image(result.images[0], "png", result.infotexts[0]);
#include "diffuse/animate.h"
#include "diffuse/denoise.h"
#include "diffuse/error.h"
#include "diffuse/model.h"
#include "diffuse/request.h"
#include "diffuse/upscale.h"

#define DIFFUSE_VERSION "0.1.0"
