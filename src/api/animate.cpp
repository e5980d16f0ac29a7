// diffuse::animate: a trajectory or an interpolation of a class-conditional or unconditional
// model, laid out and encoded as an animated GIF or WebP.
#include "diffuse/animate.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <random>
#include <sstream>

#include "api/model_state.h"
#include "core/animation.h"
#include "core/error.h"
#include "pipelines/animate.h"

namespace diffuse {

namespace {

std::string fmt(double v, int digits = 3) {
  std::ostringstream o;
  o.precision(digits);
  o << v;
  return o.str();
}

}  // namespace

std::vector<FieldError> AnimationRequest::validate() const {
  std::vector<FieldError> e = generation.validate();
  if (mode != "trajectory" && mode != "interpolate")
    e.push_back({"mode", "must be trajectory or interpolate, got '" + mode + "'"});
  if (frames && *frames < 2) e.push_back({"frames", "must be at least 2, got " + std::to_string(*frames)});
  if (frames && *frames > 1000) e.push_back({"frames", "at most 1000"});
  if (!(fps > 0 && fps <= 100)) e.push_back({"fps", "must be in (0, 100]"});
  if (format != "gif" && format != "webp") e.push_back({"format", "must be gif or webp, got '" + format + "'"});
  if (frame_size < 1 || frame_size > 2048) e.push_back({"frame_size", "must be in [1, 2048]"});
  if (to_seed && *to_seed < 0) e.push_back({"to_seed", "must be >= 0"});
  if (mode == "trajectory" && (to_seed || !to_class.empty()))
    e.push_back({to_seed ? "to_seed" : "to_class", "applies to mode interpolate"});
  if (generation.n && *generation.n != 1) e.push_back({"n", "an animation shows one sample"});
  return e;
}

AnimationResult animate(const Model& model, const AnimationRequest& request, const GenerateHooks& hooks) {
  auto errors = request.validate();
  if (!errors.empty()) throw RequestError(std::move(errors));
  const ModelInfo& info = model.info();
  if (info.kind == ModelKind::StableDiffusion)
    throw RequestError("model", "animations are for class-conditional and unconditional models");
  AnimationRequest a = request;
  if (info.kind == ModelKind::Unconditional && !a.to_class.empty())
    throw RequestError("to_class", "this model is unconditional: it has no classes to interpolate between");
  for (auto& f : model.validate(a.generation)) errors.push_back(f);
  if (!errors.empty()) throw RequestError(std::move(errors));
  a.generation = model.resolve(a.generation);
  a.generation.n = 1;
  errors = model.validate(a.generation);
  if (!errors.empty()) throw RequestError(std::move(errors));
  GenerationRequest& r = a.generation;
  if (r.seed < 0) r.seed = static_cast<int64_t>(std::random_device{}() >> 1);

  Model::Impl& m = model_impl(model);
  const PixelPipeline& pipe = *m.pixel;
  const std::string& label = r.class_label.empty() ? r.prompt : r.class_label;
  int64_t class_a = -1, class_b = -1;
  if (pipe.class_conditional()) {
    class_a = label.empty() ? pipe.null_class : pipe.class_index(label);
    if (class_a < 0) throw RequestError("class", "this model has no null class: give a class");
    try {
      class_b = a.to_class.empty() ? class_a : pipe.class_index(a.to_class);
    } catch (const Error& e) {
      throw RequestError("to_class", e.what());
    }
  }
  const bool trajectory = a.mode == "trajectory";
  if (!trajectory && !a.to_seed) a.to_seed = a.to_class.empty() ? r.seed + 1 : r.seed;
  if (!trajectory && *a.to_seed == r.seed && class_a == class_b)
    throw RequestError("to_seed", "both ends are the same sample: give another to_seed or a to_class");
  GenerateOptions g = pixel_options(m, r);
  g.n = 1;
  if (pipe.class_conditional()) g.classes = {class_a};
  const int size = pipe.image_size();
  const int factor = std::max(1, (a.frame_size + size - 1) / size);

  const auto start = std::chrono::steady_clock::now();
  int done = 0;
  g.callback = [&](const StepInfo& st) {
    if (hooks.cancel.cancelled()) throw Cancelled();
    ++done;
    if (!hooks.progress) return;
    ProgressInfo p;
    p.step = done;
    p.total = st.total * (trajectory ? 1 : *a.frames);
    p.sigma = st.sigma_next;
    p.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    p.eta_s = p.elapsed_s / done * std::max(0, p.total - done);
    hooks.progress(p);
  };
  std::vector<Image> frames;
  std::lock_guard<std::mutex> lock(m.mu);
  if (hooks.cancel.cancelled()) throw Cancelled();
  with_request_errors([&] {
    if (trajectory) {
      // the number of states: the schedule's steps + 1
      const int states = (r.sigmas.empty() ? *r.steps : static_cast<int>(r.sigmas.size()) - 1) + 1;
      if (!a.frames) a.frames = states;
      if (*a.frames > states)
        throw RequestError("frames", std::to_string(*a.frames) + " frames from a run of " + std::to_string(states - 1) +
                                         " steps (" + std::to_string(states) + " states): ask for at most " +
                                         std::to_string(states) + " frames, or more steps");
      for (const auto& st : sample_trajectory(pipe, g, spread_frames(*a.frames, states)))
        frames.push_back(compose_frame({st.x, st.x0}, factor,
                                       a.captions ? "step " + std::to_string(st.step) + "/" +
                                                        std::to_string(states - 1) + " sigma " + fmt(st.sigma)
                                                  : ""));
    } else {
      if (!a.frames) a.frames = 16;
      auto samples = interpolation_samples(pipe, g, static_cast<uint64_t>(r.seed), static_cast<uint64_t>(*a.to_seed),
                                           class_a, class_b, *a.frames);
      for (int i = 0; i < *a.frames; ++i)
        frames.push_back(compose_frame({samples[i]}, factor,
                                       a.captions ? "t " + fmt(static_cast<double>(i) / (*a.frames - 1), 2) : ""));
    }
  });
  std::ostringstream params;
  params << "Animation: " << a.mode << ", Frames: " << *a.frames << ", FPS: " << a.fps;
  if (!trajectory) {
    params << ", To seed: " << *a.to_seed;
    if (!a.to_class.empty()) params << ", To class: " << a.to_class;
  }
  GenerationRequest shown = r;
  shown.model = info.name;
  shown.guide_model = std::filesystem::path(r.guide_model).filename().string();
  AnimationResult res;
  res.infotext = shown.to_infotext() + "\n" + params.str();
  AnimationOptions ao;
  ao.fps = a.fps;
  ao.comment = res.infotext;
  res.bytes = a.format == "gif" ? encode_gif(frames, ao) : encode_webp(frames, ao);
  res.frames = static_cast<int>(frames.size());
  res.width = frames[0].width;
  res.height = frames[0].height;
  res.request = a;
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return res;
}

}  // namespace diffuse
