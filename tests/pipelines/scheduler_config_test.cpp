// scheduler_config.json -> NoiseScheduleConfig on hostile values (found by the config fuzzer).
#include "pipelines/scheduler_config.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "models/error_of.h"

namespace diffuse {
namespace {

TEST(SchedulerConfig, RefusesOutOfRangeNumbers) {
  auto msg = [](const char* json) {
    return test::error_of([&] { scheduler_config_from_json(nlohmann::json::parse(json), "s.json"); });
  };
  EXPECT_NE(msg(R"({"num_train_timesteps": 1e205})").find("'num_train_timesteps' must be an integer"),
            std::string::npos);
  EXPECT_NE(msg(R"({"num_train_timesteps": 2000000000})").find("[2, 100000]"), std::string::npos);
  EXPECT_NE(msg(R"({"steps_offset": 1.5})").find("'steps_offset' must be an integer"), std::string::npos);
  EXPECT_NE(msg(R"({"beta_start": "x"})").find("wrong type"), std::string::npos);
  EXPECT_EQ(scheduler_config_from_json(nlohmann::json::parse(R"({"num_train_timesteps": 1000.0})"), "s.json")
                .num_train_timesteps,
            1000);
}

}  // namespace
}  // namespace diffuse
