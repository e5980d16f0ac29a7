// diffuse serve's upscale, denoise and animate routes, in process over loopback, against the
// library's Upscaler, denoise() and animate() on the shipped Fashion-MNIST models.
#include <gtest/gtest.h>
#include <httplib.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <thread>

#include "animation_decode.h"
#include "core/base64.h"
#include "core/image.h"
#include "diffuse/diffuse.h"
#include "fixtures.h"
#include "running_server.h"

namespace diffuse {
namespace {

using json = nlohmann::json;

// fashion-mnist, its 2x super-resolution model and a latent model (emoji-dit).
server::ServerOptions edit_options(const std::string& token = "") {
  server::ServerOptions o;
  o.models = server::find_models({test::source_path("models/fashion-mnist"),
                                  test::source_path("models/fashion-mnist-sr"), test::source_path("models/emoji-dit")},
                                 "");
  o.token = token;
  return o;
}

test::RunningServer& edit_server() {
  static test::RunningServer s(edit_options());
  return s;
}

// The field a 400 reply names, or its status and body.
std::string rejected_field(httplib::Client& c, const char* path, const json& req) {
  auto r = c.Post(path, req.dump(), "application/json");
  if (!r) return "no reply";
  if (r->status != 400) return "status " + std::to_string(r->status) + ": " + r->body;
  return json::parse(r->body)["error"]["field"].get<std::string>();
}

// A clean 28x28 Fashion-MNIST sample in [-1, 1], [1, 28, 28].
torch::Tensor clean_sample() {
  GenerationRequest q;
  q.class_label = "trouser";
  q.steps = 8;
  q.seed = 3;
  return Model::load(test::source_path("models/fashion-mnist")).generate(q).images[0].clamp(-1, 1);
}

double psnr(const torch::Tensor& a, const torch::Tensor& b) {
  const double mse = (a - b).pow(2).mean().item<double>();  // range 2
  return 10 * std::log10(4.0 / mse);
}

TEST(Server, UpscaleRouteMatchesTheLibrary) {
  auto c = edit_server().client();
  const torch::Tensor low = torch::avg_pool2d(clean_sample().unsqueeze(0), 2).squeeze(0);
  const std::string png = encode_image(low, "png");
  json req = {{"model", "fashion-mnist-sr"},
              {"image", "data:image/png;base64," + base64_encode(png)},
              {"steps", 6},
              {"seed", 11}};
  auto r = c.Post("/api/v1/upscale", req.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->get_header_value("Content-Type"), "image/png");
  EXPECT_EQ(r->get_header_value("X-Diffuse-Scale"), "2");
  const Image out = decode_image(r->body, "response");
  EXPECT_EQ(out.width, 28);
  EXPECT_EQ(out.height, 28);
  EXPECT_NE(png_parameters(r->body).find("Seed: 11"), std::string::npos) << png_parameters(r->body);

  auto up = Upscaler::load(test::source_path("models/fashion-mnist-sr"));
  UpscaleRequest q;
  q.image = decode_image(png, 1, "input");
  q.steps = 6;
  q.seed = 11;
  auto lib = up.upscale(q);
  EXPECT_TRUE(torch::equal(decode_image(r->body, 1, "png"), to_tensor(to_image(lib.image.clamp(-1, 1)))));

  // listed with its kind and sizes
  auto m = json::parse(c.Get("/api/v1/models")->body)["models"];
  bool listed = false;
  for (const auto& e : m)
    if (e["name"] == "fashion-mnist-sr") {
      listed = true;
      EXPECT_EQ(e["kind"], "superres");
      EXPECT_EQ(e["scale"], 2);
      EXPECT_EQ(e["low_resolution_size"], 14);
      EXPECT_EQ(e["high_resolution_size"], 28);
      EXPECT_EQ(e["channels"], 1);
    }
  EXPECT_TRUE(listed) << m.dump();

  // bad requests name the field
  req["scale"] = 3;
  EXPECT_EQ(rejected_field(c, "/api/v1/upscale", req), "scale");
  req.erase("scale");
  req["steps"] = "six";
  EXPECT_EQ(rejected_field(c, "/api/v1/upscale", req), "steps");
  req["steps"] = 100000;
  EXPECT_EQ(rejected_field(c, "/api/v1/upscale", req), "steps");
  req["steps"] = 6;
  req["path"] = "/etc/passwd";
  EXPECT_EQ(rejected_field(c, "/api/v1/upscale", req), "path");
  req.erase("path");
  req["model"] = "fashion-mnist";  // not a super-resolution model
  EXPECT_EQ(rejected_field(c, "/api/v1/upscale", req), "model");
  req["model"] = "nope";
  EXPECT_EQ(rejected_field(c, "/api/v1/upscale", req), "model");
  req["model"] = "fashion-mnist-sr";
  req["image"] = "not base64!";
  EXPECT_EQ(rejected_field(c, "/api/v1/upscale", req), "image");
  // and a generation job cannot name it
  EXPECT_EQ(rejected_field(c, "/api/v1/jobs", {{"model", "fashion-mnist-sr"}, {"steps", 2}}), "model");
}

TEST(Server, DenoiseRouteImprovesANoisyImage) {
  auto c = edit_server().client();
  const torch::Tensor clean = clean_sample();
  torch::manual_seed(5);
  const torch::Tensor noisy = (clean + 0.2 * torch::randn_like(clean)).clamp(-1, 1);
  const std::string png = encode_image(noisy, "png");
  json req = {{"model", "fashion-mnist"}, {"image", base64_encode(png)}, {"sigma", "auto"}};
  auto r = c.Post("/api/v1/denoise", req.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->get_header_value("Content-Type"), "image/png");
  const double sigma = std::stod(r->get_header_value("X-Diffuse-Sigma"));
  EXPECT_GT(sigma, 0.1);
  EXPECT_LT(sigma, 0.3);
  EXPECT_EQ(r->get_header_value("X-Diffuse-Sigma-Estimated"), "true");
  const torch::Tensor out = decode_image(r->body, 1, "png");
  const torch::Tensor input = decode_image(png, 1, "png");
  EXPECT_GT(psnr(out, clean), psnr(input, clean) + 1.0);

  req["sigma"] = 0.2;
  r = c.Post("/api/v1/denoise", req.dump(), "application/json");
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->get_header_value("X-Diffuse-Sigma-Estimated"), "false");
  EXPECT_EQ(std::stod(r->get_header_value("X-Diffuse-Sigma")), 0.2);

  req["sigma"] = "loud";
  EXPECT_EQ(rejected_field(c, "/api/v1/denoise", req), "sigma");
  req["sigma"] = "auto";
  req["mode"] = "guess";
  EXPECT_EQ(rejected_field(c, "/api/v1/denoise", req), "mode");
  req.erase("mode");
  req["strength"] = 0.5;  // a job field, not a denoise one
  EXPECT_EQ(rejected_field(c, "/api/v1/denoise", req), "strength");
  req.erase("strength");
  req["model"] = "emoji-dit";  // a latent model
  EXPECT_EQ(rejected_field(c, "/api/v1/denoise", req), "model");
  req["model"] = "fashion-mnist-sr";
  EXPECT_EQ(rejected_field(c, "/api/v1/denoise", req), "model");
}

TEST(Server, AnimateRouteReturnsAGif) {
  auto c = edit_server().client();
  json req = {{"model", "fashion-mnist"}, {"mode", "trajectory"}, {"frames", 4}, {"format", "gif"},
              {"class", "sneaker"},       {"steps", 6},           {"seed", 2}};
  auto r = c.Post("/api/v1/animate", req.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->get_header_value("Content-Type"), "image/gif");
  EXPECT_EQ(r->body.substr(0, 6), "GIF89a");
  EXPECT_EQ(r->get_header_value("X-Diffuse-Frames"), "4");
  auto d = test::decode_gif(r->body);
  EXPECT_EQ(d.rgb.size(), 4u);
  EXPECT_NE(d.comment.find("Animation: trajectory, Frames: 4"), std::string::npos) << d.comment;

  // interpolation between classes as WebP
  json webp = {{"model", "fashion-mnist"}, {"mode", "interpolate"}, {"frames", 3}, {"format", "webp"},
               {"class", "sneaker"},       {"to_class", "sandal"},  {"steps", 4},  {"seed", 2}};
  r = c.Post("/api/v1/animate", webp.dump(), "application/json");
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->get_header_value("Content-Type"), "image/webp");
  ASSERT_GT(r->body.size(), 12u);
  EXPECT_EQ(r->body.substr(0, 4), "RIFF");
  EXPECT_EQ(r->body.substr(8, 4), "WEBP");
  EXPECT_EQ(r->get_header_value("X-Diffuse-Frames"), "3");

  req["frames"] = 1;
  EXPECT_EQ(rejected_field(c, "/api/v1/animate", req), "frames");
  req["frames"] = 4;
  req["class"] = "hat";
  EXPECT_EQ(rejected_field(c, "/api/v1/animate", req), "class");
  req["class"] = "sneaker";
  req["guide_model"] = "/tmp/x";
  EXPECT_EQ(rejected_field(c, "/api/v1/animate", req), "guide_model");
}

TEST(Server, EditRoutesNeedTheToken) {
  test::RunningServer s(edit_options("s3cret"));
  auto c = s.client();
  const std::string body = R"({"model": "fashion-mnist", "mode": "trajectory", "frames": 2, "steps": 2})";
  for (const char* path : {"/api/v1/upscale", "/api/v1/denoise", "/api/v1/animate"}) {
    auto r = c.Post(path, body, "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 401) << path;
  }
  c.set_bearer_token_auth("s3cret");
  auto r = c.Post("/api/v1/animate", body, "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
}

}  // namespace
}  // namespace diffuse
