// procpool::detail: a pool's settings, normalised once from PoolOptions; the scheduler, the
// transport, the zygote and each worker read this one struct.
#pragma once

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <functional>
#include <vector>

#include "../options.hpp"

namespace procpool::detail {

/// The CPUs of the caller's affinity mask, in order.
[[nodiscard]] inline std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (::sched_getaffinity(0, sizeof set, &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  return cpus;
}

struct Settings {
  std::size_t workers = 1;     // resolved: never 0
  std::vector<int> cpus;       // worker i is pinned to cpus[i % size]; empty: not pinned
  std::size_t chunk_size = 0;  // 0: automatic
  std::size_t max_tasks_per_worker = 0;
  std::chrono::nanoseconds task_timeout{0};  // 0: none
  std::function<void()> initializer;
  // How long an idle worker watches for its next chunk before it sleeps: a busy parent's next
  // message is usually that close. A serving MPI rank's workers do not watch (0): their chunks come
  // a network round trip apart, and a spinning worker only takes the CPU its rank needs to pass
  // the answer on (docs/scaling.md has the measurements).
  static constexpr std::chrono::nanoseconds kWorkerSpin = std::chrono::microseconds{60};
  std::chrono::nanoseconds worker_spin = kWorkerSpin;

  /// The settings PoolOptions ask for on this machine.
  [[nodiscard]] static Settings from(PoolOptions options) {
    Settings s;
    const std::vector<int> cpus = allowed_cpus();
    s.workers = options.workers > 0 ? options.workers : std::max<std::size_t>(1, cpus.size());
    if (options.pin_cpus) s.cpus = cpus;
    s.chunk_size = options.chunk_size;
    s.max_tasks_per_worker = options.max_tasks_per_worker;
    s.task_timeout = options.task_timeout;
    s.initializer = std::move(options.initializer);
    return s;
  }

  /// The CPU worker `index` is pinned to, or -1.
  [[nodiscard]] int cpu_of(std::size_t index) const noexcept { return cpus.empty() ? -1 : cpus[index % cpus.size()]; }
  [[nodiscard]] bool timed() const noexcept { return task_timeout.count() > 0; }
};

}  // namespace procpool::detail
