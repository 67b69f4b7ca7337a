// procpool::detail: the pool's jobs: each distinct callable a call runs, interned under an id, with
// what the scheduler learns of its cost per item.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>

#include "buffer.hpp"

namespace procpool::detail {

/// One callable as the workers receive it: the address of the function that rebuilds it in a
/// worker (the same in every fork of the caller), and its bytes.
struct Job {
  std::uintptr_t runner_factory = 0;
  Buffer callable;
  std::size_t users = 0;         // batches that run it and have not finished
  double ns_per_item = 0;        // measured, smoothed; 0: not measured yet
  std::size_t undispatched = 0;  // items of known-size batches not yet in a chunk
  std::uint64_t last_used = 0;   // the table's clock when it last became idle
  std::string key;               // the factory's address and the callable's bytes
};

/// Interns callables: identical ones share an id, so a worker is sent a callable only when it
/// switches to it. A job nobody uses is kept for a while: the next call with the same callable (a
/// loop of submit + get, or of maps) keeps its id, so workers that hold it are not sent it again,
/// and its measured cost per item still sizes chunks. Beyond kIdleJobs, the job idle longest goes.
class JobTable {
 public:
  static constexpr std::size_t kIdleJobs = 16;

  /// The id of this callable, registering it if new; counts one more user.
  std::uint64_t intern(std::uintptr_t runner_factory, std::span<const std::byte> callable) {
    std::string key(sizeof runner_factory + callable.size(), '\0');
    std::memcpy(key.data(), &runner_factory, sizeof runner_factory);
    if (!callable.empty()) std::memcpy(key.data() + sizeof runner_factory, callable.data(), callable.size());
    if (const auto it = ids_.find(key); it != ids_.end()) {
      ++jobs_.at(it->second).users;
      return it->second;
    }
    const std::uint64_t id = next_id_++;
    Job& job = jobs_[id];
    job.runner_factory = runner_factory;
    job.callable.append(callable.data(), callable.size());
    job.users = 1;
    job.key = key;
    ids_.emplace(std::move(key), id);
    return id;
  }

  [[nodiscard]] Job& at(std::uint64_t id) { return jobs_.at(id); }
  [[nodiscard]] const Job* find(std::uint64_t id) const {
    const auto it = jobs_.find(id);
    return it == jobs_.end() ? nullptr : &it->second;
  }

  /// Folds the measured cost of `items` items into the job's estimate.
  void record_cost(std::uint64_t id, std::uint64_t compute_ns, std::size_t items) {
    const auto it = jobs_.find(id);
    if (it == jobs_.end() || items == 0 || compute_ns == 0) return;
    const double sample = static_cast<double>(compute_ns) / static_cast<double>(items);
    double& estimate = it->second.ns_per_item;
    estimate = estimate == 0 ? sample : 0.5 * estimate + 0.5 * sample;
  }

  /// A batch that finished drops its use of the job.
  void release(std::uint64_t id) {
    const auto it = jobs_.find(id);
    if (it == jobs_.end() || --it->second.users > 0) return;
    it->second.last_used = ++clock_;
    std::size_t idle = 0;
    auto oldest = jobs_.end();
    for (auto j = jobs_.begin(); j != jobs_.end(); ++j) {
      if (j->second.users != 0) continue;
      ++idle;
      if (oldest == jobs_.end() || j->second.last_used < oldest->second.last_used) oldest = j;
    }
    if (idle <= kIdleJobs) return;
    ids_.erase(oldest->second.key);
    jobs_.erase(oldest);
  }

  [[nodiscard]] std::size_t size() const noexcept { return jobs_.size(); }

 private:
  std::unordered_map<std::uint64_t, Job> jobs_;
  std::unordered_map<std::string, std::uint64_t> ids_;
  std::uint64_t next_id_ = 1;
  std::uint64_t clock_ = 0;
};

}  // namespace procpool::detail
