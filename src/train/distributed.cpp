#include "train/distributed.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <map>
#include <mutex>
#include <thread>

#include "core/error.h"

// DIFFUSE_HAVE_GLOO / DIFFUSE_HAVE_NCCL come from src/train/CMakeLists.txt (gloo's / NCCL's headers
// found); c10d's headers declare their backends under USE_C10D_GLOO / USE_C10D_NCCL.
#ifdef DIFFUSE_HAVE_GLOO
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif
#ifdef DIFFUSE_HAVE_NCCL
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace diffuse {

// ---------------------------------------------------------------------------------------------
// Where this process sits

namespace {

std::vector<std::string> split_top_level(const std::string& s) {
  std::vector<std::string> parts;
  std::string cur;
  int depth = 0;
  for (char c : s) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (c == ',' && depth == 0) {
      if (!cur.empty()) parts.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) parts.push_back(cur);
  return parts;
}

void expand_into(const std::string& host, std::vector<std::string>& out) {
  const size_t open = host.find('[');
  if (open == std::string::npos) {
    out.push_back(host);
    return;
  }
  const size_t close = host.find(']', open);
  if (close == std::string::npos) throw Error("SLURM_JOB_NODELIST: unbalanced '[' in " + host);
  const std::string prefix = host.substr(0, open), rest = host.substr(close + 1);
  std::string ranges = host.substr(open + 1, close - open - 1);
  size_t pos = 0;
  while (pos <= ranges.size()) {
    size_t comma = ranges.find(',', pos);
    if (comma == std::string::npos) comma = ranges.size();
    const std::string r = ranges.substr(pos, comma - pos);
    const size_t dash = r.find('-');
    try {
      if (dash == std::string::npos) {
        expand_into(prefix + r + rest, out);
      } else {
        const std::string a = r.substr(0, dash), b = r.substr(dash + 1);
        const long lo = std::stol(a), hi = std::stol(b);
        if (hi < lo || hi - lo > 100000) throw Error("");
        for (long v = lo; v <= hi; ++v) {
          std::string num = std::to_string(v);
          if (num.size() < a.size()) num = std::string(a.size() - num.size(), '0') + num;  // node[01-04]
          expand_into(prefix + num + rest, out);
        }
      }
    } catch (const std::exception&) {
      throw Error("SLURM_JOB_NODELIST: bad range '" + r + "' in " + host);
    }
    pos = comma + 1;
  }
}

}  // namespace

std::vector<std::string> expand_nodelist(const std::string& list) {
  std::vector<std::string> hosts;
  for (const auto& part : split_top_level(list)) expand_into(part, hosts);
  return hosts;
}

LaunchEnv launch_env(const std::function<const char*(const char*)>& getenv) {
  auto get = [&](const char* key) -> std::string {
    const char* v = getenv ? getenv(key) : std::getenv(key);
    return v ? std::string(v) : std::string();
  };
  auto num = [&](const char* key, const std::string& fallback, int min) {
    std::string v = get(key);
    if (v.empty()) v = fallback;
    if (v.empty()) throw Error(std::string(key) + " is not set");
    size_t used = 0;
    int n = 0;
    try {
      n = std::stoi(v, &used);  // SLURM_TASKS_PER_NODE: "2(x3)" reads 2
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || n < min)
      throw Error(std::string(key) + "=" + v + ": expected an integer >= " + std::to_string(min));
    return n;
  };
  LaunchEnv e;
  if (!get("RANK").empty()) {
    e.source = "torchrun";
    e.rank = num("RANK", "", 0);
    e.world_size = num("WORLD_SIZE", "", 1);
    e.local_rank = num("LOCAL_RANK", std::to_string(e.rank), 0);
    e.local_world_size = num("LOCAL_WORLD_SIZE", std::to_string(e.world_size), 1);
  } else if (!get("SLURM_PROCID").empty()) {
    e.source = "slurm";
    e.rank = num("SLURM_PROCID", "", 0);
    e.world_size = num("SLURM_NTASKS", "", 1);
    e.local_rank = num("SLURM_LOCALID", "0", 0);
    e.local_world_size =
        num("SLURM_NTASKS_PER_NODE", get("SLURM_TASKS_PER_NODE").empty() ? "1" : get("SLURM_TASKS_PER_NODE"), 1);
    std::string nodes = get("SLURM_JOB_NODELIST");
    if (nodes.empty()) nodes = get("SLURM_NODELIST");
    if (!nodes.empty()) {
      auto hosts = expand_nodelist(nodes);
      if (!hosts.empty()) e.master_addr = hosts.front();
    }
  } else {
    return e;
  }
  if (!get("MASTER_ADDR").empty()) e.master_addr = get("MASTER_ADDR");
  e.agent_store = e.source == "torchrun" && get("TORCHELASTIC_USE_AGENT_STORE") == "True";
  if (e.agent_store) e.restart_count = num("TORCHELASTIC_RESTART_COUNT", "0", 0);
  e.master_port = num("MASTER_PORT", "29500", 1);
  if (e.master_port > 65535) throw Error("MASTER_PORT=" + get("MASTER_PORT") + ": not a port");
  const std::string rank_var = e.source == "slurm" ? "SLURM_PROCID" : "RANK";
  if (e.rank >= e.world_size)
    throw Error(rank_var + "=" + std::to_string(e.rank) + ": not below the world size " + std::to_string(e.world_size));
  if (e.local_rank >= e.local_world_size) e.local_world_size = e.local_rank + 1;
  return e;
}

bool distributed_available() {
#ifdef DIFFUSE_HAVE_GLOO
  return true;
#else
  return false;
#endif
}

// ---------------------------------------------------------------------------------------------
// The process group

#ifdef DIFFUSE_HAVE_GLOO

struct Distributed::Impl {
  std::chrono::milliseconds timeout{60000};
  c10::intrusive_ptr<c10d::Store> store;     // this thread's connection
  c10::intrusive_ptr<c10d::Store> hb_store;  // the heartbeat thread's
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
#ifdef DIFFUSE_HAVE_NCCL
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> nccl;
#endif
  std::thread heartbeat;
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  int64_t barriers = 0;

  template <class F>
  auto with_pg(F&& f) {
#ifdef DIFFUSE_HAVE_NCCL
    if (nccl) return f(*nccl);
#endif
    return f(*gloo);
  }
  static std::string key(const char* what, int rank) {
    return std::string("diffuse/") + what + "/" + std::to_string(rank);
  }
  std::vector<int64_t> heartbeats(int world) {
    std::vector<int64_t> v;
    for (int r = 0; r < world; ++r) v.push_back(store->add(key("hb", r), 0));
    return v;
  }
};

namespace {

std::string rank_list(const std::vector<int>& ranks) {
  std::string s;
  for (int r : ranks) s += (s.empty() ? "" : ", ") + std::to_string(r);
  return s;
}

constexpr auto kBeat = std::chrono::milliseconds(250);

}  // namespace

Distributed::Distributed() = default;

Distributed::Distributed(const LaunchEnv& env, std::chrono::milliseconds timeout, torch::Device device)
    : env_(env), impl_(std::make_unique<Impl>()) {
  if (env_.world_size <= 1) {
    impl_.reset();
    return;
  }
  auto& im = *impl_;
  im.timeout = timeout;
  const std::string who = "rank " + std::to_string(env_.rank);
  const std::string where = env_.master_addr + ":" + std::to_string(env_.master_port);
  const double secs = static_cast<double>(timeout.count()) / 1000.0;
  char secs_text[32];
  std::snprintf(secs_text, sizeof secs_text, "%g s", secs);
  c10d::TCPStoreOptions so;
  so.port = static_cast<std::uint16_t>(env_.master_port);
  const bool host = env_.rank == 0 && !env_.agent_store;
  so.isServer = host;
  so.numWorkers = {};
  so.waitWorkers = false;
  so.timeout = timeout;
  try {
    im.store = c10::make_intrusive<c10d::TCPStore>(env_.master_addr, so);
    so.isServer = false;
    im.hb_store = c10::make_intrusive<c10d::TCPStore>(env_.master_addr, so);
    if (env_.agent_store) {
      const std::string prefix = "/worker/attempt_" + std::to_string(env_.restart_count);
      im.store = c10::make_intrusive<c10d::PrefixStore>(prefix, im.store);
      im.hb_store = c10::make_intrusive<c10d::PrefixStore>(prefix, im.hb_store);
    }
  } catch (const std::exception& e) {
    if (host)
      throw Error(who + ": cannot host the rendezvous store on " + where + " (MASTER_ADDR / MASTER_PORT): " + e.what());
    throw Error(who + ": rendezvous store at " + where + " not reachable within " + secs_text +
                " (rank 0 hosts it; is it running?): " + e.what());
  }
  // Arrival: every rank announces itself and waits for the others, naming the missing ones.
  im.store->set(Impl::key("arrived", env_.rank), std::vector<uint8_t>{1});
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    std::vector<int> missing;
    for (int r = 0; r < env_.world_size; ++r)
      if (!im.store->check({Impl::key("arrived", r)})) missing.push_back(r);
    if (missing.empty()) break;
    if (std::chrono::steady_clock::now() > deadline)
      throw Error(who + ": rendezvous at " + where + " timed out after " + secs_text + ": rank" +
                  (missing.size() > 1 ? "s " : " ") + rank_list(missing) + " of " + std::to_string(env_.world_size) +
                  " never arrived");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  im.heartbeat = std::thread([this] {
    auto& i = *impl_;
    std::unique_lock<std::mutex> lock(i.mu);
    while (!i.stop) {
      lock.unlock();
      try {
        i.hb_store->add(Impl::key("hb", env_.rank), 1);
      } catch (const std::exception&) {
        // The store is gone (rank 0 stopped): the next collective reports it.
      }
      lock.lock();
      i.cv.wait_for(lock, kBeat, [&] { return i.stop; });
    }
  });
  auto pg_store = c10::make_intrusive<c10d::PrefixStore>("pg", im.store);
  try {
#ifdef DIFFUSE_HAVE_NCCL
    if (device.is_cuda()) {
      auto o = c10d::ProcessGroupNCCL::Options::create();
      o->timeout = timeout;
      im.nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(pg_store, env_.rank, env_.world_size, o);
    }
    if (!im.nccl)
#endif
    {
      auto o = c10d::ProcessGroupGloo::Options::create(timeout);
      const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
      if (ifname && *ifname)
        o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      else if (env_.master_addr == "127.0.0.1" || env_.master_addr == "localhost")
        o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      else
        o->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      im.gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(pg_store, env_.rank, env_.world_size, o);
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail("connecting the process group", e.what());
  }
  (void)device;
}

Distributed::~Distributed() {
  if (!impl_) return;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stop = true;
  }
  impl_->cv.notify_all();
  if (impl_->heartbeat.joinable()) impl_->heartbeat.join();
}

std::string Distributed::backend() const {
  if (!impl_) return "none";
#ifdef DIFFUSE_HAVE_NCCL
  if (impl_->nccl) return "nccl";
#endif
  return "gloo";
}

void Distributed::fail(const std::string& what, const std::string& cause) {
  const std::string who = "rank " + std::to_string(env_.rank) + ": ";
  std::string verdict;
  try {
    auto before = impl_->heartbeats(env_.world_size);
    std::this_thread::sleep_for(6 * kBeat);
    auto after = impl_->heartbeats(env_.world_size);
    std::vector<int> stopped;
    for (int r = 0; r < env_.world_size; ++r)
      if (r != env_.rank && after[r] == before[r]) stopped.push_back(r);
    if (stopped.empty())
      verdict = "every rank is still alive (one may be stuck; the timeout is " +
                std::to_string(impl_->timeout.count() / 1000) + " s)";
    else
      verdict = "rank" + std::string(stopped.size() > 1 ? "s " : " ") + rank_list(stopped) + " stopped (no heartbeat)";
  } catch (const std::exception&) {
    verdict = "rank 0 stopped (the rendezvous store it hosts no longer answers)";
  }
  std::string short_cause = cause.substr(0, cause.find('\n'));
  throw Error(who + what + " failed: " + verdict + " [" + short_cause + "]");
}

namespace {

// Flat buckets of same-dtype tensors, at most `bytes` each (a larger tensor gets its own).
std::vector<std::vector<torch::Tensor>> make_buckets(const std::vector<torch::Tensor>& tensors, int64_t bytes) {
  std::map<c10::ScalarType, std::vector<std::vector<torch::Tensor>>> by_type;
  std::map<c10::ScalarType, int64_t> fill;
  for (const auto& t : tensors) {
    auto& list = by_type[t.scalar_type()];
    const int64_t n = t.numel() * static_cast<int64_t>(t.element_size());
    if (list.empty() || fill[t.scalar_type()] + n > bytes) {
      list.emplace_back();
      fill[t.scalar_type()] = 0;
    }
    list.back().push_back(t);
    fill[t.scalar_type()] += n;
  }
  std::vector<std::vector<torch::Tensor>> out;
  for (auto& [type, lists] : by_type)
    for (auto& l : lists) out.push_back(std::move(l));
  return out;
}

torch::Tensor flatten(const std::vector<torch::Tensor>& ts) {
  std::vector<torch::Tensor> flat;
  for (const auto& t : ts) flat.push_back(t.detach().reshape(-1));
  return torch::cat(flat);
}

void unflatten_into(const torch::Tensor& flat, const std::vector<torch::Tensor>& ts) {
  torch::NoGradGuard ng;
  int64_t off = 0;
  for (const auto& t : ts) {
    t.copy_(flat.narrow(0, off, t.numel()).view_as(t));
    off += t.numel();
  }
}

}  // namespace

void Distributed::broadcast(const std::vector<torch::Tensor>& tensors, const std::string& what) {
  if (!impl_) return;
  for (const auto& bucket : make_buckets(tensors, 25 << 20)) {
    std::vector<at::Tensor> flat{flatten(bucket)};
    try {
      c10d::BroadcastOptions o;
      o.rootRank = 0;
      impl_->with_pg([&](auto& pg) { return pg.broadcast(flat, o); })->wait();
    } catch (const std::exception& e) {
      fail("broadcast of " + what, e.what());
    }
    unflatten_into(flat[0], bucket);
  }
}

void Distributed::all_reduce_mean(const std::vector<torch::Tensor>& tensors, const std::string& what,
                                  int64_t bucket_bytes) {
  if (!impl_) return;
  for (const auto& bucket : make_buckets(tensors, bucket_bytes)) {
    std::vector<at::Tensor> flat{flatten(bucket)};
    try {
      impl_->with_pg([&](auto& pg) { return pg.allreduce(flat); })->wait();
    } catch (const std::exception& e) {
      fail("all-reduce of " + what, e.what());
    }
    flat[0].div_(env_.world_size);
    unflatten_into(flat[0], bucket);
  }
}

Distributed::Pending Distributed::all_reduce_sum_async(torch::Tensor flat, const std::string& what) {
  if (!impl_) return {[] {}};
  std::vector<at::Tensor> v{flat};
  c10::intrusive_ptr<c10d::Work> work;
  try {
    work = impl_->with_pg([&](auto& pg) { return pg.allreduce(v); });
  } catch (const std::exception& e) {
    fail("all-reduce of " + what, e.what());
  }
  return {[this, work, what] {
    try {
      work->wait();
    } catch (const std::exception& e) {
      fail("all-reduce of " + what, e.what());
    }
  }};
}

bool Distributed::any(bool flag, const std::string& what) {
  if (!impl_) return flag;
  std::vector<at::Tensor> v{torch::tensor({flag ? 1 : 0}, torch::kInt32)};
  try {
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::MAX;
    impl_->with_pg([&](auto& pg) { return pg.allreduce(v, o); })->wait();
  } catch (const std::exception& e) {
    fail(what, e.what());
  }
  return v[0].item<int>() != 0;
}

void Distributed::barrier(const std::string& what) {
  if (!impl_) return;
  auto& im = *impl_;
  const std::string key = "diffuse/barrier/" + std::to_string(im.barriers++);
  // Waits until `counter` reaches the world size while watching heartbeats: a rank whose
  // heartbeat stands still for the timeout has stopped.
  auto wait_for_all = [&](const std::string& counter) {
    auto beats = im.heartbeats(env_.world_size);
    std::vector<std::chrono::steady_clock::time_point> seen(env_.world_size, std::chrono::steady_clock::now());
    while (im.store->add(counter, 0) < env_.world_size) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      auto now_beats = im.heartbeats(env_.world_size);
      const auto now = std::chrono::steady_clock::now();
      for (int r = 0; r < env_.world_size; ++r) {
        if (now_beats[r] != beats[r]) seen[r] = now;
        if (r != env_.rank && now - seen[r] > im.timeout)
          throw Error("rank " + std::to_string(env_.rank) + ": waiting at " + what + " failed: rank " +
                      std::to_string(r) + " stopped (no heartbeat for " + std::to_string(im.timeout.count() / 1000) +
                      " s)");
      }
      beats = now_beats;
    }
  };
  try {
    im.store->add(key, 1);
    wait_for_all(key);
    // Rank 0 hosts the store: it leaves only after every rank has seen the barrier complete.
    im.store->add(key + "/left", 1);
    if (env_.rank == 0) wait_for_all(key + "/left");
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail("waiting at " + what, e.what());
  }
}

#else  // no c10d Gloo in this build: a job of one process only

struct Distributed::Impl {};
Distributed::Distributed() = default;
Distributed::Distributed(const LaunchEnv& env, std::chrono::milliseconds, torch::Device) : env_(env) {
  if (env.world_size > 1)
    throw Error(
        "this build of diffuse has no distributed backend (c10d Gloo; install gloo's headers, e.g. "
        "libgloo-dev, and rebuild): WORLD_SIZE " +
        std::to_string(env.world_size) + " cannot run");
}
Distributed::~Distributed() = default;
std::string Distributed::backend() const { return "none"; }
void Distributed::fail(const std::string& what, const std::string& cause) { throw Error(what + ": " + cause); }
void Distributed::broadcast(const std::vector<torch::Tensor>&, const std::string&) {}
void Distributed::all_reduce_mean(const std::vector<torch::Tensor>&, const std::string&, int64_t) {}
Distributed::Pending Distributed::all_reduce_sum_async(torch::Tensor, const std::string&) {
  return {[] {}};
}
bool Distributed::any(bool flag, const std::string&) { return flag; }
void Distributed::barrier(const std::string&) {}

#endif

// ---------------------------------------------------------------------------------------------
// Gradients

struct GradientSync::State {
  std::shared_ptr<Distributed> dist;
  std::vector<torch::Tensor> params;
  struct Bucket {
    std::vector<size_t> members;
    std::vector<int64_t> offsets;
    torch::Tensor flat;
    size_t arrived = 0;
    bool launched = false;
    Distributed::Pending pending;
  };
  std::vector<Bucket> buckets;
  std::vector<size_t> bucket_of, hooks;
  std::vector<char> got;
  bool armed = false;
  size_t next = 0;
  int early = 0, last_early = 0;
  std::string what = "gradients";
  std::mutex mu;

  void slot_write(size_t i, const torch::Tensor* fresh) {
    auto& b = buckets[bucket_of[i]];
    size_t k = std::find(b.members.begin(), b.members.end(), i) - b.members.begin();
    auto slot = b.flat.narrow(0, b.offsets[k], params[i].numel());
    const auto& g = params[i].grad();
    if (fresh && g.defined())
      slot.copy_(g.reshape(-1) + fresh->reshape(-1));
    else if (fresh)
      slot.copy_(fresh->reshape(-1));
    else if (g.defined())
      slot.copy_(g.reshape(-1));
    else
      slot.zero_();
  }
  void launch_ready() {
    while (next < buckets.size() && buckets[next].arrived == buckets[next].members.size()) {
      auto& b = buckets[next++];
      b.launched = true;
      b.pending = dist->all_reduce_sum_async(b.flat, what);
    }
  }
  void on_grad(size_t i, const torch::Tensor& grad) {
    std::lock_guard<std::mutex> lock(mu);
    if (!armed || got[i]) return;
    torch::NoGradGuard ng;
    slot_write(i, &grad);
    got[i] = 1;
    ++buckets[bucket_of[i]].arrived;
    const size_t before = next;
    launch_ready();
    early += static_cast<int>(next - before);
  }
};

GradientSync::GradientSync(std::shared_ptr<Distributed> dist, std::vector<torch::Tensor> params, int64_t bucket_bytes)
    : state_(std::make_shared<State>()) {
  auto& st = *state_;
  st.dist = std::move(dist);
  st.params = std::move(params);
  if (!st.dist || st.dist->world_size() <= 1) return;
  st.bucket_of.resize(st.params.size());
  st.got.assign(st.params.size(), 0);
  int64_t fill = bucket_bytes;
  for (size_t j = st.params.size(); j-- > 0;) {  // backward meets the last layers first
    const auto& p = st.params[j];
    const int64_t n = p.numel() * static_cast<int64_t>(p.element_size());
    if (st.buckets.empty() || fill + n > bucket_bytes ||
        p.scalar_type() != st.params[st.buckets.back().members[0]].scalar_type()) {
      st.buckets.emplace_back();
      fill = 0;
    }
    auto& b = st.buckets.back();
    b.offsets.push_back(b.members.empty() ? 0 : b.offsets.back() + st.params[b.members.back()].numel());
    b.members.push_back(j);
    st.bucket_of[j] = st.buckets.size() - 1;
    fill += n;
  }
  for (auto& b : st.buckets) {
    const auto& last = st.params[b.members.back()];
    b.flat = torch::zeros({b.offsets.back() + last.numel()}, last.options().requires_grad(false));
  }
  std::weak_ptr<State> weak = state_;
  for (size_t i = 0; i < st.params.size(); ++i)
    st.hooks.push_back(st.params[i].register_hook([weak, i](torch::Tensor grad) {
      if (auto s = weak.lock()) s->on_grad(i, grad);
    }));
}

GradientSync::~GradientSync() {
  for (size_t i = 0; i < state_->hooks.size(); ++i)
    state_->params[i].remove_hook(static_cast<unsigned>(state_->hooks[i]));
}

int GradientSync::buckets() const { return static_cast<int>(state_->buckets.size()); }

int GradientSync::overlapped() const { return state_->last_early; }

void GradientSync::arm(const std::string& what) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->what = what;
  state_->armed = !state_->buckets.empty();
}

void GradientSync::finish(const std::string& what) {
  auto& st = *state_;
  if (st.buckets.empty()) return;
  std::lock_guard<std::mutex> lock(st.mu);
  torch::NoGradGuard ng;
  st.what = what;
  // Parameters no backward reached (or a pass that was not armed): their .grad as it is.
  for (size_t i = 0; i < st.params.size(); ++i)
    if (!st.got[i]) {
      st.slot_write(i, nullptr);
      st.got[i] = 1;
      ++st.buckets[st.bucket_of[i]].arrived;
    }
  st.launch_ready();
  const double world = st.dist->world_size();
  for (auto& b : st.buckets) {
    b.pending.wait();
    b.flat.div_(world);
    for (size_t k = 0; k < b.members.size(); ++k) {
      auto& p = st.params[b.members[k]];
      auto mean = b.flat.narrow(0, b.offsets[k], p.numel()).view_as(p);
      if (p.grad().defined())
        p.mutable_grad().copy_(mean);
      else
        p.mutable_grad() = mean.clone();
    }
    b.arrived = 0;
    b.launched = false;
    b.pending = {};
  }
  std::fill(st.got.begin(), st.got.end(), 0);
  st.last_early = st.early;
  st.early = 0;
  st.next = 0;
  st.armed = false;
}

}  // namespace diffuse
