// diffuse: train, generate and inspect diffusion models.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iostream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "commands.h"
#include "core/error.h"
#include "core/runtime.h"
#include "request_flags.h"

namespace diffuse::cli {

namespace {
std::vector<std::tuple<int, std::string, Registrar>>& registry() {
  static std::vector<std::tuple<int, std::string, Registrar>> r;
  return r;
}
}  // namespace

bool add_command(int order, const std::string& name, Registrar reg) {
  registry().emplace_back(order, name, std::move(reg));
  return true;
}

void add_threads_option(CLI::App* cmd, int* threads) {
  cmd->add_option("--threads", *threads, "Intra-op threads (0 = one per core)")->check(CLI::NonNegativeNumber);
}

void apply_threads(int threads) { diffuse::set_threads(threads); }

void add_guidance_interval_option(CLI::App* cmd, double* lo, double* hi) {
  cmd->add_option_function<std::string>(
         "--guidance-interval",
         [lo, hi](const std::string& v) {
           const auto comma = v.find(',');
           double a = NAN, b = NAN;
           try {
             if (comma == std::string::npos) throw std::invalid_argument(v);
             size_t ua = 0, ub = 0;
             const std::string sa = v.substr(0, comma), sb = v.substr(comma + 1);
             a = std::stod(sa, &ua);
             b = std::stod(sb, &ub);
             if (ua != sa.size() || ub != sb.size()) throw std::invalid_argument(v);
           } catch (const std::logic_error&) {
             throw CLI::ValidationError("--guidance-interval",
                                        "expected LO,HI (two sigmas, HI may be inf), got '" + v + "'");
           }
           if (!(a >= 0 && a < b))
             throw CLI::ValidationError("--guidance-interval", "need 0 <= LO < HI, got '" + v + "'");
           *lo = a;
           *hi = b;
         },
         "Guide only at noise levels sigma in (LO, HI] (Kynkaanniemi et al. 2024); e.g. 0.3,5")
      ->type_name("LO,HI");
}

}  // namespace diffuse::cli

int main(int argc, char** argv) {
  CLI::App app{"diffuse: train and run diffusion models in one C++ program"};
  app.require_subcommand(1);
  // The second line says what the kernels run on: torch, threads, bf16, the BLAS kernels.
  app.set_version_flag("--version", std::function<std::string()>(
                                        [] { return std::string("diffuse 0.1.0\n") + diffuse::runtime_summary(); }));
  diffuse::set_threads(0);
  auto& reg = diffuse::cli::registry();
  std::sort(reg.begin(), reg.end(), [](const auto& a, const auto& b) { return std::get<0>(a) < std::get<0>(b); });
  for (auto& r : reg) std::get<2>(r)(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const diffuse::Error& e) {
    std::fflush(stdout);
    std::cerr << "error: " << diffuse::cli::fields_as_flags(e.what()) << std::endl;
    return 1;
  } catch (const c10::Error& e) {
    std::fflush(stdout);
    std::cerr << "error: " << e.what_without_backtrace() << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::cerr << "error: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
