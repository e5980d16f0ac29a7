// FID vs NFE of the main samplers on a shipped model, scored by `diffuse eval`'s machinery.
//
// For each sampler and NFE target, generates n class-balanced samples (seed i for image i,
// guidance as given, the sampler's natural schedule), embeds them with the feature network and
// scores them against the training-set statistics; the real-data floor (n held-out images) is
// drawn as a horizontal line. NFE counts denoiser calls per image: one per step for single-step
// and multistep methods, 2 * steps - 1 for Heun (its last step, to sigma 0, is an Euler step).
//
// Rows are appended to <out>.csv as they finish and rows already there are kept, so an
// interrupted run continues where it stopped. Writes <out>.png at the end (and after every row).
//
// Usage: fid_vs_nfe [--model models/fashion-mnist] [--data fashion-mnist] [--n 500]
//                   [--guidance 1] [--out docs/fid_vs_nfe] [--nfe 5,10,20,40]
//                   [--samplers euler,heun,dpm++2m,unipc,ipndm,euler_a]
#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/plot.h"
#include "core/runtime.h"
#include "eval/evaluate.h"

using namespace diffuse;

namespace {

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

// Denoiser calls per image for `steps` steps.
int nfe_of(const std::string& sampler, int steps) { return sampler == "heun" ? 2 * steps - 1 : steps; }

// The step count whose NFE is closest to `nfe` without exceeding it (at least 2 steps).
int steps_for(const std::string& sampler, int nfe) { return std::max(2, sampler == "heun" ? (nfe + 1) / 2 : nfe); }

struct Row {
  std::string sampler;
  int steps = 0, nfe = 0;
  QualityMetrics m;
  double seconds = 0;
};

const char* kHeader = "sampler,steps,nfe,fid,kid,precision,recall,class_agreement,generate_seconds";

std::string to_csv(const Row& r) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s,%d,%d,%.6f,%.6f,%.4f,%.4f,%.4f,%.1f", r.sampler.c_str(), r.steps, r.nfe, r.m.fid,
                r.m.kid, r.m.precision, r.m.recall, r.m.class_agreement, r.seconds);
  return buf;
}

std::vector<Row> read_csv(const std::string& path) {
  std::vector<Row> rows;
  std::ifstream in(path);
  std::string line;
  if (!std::getline(in, line) || line != kHeader) return rows;
  while (std::getline(in, line)) {
    auto f = split(line);
    if (f.size() != 9) continue;
    Row r;
    r.sampler = f[0];
    r.steps = std::stoi(f[1]);
    r.nfe = std::stoi(f[2]);
    r.m.fid = std::stod(f[3]);
    r.m.kid = std::stod(f[4]);
    r.m.precision = std::stod(f[5]);
    r.m.recall = std::stod(f[6]);
    r.m.class_agreement = std::stod(f[7]);
    r.seconds = std::stod(f[8]);
    rows.push_back(r);
  }
  return rows;
}

void write_outputs(const std::string& out, const std::vector<Row>& rows, const std::vector<std::string>& order,
                   const std::string& floor_line, double floor_fid, const std::string& title) {
  std::string csv = std::string(kHeader) + "\n" + floor_line + "\n";
  for (const auto& r : rows) csv += to_csv(r) + "\n";
  write_file_atomically(out + ".csv", csv);

  std::vector<PlotSeries> series;
  double max_nfe = 1;
  for (const auto& name : order) {
    PlotSeries s;
    s.label = name;
    s.markers = true;
    std::map<int, double> pts;
    for (const auto& r : rows) {
      if (r.sampler == name) pts[r.nfe] = r.m.fid;
    }
    for (auto [x, y] : pts) {
      s.x.push_back(x);
      s.y.push_back(y);
      max_nfe = std::max<double>(max_nfe, x);
    }
    if (!s.x.empty()) series.push_back(s);
  }
  if (series.empty()) return;
  PlotSeries floor;
  floor.label = "real-data floor";
  floor.color = {128, 128, 128};
  floor.x = {3, max_nfe * 1.1};
  floor.y = {floor_fid, floor_fid};
  series.push_back(floor);
  PlotOptions po;
  po.title = title;
  po.xlabel = "NFE (denoiser calls per image)";
  po.ylabel = "FID (classifier features)";
  po.log_x = true;
  po.log_y = true;
  save_plot(out + ".png", series, po);
}

}  // namespace

int main(int argc, char** argv) {
  std::string model = "models/fashion-mnist", data = "fashion-mnist", out = "docs/fid_vs_nfe";
  std::string nfe_list = "5,10,20,40", sampler_list = "euler,heun,dpm++2m,unipc,ipndm,euler_a";
  int n = 500;
  double guidance = 1.0;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--model")
      model = v;
    else if (k == "--data")
      data = v;
    else if (k == "--n")
      n = std::stoi(v);
    else if (k == "--guidance")
      guidance = std::stod(v);
    else if (k == "--out")
      out = v;
    else if (k == "--nfe")
      nfe_list = v;
    else if (k == "--samplers")
      sampler_list = v;
    else {
      std::cerr << "unknown option " << k << "\n";
      return 2;
    }
  }
  try {
    set_threads(0);
    auto pipe = PixelPipeline::load(model, torch::kCPU);
    auto net = FeatureNet::load(find_classifier(data), torch::kCPU);
    check_compatible(pipe, net);
    auto ref = reference_set(net, data, "train");
    MetricOptions mo;
    auto floor = real_data_floor(net, data, ref, n, default_cache_dir(), mo);
    std::printf("real-data floor at n=%d: FID %.4f  precision %.3f  recall %.3f  class agreement %.3f\n", n, floor.fid,
                floor.precision, floor.recall, floor.class_agreement);
    Row floor_row{"floor", 0, 0, floor, 0};
    auto rows = read_csv(out + ".csv");
    std::set<std::pair<std::string, int>> done;
    for (auto it = rows.begin(); it != rows.end();) {
      if (it->sampler == "floor") {
        it = rows.erase(it);
      } else {
        done.insert({it->sampler, it->steps});
        ++it;
      }
    }
    auto order = split(sampler_list);
    char title[160];
    std::snprintf(title, sizeof title, "%s: FID vs NFE (n = %d, guidance %g)", model.c_str(), n, guidance);
    for (const auto& target : split(nfe_list)) {
      for (const auto& s : order) {
        Row r;
        r.sampler = s;
        r.steps = steps_for(s, std::stoi(target));
        r.nfe = nfe_of(s, r.steps);
        if (done.count({s, r.steps})) continue;
        EvalOptions eo;
        eo.data = data;
        eo.n = n;
        eo.floor = false;
        eo.generate.sampler = s;
        eo.generate.steps = r.steps;
        eo.generate.guidance = guidance;
        auto rep = evaluate_pipeline(pipe, net, eo);
        r.m = rep.samples;
        r.seconds = rep.generate_seconds;
        rows.push_back(r);
        done.insert({s, r.steps});
        std::printf("%-10s steps %3d  NFE %3d  FID %.4f  precision %.3f  recall %.3f  class %.3f  (%.0f s)\n",
                    s.c_str(), r.steps, r.nfe, r.m.fid, r.m.precision, r.m.recall, r.m.class_agreement, r.seconds);
        std::fflush(stdout);
        write_outputs(out, rows, order, to_csv(floor_row), floor.fid, title);
      }
    }
    write_outputs(out, rows, order, to_csv(floor_row), floor.fid, title);
  } catch (const std::exception& e) {
    std::cerr << "fid_vs_nfe: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
