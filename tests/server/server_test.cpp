// diffuse serve's routes, in process over loopback with httplib's client: happy paths with the
// shipped fashion-mnist model and the tiny Stable Diffusion fixture, and hostile requests.
#include "server/server.h"

#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <thread>

#include "core/base64.h"
#include "core/image.h"
#include "diffuse/diffuse.h"
#include "fixtures.h"
#include "running_server.h"
#include "sd_tiny_text.h"

namespace diffuse {
namespace {

using json = nlohmann::json;

server::ServerOptions served_options(const std::string& token, size_t max_queue, double budget_gb,
                                     const test::TempDir& dir) {
  server::ServerOptions o;
  o.models =
      server::find_models({test::source_path("models/fashion-mnist"), test::tiny_sd_folder(dir / "sd_tiny")}, "");
  o.token = token;
  o.max_queue = max_queue;
  o.memory_budget_gb = budget_gb;
  return o;
}

// fashion-mnist and the tiny Stable Diffusion fixture.
struct Served {
  test::TempDir dir;
  test::RunningServer run;

  explicit Served(const std::string& token = "", size_t max_queue = 16, double budget_gb = 0)
      : run(served_options(token, max_queue, budget_gb, dir)) {}
  httplib::Client client() const { return run.client(); }
};

Served& shared() {
  static Served s;
  return s;
}

json body(const httplib::Result& r) { return json::parse(r->body); }

std::string field_of(const httplib::Result& r) { return body(r)["error"]["field"].get<std::string>(); }

// Waits for a native job to finish and returns its JSON.
json finish(httplib::Client& c, const std::string& id) {
  for (int i = 0; i < 600; ++i) {
    auto r = c.Get("/api/v1/jobs/" + id);
    json j = body(r);
    const std::string s = j["state"];
    if (s != "queued" && s != "running") return j;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return {};
}

TEST(Server, NativeJobRunsAndMatchesTheLibrary) {
  auto c = shared().client();
  auto r = c.Post("/api/v1/jobs", R"({"class": "sneaker", "n": 2, "steps": 4, "seed": 7, "guidance": 2})",
                  "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 202) << r->body;
  const std::string id = body(r)["id"];
  json j = finish(c, id);
  ASSERT_EQ(j["state"], "done") << j.dump();
  ASSERT_EQ(j["result"]["images"].size(), 2u);
  EXPECT_EQ(j["result"]["seeds"], json({7, 8}));
  const std::string png = base64_decode(j["result"]["images"][1], "image");
  EXPECT_NE(png_parameters(png).find("Seed: 8"), std::string::npos);
  // the same request through the library gives the same pixels
  GenerationRequest q;
  q.class_label = "sneaker";
  q.n = 2;
  q.steps = 4;
  q.seed = 7;
  q.guidance = 2;
  auto lib = Model::load(test::source_path("models/fashion-mnist")).generate(q);
  EXPECT_TRUE(torch::equal(decode_image(png, 1, "png"), to_tensor(to_image(lib.images[1].clamp(-1, 1)))));
  // and through the A1111 route
  auto a = c.Post("/sdapi/v1/txt2img",
                  R"({"prompt": "sneaker", "batch_size": 2, "steps": 4, "seed": 7, "cfg_scale": 2,
                      "override_settings": {"sd_model_checkpoint": "fashion-mnist"}})",
                  "application/json");
  ASSERT_EQ(a->status, 200) << a->body;
  EXPECT_EQ(base64_decode(body(a)["images"][1], "image"), png);
}

TEST(Server, ModelsBeyondTheMemoryBudgetAreUnloaded) {
  Served s("", 16, 1e-6);  // any two models exceed it
  auto c = s.client();
  auto metric = [&](const std::string& model) {
    const std::string m = c.Get("/metrics")->body;
    const std::string key = "diffuse_model_loaded{model=\"" + model + "\"} ";
    const auto at = m.find(key);
    return at == std::string::npos ? -1 : m[at + key.size()] - '0';
  };
  EXPECT_EQ(metric("fashion-mnist"), 0);
  ASSERT_EQ(c.Post("/sdapi/v1/txt2img", R"({"prompt": "bag", "steps": 1})", "application/json")->status, 200);
  EXPECT_EQ(metric("fashion-mnist"), 1);
  ASSERT_EQ(
      c.Post("/v1/images/generations", R"({"model": "sd_tiny", "prompt": "a", "size": "16x16"})", "application/json")
          ->status,
      200);
  EXPECT_EQ(metric("sd_tiny"), 1);
  EXPECT_EQ(metric("fashion-mnist"), 0);  // least recently used, unloaded
}

TEST(Server, EventsStreamProgressAndDone) {
  auto c = shared().client();
  auto r = c.Post("/api/v1/jobs", R"({"class": "bag", "n": 1, "steps": 5, "seed": 1})", "application/json");
  ASSERT_EQ(r->status, 202);
  const std::string id = body(r)["id"];
  std::string stream;
  auto ev = c.Get("/api/v1/jobs/" + id + "/events", [&](const char* data, size_t n) {
    stream.append(data, n);
    return true;
  });
  ASSERT_TRUE(ev);
  EXPECT_EQ(ev->status, 200);
  EXPECT_NE(stream.find("event: progress"), std::string::npos) << stream.substr(0, 500);
  EXPECT_NE(stream.find("\"preview\":\"data:image/png;base64,"), std::string::npos);
  EXPECT_NE(stream.find("event: done"), std::string::npos);
}

TEST(Server, HostileRequestsGetA4xxNamingTheField) {
  auto c = shared().client();
  auto post = [&](const std::string& b) { return c.Post("/api/v1/jobs", b, "application/json"); };
  auto r = post("{not json");
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(field_of(r), "body");
  r = post(R"({"steps": "many"})");
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(field_of(r), "steps");
  r = post(R"({"model": "../../etc/passwd"})");
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(field_of(r), "model");
  r = post(R"({"sampler": "warp-drive"})");
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(field_of(r), "sampler");
  r = post(R"({"width": 100000, "height": 100000})");
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(field_of(r), "width");
  r = post(R"({"n": 1000000})");
  EXPECT_EQ(r->status, 400);
  r = post(R"({"guide_model": "/etc"})");  // guides are model names, never paths
  ASSERT_EQ(r->status, 202);
  EXPECT_EQ(finish(c, body(r)["id"])["error"]["field"], "guide_model");
  r = post(std::string(2 << 20, ' '));  // over --max-body
  EXPECT_EQ(r->status, 413);
  r = c.Get("/api/v1/jobs/999999");
  EXPECT_EQ(r->status, 404);
  r = c.Get("/no/such/route");
  EXPECT_EQ(r->status, 404);
  r = c.Post("/sdapi/v1/txt2img", R"({"steps": [1]})", "application/json");
  EXPECT_EQ(r->status, 400);
  r = c.Post("/sdapi/v1/img2img", R"({"prompt": "x"})", "application/json");
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(field_of(r), "init_images");
  r = c.Post("/sdapi/v1/img2img", R"({"init_images": ["not base64!"]})", "application/json");
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(field_of(r), "init_images");
  r = c.Post("/sdapi/v1/img2img", R"({"init_images": ["aGVsbG8="]})", "application/json");  // not an image
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(field_of(r), "init_image");
  r = c.Post("/v1/images/generations", R"({"prompt": 3})", "application/json");
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(field_of(r), "prompt");
  r = c.Post("/v1/images/generations", R"({"prompt": "x", "response_format": "url"})", "application/json");
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(field_of(r), "response_format");
  EXPECT_EQ(c.Get("/health")->status, 200);  // still serving
}

TEST(Server, CancelAndInterruptStopARunningJob) {
  auto c = shared().client();
  auto r = c.Post("/api/v1/jobs", R"({"n": 64, "steps": 400, "seed": 1})", "application/json");
  ASSERT_EQ(r->status, 202);
  const std::string id = body(r)["id"];
  // Up to a minute for the first step: 64 images per step, and sanitizer builds on a busy machine.
  for (int i = 0; i < 2400 && body(c.Get("/api/v1/jobs/" + id))["step"] < 1; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  EXPECT_EQ(c.Delete("/api/v1/jobs/" + id)->status, 200);
  EXPECT_EQ(finish(c, id)["state"], "cancelled");

  r = c.Post("/api/v1/jobs", R"({"n": 64, "steps": 400, "seed": 2})", "application/json");
  const std::string id2 = body(r)["id"];
  for (int i = 0; i < 2400 && body(c.Get("/sdapi/v1/progress"))["state"]["sampling_step"] < 1; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  auto p = body(c.Get("/sdapi/v1/progress"));
  EXPECT_GT(p["progress"].get<double>(), 0.0);
  EXPECT_EQ(p["state"]["sampling_steps"], 400);
  EXPECT_TRUE(p["current_image"].is_string());
  EXPECT_EQ(c.Post("/sdapi/v1/interrupt", "", "application/json")->status, 200);
  EXPECT_EQ(finish(c, id2)["state"], "cancelled");
}

TEST(Server, FullQueueGives429) {
  Served s("", 1);  // one waiting job at most; the running one does not count
  auto c = s.client();
  auto post = [&](const std::string& b) { return c.Post("/api/v1/jobs", b, "application/json"); };
  auto state = [&](const std::string& id) { return body(c.Get("/api/v1/jobs/" + id))["state"].get<std::string>(); };
  auto running = post(R"({"n": 64, "steps": 1000})");
  ASSERT_EQ(running->status, 202);
  const std::string first = body(running)["id"];
  // Until the worker has taken the first job, that job is the one waiting.
  for (int i = 0; i < 600 && state(first) == "queued"; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(25));
  ASSERT_EQ(state(first), "running");
  auto queued = post(R"({"n": 64, "steps": 1000})");
  ASSERT_EQ(queued->status, 202);
  auto r = post(R"({"n": 1, "steps": 1})");
  EXPECT_EQ(r->status, 429);
  EXPECT_EQ(r->get_header_value("Retry-After"), "5");
  EXPECT_EQ(state(first), "running");  // the queue was full all along
  const std::string second = body(queued)["id"];
  EXPECT_EQ(c.Delete("/api/v1/jobs/" + second)->status, 200);
  EXPECT_EQ(c.Delete("/api/v1/jobs/" + first)->status, 200);
  EXPECT_EQ(finish(c, first)["state"], "cancelled");
  EXPECT_EQ(post(R"({"n": 1, "steps": 1})")->status, 202);  // room again
}

TEST(Server, TokenGuardsEveryRouteButHealth) {
  Served s("s3cret");
  auto c = s.client();
  EXPECT_EQ(c.Get("/health")->status, 200);
  EXPECT_EQ(c.Get("/api/v1/models")->status, 401);
  EXPECT_EQ(c.Get("/sdapi/v1/sd-models", {{"Authorization", "Bearer wrong"}})->status, 401);
  EXPECT_EQ(c.Get("/sdapi/v1/sd-models", {{"Authorization", "Bearer s3cret"}})->status, 200);
}

TEST(Server, WebUiComesFromTheBinaryWithAStrictPolicy) {
  auto c = shared().client();
  auto page = c.Get("/");
  ASSERT_EQ(page->status, 200);
  EXPECT_EQ(page->get_header_value("Content-Type"), "text/html; charset=utf-8");
  EXPECT_NE(page->get_header_value("Content-Security-Policy").find("default-src 'self'; img-src 'self' data: blob:"),
            std::string::npos);
  EXPECT_EQ(page->get_header_value("X-Content-Type-Options"), "nosniff");
  EXPECT_NE(page->body.find("src=\"/ui/app.js\""), std::string::npos);
  for (const auto& [path, type] :
       std::vector<std::pair<std::string, std::string>>{{"/ui/app.js", "text/javascript; charset=utf-8"},
                                                        {"/ui/style.css", "text/css; charset=utf-8"},
                                                        {"/ui/icon.svg", "image/svg+xml"}}) {
    auto r = c.Get(path);
    ASSERT_EQ(r->status, 200) << path;
    EXPECT_EQ(r->get_header_value("Content-Type"), type) << path;
    EXPECT_EQ(r->get_header_value("Cache-Control"), "no-cache") << path;
    auto again = c.Get(path, {{"If-None-Match", r->get_header_value("ETag")}});
    EXPECT_EQ(again->status, 304) << path;
    EXPECT_TRUE(again->body.empty());
  }
  for (const std::string path : {"/ui/nothing.js", "/ui/", "/ui/../README.md", "/ui/%2e%2e/server.cpp"}) {
    auto r = c.Get(path);
    EXPECT_EQ(r->status, 404) << path;
    EXPECT_EQ(field_of(r), "path") << path;
  }
  EXPECT_EQ(c.Post("/", "{}", "application/json")->status, 404);
}

TEST(Server, WebUiIsServedWithoutTheTokenItsApiCallsNeed) {
  Served s("s3cret");
  auto c = s.client();
  EXPECT_EQ(c.Get("/")->status, 200);
  EXPECT_EQ(c.Get("/ui/app.js")->status, 200);
  EXPECT_EQ(c.Get("/ui/nothing.js")->status, 404);
  EXPECT_EQ(c.Post("/ui/app.js", "{}", "application/json")->status, 401);
  EXPECT_EQ(c.Post("/api/v1/infotext", R"({"infotext": "x"})", "application/json")->status, 401);
}

TEST(Server, InfotextRouteReadsParametersText) {
  auto c = shared().client();
  auto r = c.Post("/api/v1/infotext",
                  json{{"infotext", "sneaker\nSteps: 12, Sampler: DPM++ 2M Karras, CFG scale: 2.5, Seed: 77"}}.dump(),
                  "application/json");
  ASSERT_EQ(r->status, 200) << r->body;
  const json req = body(r)["request"];
  EXPECT_EQ(req["prompt"], "sneaker");
  EXPECT_EQ(req["steps"], 12);
  EXPECT_EQ(req["sampler"], "dpm++2m");
  EXPECT_EQ(req["schedule"], "karras");
  EXPECT_EQ(req["guidance"], 2.5);
  EXPECT_EQ(req["seed"], 77);
  EXPECT_FALSE(req.contains("init_image"));
  for (const std::string bad : {"", "[]", "{}", R"({"infotext": 3})", "{\"infotext\": "}) {
    auto e = c.Post("/api/v1/infotext", bad, "application/json");
    EXPECT_EQ(e->status, 400) << bad;
    EXPECT_TRUE(field_of(e) == "infotext" || field_of(e) == "body") << bad;
  }
}

TEST(Server, A1111Routes) {
  auto c = shared().client();
  auto r = c.Post("/sdapi/v1/txt2img",
                  R"({"prompt": "sneaker", "steps": 3, "seed": 4, "batch_size": 2, "n_iter": 1, "width": 512,
                      "height": 512, "cfg_scale": 2, "sampler_name": "DPM++ 2M", "restore_faces": false,
                      "alwayson_scripts": {}})",
                  "application/json");
  ASSERT_EQ(r->status, 200) << r->body;
  json j = body(r);
  EXPECT_EQ(j["images"].size(), 2u);
  json info = json::parse(j["info"].get<std::string>());
  EXPECT_EQ(info["all_seeds"], json({4, 5}));
  EXPECT_EQ(info["infotexts"].size(), 2u);
  // switch to the Stable Diffusion model and paint over an image
  EXPECT_EQ(c.Post("/sdapi/v1/options", R"({"sd_model_checkpoint": "sd_tiny"})", "application/json")->status, 200);
  EXPECT_EQ(body(c.Get("/sdapi/v1/options"))["sd_model_checkpoint"], "sd_tiny");
  const std::string init = base64_encode(encode_png(to_image(torch::rand({3, 16, 16}) * 2 - 1)));
  Image m{16, 16, 1, std::vector<uint8_t>(256, 0)};
  std::fill(m.data.begin(), m.data.begin() + 128, 255);
  json i2i = {{"prompt", "a red car"},
              {"steps", 3},
              {"seed", 2},
              {"init_images", {"data:image/png;base64," + init}},
              {"denoising_strength", 0.6},
              {"mask", base64_encode(encode_png(m))},
              {"mask_blur", 1},
              {"inpainting_mask_invert", 0},
              {"inpaint_full_res", false}};
  r = c.Post("/sdapi/v1/img2img", i2i.dump(), "application/json");
  ASSERT_EQ(r->status, 200) << r->body;
  const std::string out = base64_decode(body(r)["images"][0], "image");
  EXPECT_EQ(decode_image(out, 3, "png").size(2), 16);
  auto info2 = c.Post("/sdapi/v1/png-info", json({{"image", base64_encode(out)}}).dump(), "application/json");
  ASSERT_EQ(info2->status, 200);
  EXPECT_NE(body(info2)["info"].get<std::string>().find("Denoising strength: 0.6"), std::string::npos);
  EXPECT_EQ(body(info2)["parameters"]["prompt"], "a red car");
  EXPECT_EQ(c.Post("/sdapi/v1/options", R"({"sd_model_checkpoint": "nope"})", "application/json")->status, 400);
  c.Post("/sdapi/v1/options", R"({"sd_model_checkpoint": "fashion-mnist"})", "application/json");
  EXPECT_GE(body(c.Get("/sdapi/v1/samplers")).size(), 21u);
  EXPECT_GE(body(c.Get("/sdapi/v1/schedulers")).size(), 5u);
  EXPECT_EQ(body(c.Get("/sdapi/v1/sd-models")).size(), 2u);
  EXPECT_EQ(c.Get("/sdapi/v1/loras")->status, 200);
  auto models = body(c.Get("/api/v1/models"));
  EXPECT_EQ(models["models"][0]["kind"], "class-conditional");
  EXPECT_EQ(models["models"][1]["kind"], "stable-diffusion");
  EXPECT_EQ(models["models"][0]["size_step"], 4);
  EXPECT_EQ(models["models"][1]["size_step"], 8);
  auto metrics = c.Get("/metrics");
  EXPECT_NE(metrics->body.find("diffuse_jobs{state=\"done\"}"), std::string::npos);
}

TEST(Server, OpenAIRoutes) {
  auto c = shared().client();
  auto r = c.Post("/v1/images/generations", R"({"model": "sd_tiny", "prompt": "a dog", "n": 2, "size": "16x16",
                                                "output_format": "jpeg"})",
                  "application/json");
  ASSERT_EQ(r->status, 200) << r->body;
  json j = body(r);
  ASSERT_EQ(j["data"].size(), 2u);
  const std::string jpg = base64_decode(j["data"][0]["b64_json"], "image");
  EXPECT_EQ(static_cast<unsigned char>(jpg[0]), 0xFF);
  // edits: the mask's fully transparent pixels are repainted
  Image rgba{16, 16, 4, std::vector<uint8_t>(16 * 16 * 4, 200)};
  for (int p = 0; p < 64; ++p) rgba.data[static_cast<size_t>(p) * 4 + 3] = 0;
  httplib::MultipartFormDataItems items = {{"image", encode_png(convert_channels(rgba, 3)), "in.png", "image/png"},
                                           {"mask", encode_png(rgba), "mask.png", "image/png"},
                                           {"prompt", "a cat", "", ""},
                                           {"model", "sd_tiny", "", ""}};
  r = c.Post("/v1/images/edits", items);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(body(r)["data"].size(), 1u);
  auto models = body(c.Get("/v1/models"));
  EXPECT_EQ(models["data"][1]["id"], "sd_tiny");
}

TEST(Server, SigtermCancelsTheRunningJobAndExitsZero) {
  test::TempDir t;
  const std::string log = t / "serve.log";
  const pid_t pid = fork();
  if (pid == 0) {
    const std::string model = test::source_path("models/fashion-mnist");
    freopen(log.c_str(), "w", stdout);
    execl(DIFFUSE_CLI, "diffuse", "serve", "--model", model.c_str(), "--port", "0", "--threads", "1", nullptr);
    _exit(127);
  }
  int port = 0;
  for (int i = 0; i < 200 && port == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::ifstream f(log);
    std::string line;
    std::getline(f, line);
    const auto colon = line.rfind(':');
    if (colon != std::string::npos && line.find("http://") != std::string::npos)
      port = std::atoi(line.c_str() + colon + 1);
  }
  ASSERT_GT(port, 0);
  httplib::Client c("127.0.0.1", port);
  auto r = c.Post("/api/v1/jobs", R"({"n": 64, "steps": 400})", "application/json");
  ASSERT_EQ(r->status, 202);
  for (int i = 0; i < 400 && body(c.Get("/api/v1/jobs/1"))["step"] < 1; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  kill(pid, SIGTERM);
  int status = 0;
  for (int i = 0; i < 400 && waitpid(pid, &status, WNOHANG) == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  ASSERT_TRUE(WIFEXITED(status)) << "still running after SIGTERM";
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace
}  // namespace diffuse
