#pragma once
// The server's models and jobs: named models loaded on first use and unloaded least-recently-used
// beyond a memory budget, and a bounded job queue with one worker per model.
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "diffuse/diffuse.h"

namespace diffuse::server {

struct ModelEntry {
  std::string name, path;
};

// Model names -> folders or files; names come only from the configured list.
class ModelRegistry {
 public:
  ModelRegistry(std::vector<ModelEntry> entries, double memory_budget_gb, LoadOptions load);
  const std::vector<ModelEntry>& entries() const { return entries_; }
  bool has(const std::string& name) const;
  // The loaded model (loads it, unloading least-recently-used ones beyond the budget). Throws
  // RequestError naming "model" for a super-resolution model.
  std::shared_ptr<Model> get(const std::string& name);
  // Whether the named model is a super-resolution folder (superres.json), served by upscaler().
  bool is_superres(const std::string& name) const;
  // The loaded super-resolution model (loaded on first use, kept; not counted in the budget).
  std::shared_ptr<Upscaler> upscaler(const std::string& name);
  // The model information without generating (loads the model).
  std::string current() const;
  void set_current(const std::string& name);
  double load_seconds() const;
  std::vector<std::string> loaded() const;  // least recently used first

 private:
  std::vector<ModelEntry> entries_;
  double budget_bytes_;
  LoadOptions load_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Model>> loaded_;
  std::map<std::string, std::shared_ptr<Upscaler>> upscalers_;
  std::vector<std::string> lru_;  // most recent last
  std::string current_;
  double load_s_ = 0;
};

// The request field a library message names ("steps: must be ..." -> "steps"), else "request".
std::string field_of(const std::string& message);

enum class JobState { Queued, Running, Done, Failed, Cancelled };
std::string to_string(JobState s);

struct Job {
  std::string id, model;
  GenerationRequest request;
  JobState state = JobState::Queued;
  int step = 0, total = 0;
  double eta_s = 0, started = 0;
  std::string preview_png;          // latest preview
  std::vector<std::string> images;  // encoded in the request's output_format
  std::vector<int64_t> seeds;
  std::vector<std::string> infotexts;
  GenerationRequest ran;  // resolved request
  std::string error, error_field;
  bool bad_request = false;  // the error is the client's (RequestError)
  CancelToken cancel;
  int version = 0;  // bumped on every change (events)
};

// Bounded queue; jobs run one at a time per model, in submission order.
class JobQueue {
 public:
  JobQueue(ModelRegistry& models, size_t max_queue, int preview_every);
  ~JobQueue();
  // Returns the job, or null when the queue is full.
  std::shared_ptr<Job> submit(const std::string& model, const GenerationRequest& r);
  std::shared_ptr<Job> find(const std::string& id) const;
  // A copy of the job's state, waiting until its version exceeds `after` or the timeout passes.
  Job snapshot(const Job& job, int after, int timeout_ms) const;
  Job snapshot(const Job& job) const;
  bool cancel(const std::string& id);
  int cancel_running();  // A1111's interrupt
  std::shared_ptr<Job> running() const;
  // Blocks until the job has finished.
  Job wait(const std::shared_ptr<Job>& job) const;
  // Stops accepting, cancels what runs and drops what waits.
  void shutdown();
  std::map<std::string, int> counts() const;
  size_t queued() const;
  double step_seconds() const;

 private:
  void worker(const std::string& model);
  void update(Job& job, const std::function<void(Job&)>& f);

  ModelRegistry& models_;
  size_t max_queue_;
  int preview_every_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::map<std::string, std::shared_ptr<Job>> jobs_;
  std::deque<std::string> order_;                                    // finished job ids, oldest first (bounded history)
  std::map<std::string, std::deque<std::shared_ptr<Job>>> waiting_;  // per model
  std::map<std::string, std::thread> workers_;
  bool stopping_ = false;
  uint64_t next_id_ = 1;
  double step_s_ = 0;
};

}  // namespace diffuse::server
