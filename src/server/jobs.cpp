#include "server/jobs.h"

#include <algorithm>
#include <cctype>
#include <chrono>

namespace diffuse::server {

namespace {
double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
constexpr size_t kHistory = 256;  // finished jobs kept for GET /api/v1/jobs/{id}
}  // namespace

std::string field_of(const std::string& message) {
  const auto end = message.find_first_of(": ");
  if (end == std::string::npos || end == 0 || end > 32 || message[end] != ':') return "request";
  for (size_t i = 0; i < end; ++i)
    if (!std::islower(static_cast<unsigned char>(message[i])) && message[i] != '_') return "request";
  return message.substr(0, end);
}

std::string to_string(JobState s) {
  switch (s) {
    case JobState::Queued:
      return "queued";
    case JobState::Running:
      return "running";
    case JobState::Done:
      return "done";
    case JobState::Failed:
      return "failed";
    case JobState::Cancelled:
      return "cancelled";
  }
  return "unknown";
}

// ---- models -------------------------------------------------------------------------------

ModelRegistry::ModelRegistry(std::vector<ModelEntry> entries, double memory_budget_gb, LoadOptions load)
    : entries_(std::move(entries)), budget_bytes_(memory_budget_gb * 1e9), load_(std::move(load)) {
  for (const auto& e : entries_)  // the first generation model (super-resolution ones only upscale)
    if (current_.empty() && !is_upscaler(e.path)) current_ = e.name;
  if (current_.empty() && !entries_.empty()) current_ = entries_.front().name;
}

bool ModelRegistry::has(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.name == name) return true;
  return false;
}

std::string ModelRegistry::current() const {
  std::lock_guard<std::mutex> l(mu_);
  return current_;
}

void ModelRegistry::set_current(const std::string& name) {
  std::lock_guard<std::mutex> l(mu_);
  current_ = name;
}

double ModelRegistry::load_seconds() const {
  std::lock_guard<std::mutex> l(mu_);
  return load_s_;
}

std::vector<std::string> ModelRegistry::loaded() const {
  std::lock_guard<std::mutex> l(mu_);
  return lru_;
}

std::shared_ptr<Model> ModelRegistry::get(const std::string& name) {
  std::lock_guard<std::mutex> l(mu_);
  auto touch = [&] {
    lru_.erase(std::remove(lru_.begin(), lru_.end(), name), lru_.end());
    lru_.push_back(name);
  };
  auto it = loaded_.find(name);
  if (it != loaded_.end()) {
    touch();
    return it->second;
  }
  const ModelEntry* e = nullptr;
  for (const auto& x : entries_)
    if (x.name == name) e = &x;
  if (!e) throw RequestError("model", "no model named '" + name + "'");
  if (is_upscaler(e->path))
    throw RequestError("model", "'" + name + "' is a super-resolution model (use POST /api/v1/upscale)");
  const double t0 = now_s();
  auto m = std::make_shared<Model>(Model::load(e->path, load_));
  load_s_ += now_s() - t0;
  loaded_[name] = m;
  touch();
  // Unload least-recently-used models while over the budget (a running job keeps its own).
  auto total = [&] {
    double b = 0;
    for (const auto& [n, mm] : loaded_) b += static_cast<double>(mm->weight_bytes());
    return b;
  };
  while (budget_bytes_ > 0 && lru_.size() > 1 && total() > budget_bytes_) {
    loaded_.erase(lru_.front());
    lru_.erase(lru_.begin());
  }
  return m;
}

bool ModelRegistry::is_superres(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.name == name) return is_upscaler(e.path);
  return false;
}

std::shared_ptr<Upscaler> ModelRegistry::upscaler(const std::string& name) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = upscalers_.find(name);
  if (it != upscalers_.end()) return it->second;
  const ModelEntry* e = nullptr;
  for (const auto& x : entries_)
    if (x.name == name) e = &x;
  if (!e) throw RequestError("model", "no model named '" + name + "'");
  if (!is_upscaler(e->path)) throw RequestError("model", "'" + name + "' is not a super-resolution model");
  const double t0 = now_s();
  auto up = std::make_shared<Upscaler>(Upscaler::load(e->path, load_));
  load_s_ += now_s() - t0;
  upscalers_[name] = up;
  return up;
}

// ---- jobs ---------------------------------------------------------------------------------

JobQueue::JobQueue(ModelRegistry& models, size_t max_queue, int preview_every)
    : models_(models), max_queue_(max_queue), preview_every_(preview_every) {}

JobQueue::~JobQueue() { shutdown(); }

std::shared_ptr<Job> JobQueue::submit(const std::string& model, const GenerationRequest& r) {
  std::lock_guard<std::mutex> l(mu_);
  if (stopping_) return nullptr;
  size_t waiting = 0;
  for (const auto& [m, q] : waiting_) waiting += q.size();
  if (waiting >= max_queue_) return nullptr;
  auto job = std::make_shared<Job>();
  job->id = std::to_string(next_id_++);
  job->model = model;
  job->request = r;
  jobs_[job->id] = job;
  waiting_[model].push_back(job);
  if (!workers_.count(model)) workers_[model] = std::thread([this, model] { worker(model); });
  cv_.notify_all();
  return job;
}

std::shared_ptr<Job> JobQueue::find(const std::string& id) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : it->second;
}

Job JobQueue::snapshot(const Job& job) const {
  std::lock_guard<std::mutex> l(mu_);
  return job;
}

Job JobQueue::snapshot(const Job& job, int after, int timeout_ms) const {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait_for(l, std::chrono::milliseconds(timeout_ms), [&] { return job.version > after || stopping_; });
  return job;
}

Job JobQueue::wait(const std::shared_ptr<Job>& job) const {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [&] { return job->state != JobState::Queued && job->state != JobState::Running; });
  return *job;
}

void JobQueue::update(Job& job, const std::function<void(Job&)>& f) {
  std::lock_guard<std::mutex> l(mu_);
  f(job);
  ++job.version;
  cv_.notify_all();
}

bool JobQueue::cancel(const std::string& id) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return false;
  Job& job = *it->second;
  if (job.state == JobState::Queued) {
    auto& q = waiting_[job.model];
    q.erase(std::remove(q.begin(), q.end(), it->second), q.end());
    job.state = JobState::Cancelled;
    ++job.version;
    cv_.notify_all();
  } else if (job.state == JobState::Running) {
    job.cancel.cancel();
  }
  return true;
}

int JobQueue::cancel_running() {
  std::lock_guard<std::mutex> l(mu_);
  int n = 0;
  for (auto& [id, job] : jobs_)
    if (job->state == JobState::Running) {
      job->cancel.cancel();
      ++n;
    }
  return n;
}

std::shared_ptr<Job> JobQueue::running() const {
  std::lock_guard<std::mutex> l(mu_);
  for (const auto& [id, job] : jobs_)
    if (job->state == JobState::Running) return job;
  return nullptr;
}

void JobQueue::shutdown() {
  std::map<std::string, std::thread> workers;
  {
    std::lock_guard<std::mutex> l(mu_);
    stopping_ = true;
    for (auto& [m, q] : waiting_) {
      for (auto& job : q) {
        job->state = JobState::Cancelled;
        ++job->version;
      }
      q.clear();
    }
    for (auto& [id, job] : jobs_)
      if (job->state == JobState::Running) job->cancel.cancel();
    workers.swap(workers_);
    cv_.notify_all();
  }
  for (auto& [m, t] : workers)
    if (t.joinable()) t.join();
}

std::map<std::string, int> JobQueue::counts() const {
  std::lock_guard<std::mutex> l(mu_);
  std::map<std::string, int> c;
  for (auto s : {JobState::Queued, JobState::Running, JobState::Done, JobState::Failed, JobState::Cancelled})
    c[to_string(s)] = 0;
  for (const auto& [id, job] : jobs_) ++c[to_string(job->state)];
  return c;
}

size_t JobQueue::queued() const {
  std::lock_guard<std::mutex> l(mu_);
  size_t n = 0;
  for (const auto& [m, q] : waiting_) n += q.size();
  return n;
}

double JobQueue::step_seconds() const {
  std::lock_guard<std::mutex> l(mu_);
  return step_s_;
}

void JobQueue::worker(const std::string& model) {
  for (;;) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [&] { return stopping_ || !waiting_[model].empty(); });
      if (stopping_) return;
      job = waiting_[model].front();
      waiting_[model].pop_front();
      job->state = JobState::Running;
      job->started = now_s();
      ++job->version;
      cv_.notify_all();
    }
    JobState end = JobState::Done;
    std::string error, field;
    bool bad = false;
    GenerationResult res;
    double last = now_s();
    try {
      auto m = models_.get(model);
      GenerateHooks hooks;
      hooks.cancel = job->cancel;
      hooks.preview_every = preview_every_;
      hooks.progress = [&](const ProgressInfo& p) {
        std::string png = p.preview.defined() ? encode_image(p.preview, "png") : std::string();
        const double t = now_s();
        update(*job, [&](Job& j) {
          j.step = p.step;
          j.total = p.total;
          j.eta_s = p.eta_s;
          if (!png.empty()) j.preview_png = std::move(png);
          step_s_ += t - last;
        });
        last = t;
      };
      res = m->generate(job->request, hooks);
    } catch (const Cancelled&) {
      end = JobState::Cancelled;
    } catch (const RequestError& e) {
      end = JobState::Failed;
      bad = true;
      error = e.errors.empty() ? e.what() : e.errors.front().message;
      field = e.errors.empty() ? "request" : e.errors.front().field;
    } catch (const Error& e) {  // bad input found while running: "field: message" when it names one
      end = JobState::Failed;
      bad = true;
      error = e.what();
      field = field_of(error);
    } catch (const std::exception& e) {
      end = JobState::Failed;
      error = e.what();
    }
    std::vector<std::string> images;
    if (end == JobState::Done) {
      try {
        for (int64_t i = 0; i < res.images.size(0); ++i)
          images.push_back(
              encode_image(res.images[i], res.request.output_format, res.infotexts[static_cast<size_t>(i)]));
      } catch (const std::exception& e) {
        end = JobState::Failed;
        error = e.what();
      }
    }
    std::lock_guard<std::mutex> l(mu_);
    job->state = end;
    job->error = error;
    job->error_field = field;
    job->bad_request = bad;
    job->images = std::move(images);
    job->seeds = res.seeds;
    job->infotexts = res.infotexts;
    job->ran = res.request;
    ++job->version;
    order_.push_back(job->id);
    while (order_.size() > kHistory) {
      jobs_.erase(order_.front());
      order_.pop_front();
    }
    cv_.notify_all();
  }
}

}  // namespace diffuse::server
