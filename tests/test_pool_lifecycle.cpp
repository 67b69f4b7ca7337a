// procpool::Pool's life: workers forked once, pinned, recycled, initialized; close / join /
// terminate / destruction; nothing left behind (processes, zombies, descriptors, signal state),
// even when the owner dies; safe with the caller's threads and the caller's own children.
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <numeric>
#include <optional>
#include <procpool/pool.hpp>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "support.hpp"

using namespace std::chrono_literals;
using Catch::Matchers::Contains;
using procpool_test::Channel;
using procpool_test::child_pids;
using procpool_test::fail;
using procpool_test::iota_vector;
using procpool_test::open_fd_count;
using procpool_test::pid_gone;
using procpool_test::run_isolated;
using procpool_test::square;
using procpool_test::squares;
using procpool_test::with_chunk;
using procpool_test::with_workers;

namespace {

int worker_pid(int) { return ::getpid(); }

/// The CPUs in a mask, in order.
std::vector<int> cpus_of(const cpu_set_t& set) {
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  return cpus;
}

/// The CPUs process `pid` (0: the caller) may run on.
std::vector<int> affinity_of(pid_t pid) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(pid, sizeof set, &set) != 0) return {};
  return cpus_of(set);
}

/// A task that reports, from inside the worker, which worker it is and where it may run. It
/// sleeps a little so that every worker gets items (chunks of one item, two in flight each).
std::pair<int, std::vector<int>> where_am_i(int) {
  std::this_thread::sleep_for(5ms);
  return {::getpid(), affinity_of(0)};
}

/// Each pid seen by where_am_i, with the CPU sets it reported (all of them, not one per pid).
std::map<int, std::set<std::vector<int>>> masks_by_pid(const std::vector<std::pair<int, std::vector<int>>>& seen) {
  std::map<int, std::set<std::vector<int>>> by_pid;
  for (const auto& [pid, cpus] : seen) by_pid[pid].insert(cpus);
  return by_pid;
}

/// A process is not running if it does not exist, or is a zombie that its (new) parent has not
/// reaped yet: orphans go to whatever reaper the machine has, on its schedule.
bool not_running(pid_t pid) {
  if (pid_gone(pid)) return true;
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return true;
  const auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] == 'Z';
}

/// Polls `done` until it holds or `limit` passes; returns its last value.
template <class Done>
bool eventually(Done&& done, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    if (done()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return done();
    std::this_thread::sleep_for(5ms);
  }
}

[[noreturn]] void segfault_now() {
  ::signal(SIGSEGV, SIG_DFL);  // not the test framework's (or a sanitizer's) handler, inherited
  ::raise(SIGSEGV);
  ::_exit(99);
}

/// Squares, except that items with i % 5 == 2 segfault and items with i % 11 == 7 SIGKILL
/// themselves (a few crashes of both kinds in any map of a few dozen items).
long square_or_crash(int i) {
  if (i % 5 == 2) segfault_now();
  if (i % 11 == 7) {
    ::kill(::getpid(), SIGKILL);
    ::pause();
  }
  return static_cast<long>(i) * i;
}

bool crashes(int i) { return i % 5 == 2 || i % 11 == 7; }

}  // namespace

TEST_CASE("workers are forked once at construction and stay the same across maps when nothing fails") {
  procpool::Pool pool(with_workers(2));
  REQUIRE(pool.size() == 2);
  const auto pids = pool.worker_pids();
  REQUIRE(pids.size() == 2);
  CHECK(pids[0] != pids[1]);
  for (const pid_t p : pids) CHECK(::kill(p, 0) == 0);
  for (int round = 0; round < 5; ++round) {
    for (const int p : pool.map(worker_pid, iota_vector(200))) {
      CHECK(std::find(pids.begin(), pids.end(), p) != pids.end());
    }
    CHECK(pool.submit(square, round).get() == square(round));
    CHECK(pool.worker_pids() == pids);
  }
}

TEST_CASE("with pin_cpus each worker is pinned to one allowed CPU, round-robin over the caller's mask") {
  const std::vector<int> allowed = affinity_of(0);
  REQUIRE_FALSE(allowed.empty());
  // One more worker than CPUs (at most 9), so the round-robin wraps around.
  const std::size_t workers = std::min<std::size_t>(allowed.size() + 1, 9);
  auto options = with_workers(workers);
  options.pin_cpus = true;
  procpool::Pool pool(options);

  const auto by_pid = masks_by_pid(pool.map(where_am_i, iota_vector(static_cast<int>(6 * workers)), with_chunk(1)));
  REQUIRE(by_pid.size() == workers);  // every worker ran items
  std::multiset<int> pinned;
  for (const auto& [pid, masks] : by_pid) {
    INFO("worker pid " << pid);
    REQUIRE(masks.size() == 1);  // the same mask for every item of a worker
    const auto& cpus = *masks.begin();
    REQUIRE(cpus.size() == 1);  // exactly one CPU
    pinned.insert(cpus[0]);
    CHECK(affinity_of(pid) == cpus);  // the parent sees the same
  }
  std::multiset<int> expected;
  for (std::size_t i = 0; i < workers; ++i) expected.insert(allowed[i % allowed.size()]);
  CHECK(pinned == expected);
  CHECK(affinity_of(0) == allowed);  // the caller's own mask is untouched
}

TEST_CASE("a pool created under a single-CPU affinity mask pins every worker to that CPU") {
  const std::vector<int> allowed = affinity_of(0);
  REQUIRE_FALSE(allowed.empty());
  const int cpu = allowed.back();  // not CPU 0 when there is a choice
  const int status = run_isolated([cpu] {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    if (::sched_setaffinity(0, sizeof one, &one) != 0) return fail(2, "sched_setaffinity");
    procpool::Pool pool(with_workers(2));  // pin_cpus is the default
    const auto by_pid = masks_by_pid(pool.map(where_am_i, iota_vector(12), with_chunk(1)));
    if (by_pid.size() != 2) return fail(3, "expected items from both workers, got " + std::to_string(by_pid.size()));
    for (const auto& [pid, masks] : by_pid) {
      if (masks != std::set<std::vector<int>>{{cpu}})
        return fail(4, "worker " + std::to_string(pid) + " is not pinned to CPU " + std::to_string(cpu));
      if (affinity_of(pid) != std::vector<int>{cpu}) return fail(5, "the parent sees another mask");
    }
    return 0;
  });
  INFO(procpool_test::describe_status(status));
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
}

TEST_CASE("with pin_cpus false workers keep the caller's full affinity mask") {
  const std::vector<int> allowed = affinity_of(0);
  auto options = with_workers(2);
  options.pin_cpus = false;
  procpool::Pool pool(options);
  const auto by_pid = masks_by_pid(pool.map(where_am_i, iota_vector(12), with_chunk(1)));
  REQUIRE(by_pid.size() == 2);
  for (const auto& [pid, masks] : by_pid) {
    INFO("worker pid " << pid);
    CHECK(masks == std::set<std::vector<int>>{allowed});
  }
}

TEST_CASE("max_tasks_per_worker replaces a worker after it ran that many items") {
  auto options = with_workers(2);
  options.max_tasks_per_worker = 10;
  procpool::Pool pool(options);
  const auto out = pool.map([](int i) { return std::pair<long, int>{square(i), ::getpid()}; }, iota_vector(100));
  REQUIRE(out.size() == 100);
  std::map<int, int> items_per_pid;
  for (int i = 0; i < 100; ++i) {
    CHECK(out[static_cast<std::size_t>(i)].first == square(i));
    ++items_per_pid[out[static_cast<std::size_t>(i)].second];
  }
  for (const auto& [pid, n] : items_per_pid) {
    INFO("worker pid " << pid);
    CHECK(n <= 10);
  }
  CHECK(items_per_pid.size() > pool.size());
  CHECK(items_per_pid.size() >= 10);  // 100 items, at most 10 each
  // Still usable afterwards, with replacements.
  CHECK(pool.map(square, iota_vector(50)) == squares(50));
}

namespace {
int g_initializer_runs = 0;       // in each worker: how often the initializer ran there
char g_initializer_log[64] = {};  // a file every initializer run appends its pid to

std::pair<int, int> pid_and_initializer_runs(int) { return {::getpid(), g_initializer_runs}; }
}  // namespace

TEST_CASE("the initializer runs exactly once in each worker, before its first task, also in replacements") {
  std::snprintf(g_initializer_log, sizeof g_initializer_log, "/tmp/procpool-init-XXXXXX");
  const int fd = ::mkstemp(g_initializer_log);
  REQUIRE(fd >= 0);
  ::close(fd);
  std::set<int> task_pids;
  {
    auto options = with_workers(2);
    options.max_tasks_per_worker = 8;  // replacements must run it too
    options.initializer = [] {
      ++g_initializer_runs;
      const int log = ::open(g_initializer_log, O_WRONLY | O_APPEND | O_CLOEXEC);
      if (log >= 0) {
        ::dprintf(log, "%d\n", ::getpid());
        ::close(log);
      }
    };
    procpool::Pool pool(options);
    for (const auto& [pid, runs] : pool.map(pid_and_initializer_runs, iota_vector(40))) {
      CHECK(runs == 1);
      task_pids.insert(pid);
    }
  }  // destroyed: every worker ever started has run (or skipped, if never ready) its initializer
  CHECK(g_initializer_runs == 0);  // never in the caller
  std::ifstream log(g_initializer_log);
  std::multiset<int> logged;
  for (int pid; log >> pid;) logged.insert(pid);
  ::unlink(g_initializer_log);
  for (const int pid : logged) CHECK(logged.count(pid) == 1);     // once per worker
  for (const int pid : task_pids) CHECK(logged.count(pid) == 1);  // every worker that ran tasks ran it
  CHECK(task_pids.size() >= 5);                                   // 40 items, at most 8 per worker
}

TEST_CASE("after close() submit and map throw procpool::Error, while work submitted before still completes") {
  procpool::Pool pool(with_workers(2));
  auto before = pool.submit(square, 7);
  pool.close();
  try {
    (void)pool.submit(square, 3);
    FAIL("submit did not throw");
  } catch (const procpool::Error& e) {
    CHECK_THAT(e.what(), Contains("closed"));
  }
  CHECK_THROWS_AS(pool.map(square, iota_vector(10)), procpool::Error);
  CHECK_THROWS_AS(pool.try_map(square, iota_vector(10)), procpool::Error);
  pool.join();
  CHECK(before.get() == 49);
}

TEST_CASE("join() without close() throws procpool::Error and leaves the pool usable") {
  procpool::Pool pool(with_workers(2));
  CHECK_THROWS_AS(pool.join(), procpool::Error);
  CHECK(pool.map(square, iota_vector(30)) == squares(30));
  pool.close();
  pool.join();
  CHECK(pool.worker_pids().empty());
}

TEST_CASE("terminate() from another thread makes a long-running map fail promptly with procpool::Error") {
  Channel started;  // item 5 says it runs ...
  Channel go;       // ... and waits here for a byte that only a failing test sends
  procpool::Pool pool(with_workers(2));
  const auto pids = pool.worker_pids();
  const auto task = [started_fd = started.write_fd(), go_fd = go.read_fd()](int i) -> long {
    if (i == 5) {
      const int pid = ::getpid();
      (void)!::write(started_fd, &pid, sizeof pid);
      int byte = 0;
      (void)!::read(go_fd, &byte, 1);
    }
    return static_cast<long>(i) * i;
  };
  auto map = std::async(std::launch::async, [&] { return pool.map(task, iota_vector(40)); });
  const auto running = started.receive(5s);
  CHECK(running.has_value());
  const auto t0 = std::chrono::steady_clock::now();
  pool.terminate();
  const bool prompt = map.wait_for(5s) == std::future_status::ready;
  if (!prompt) (void)go.send(1);  // let the item finish, so that the test ends and reports
  CHECK(prompt);                  // a hang guard, not a speed claim
  CHECK_THROWS_AS(map.get(), procpool::Error);
  CHECK(std::chrono::steady_clock::now() - t0 < 8s);
  CHECK_THROWS_AS(pool.submit(square, 1), procpool::Error);
  for (const pid_t p : pids) CHECK(eventually([&] { return pid_gone(p); }, 2000ms));
}

TEST_CASE("destroying a pool waits for the submitted tasks, whose futures then hold their values") {
  std::vector<procpool::Future<long>> futures;
  std::vector<pid_t> pids;
  {
    procpool::Pool pool(with_workers(2));
    pids = pool.worker_pids();
    for (int i = 0; i < 6; ++i)
      futures.push_back(pool.submit(
          [](int x) {
            std::this_thread::sleep_for(50ms);
            return static_cast<long>(x) * 3;
          },
          i));
  }
  for (int i = 0; i < 6; ++i) {
    auto& f = futures[static_cast<std::size_t>(i)];
    REQUIRE(f.valid());
    CHECK(f.ready());  // complete before the destructor returned, not computed now
    CHECK(f.get() == 3L * i);
  }
  for (const pid_t p : pids) CHECK(pid_gone(p));
}

namespace {

/// Runs `use` on a fresh pool, destroys it, and checks that nothing of it is left: no worker
/// process (each pid in `pids` plus the last live ones), no child of this process, zombie or
/// not, and no extra descriptor.
template <class Use>
void check_nothing_left(Use&& use) {
  REQUIRE(child_pids().empty());
  const int fds_before = open_fd_count();
  std::set<int> pids;
  {
    procpool::Pool pool(with_workers(2));
    for (const pid_t p : pool.worker_pids()) pids.insert(p);
    use(pool, pids);
    for (const pid_t p : pool.worker_pids()) pids.insert(p);
  }
  for (const int p : pids) {
    INFO("worker pid " << p);
    CHECK(eventually([&] { return pid_gone(p); }, 1000ms));
  }
  CHECK(child_pids().empty());
  CHECK(procpool_test::zombie_children().empty());
  CHECK(open_fd_count() == fds_before);
}

}  // namespace

TEST_CASE("after a pool is destroyed no worker, no child and no descriptor of it remains") {
  check_nothing_left([](procpool::Pool& pool, std::set<int>& pids) {
    for (const int p : pool.map(worker_pid, iota_vector(100))) pids.insert(p);
    CHECK(pool.map(square, iota_vector(100)) == squares(100));
  });
}

TEST_CASE("after a pool whose workers crashed is destroyed no worker, no child and no descriptor remains") {
  check_nothing_left([](procpool::Pool& pool, std::set<int>& pids) {
    const auto outcomes = pool.try_map(square_or_crash, iota_vector(60));
    REQUIRE(outcomes.size() == 60);
    for (int i = 0; i < 60; ++i) CHECK(outcomes[static_cast<std::size_t>(i)].has_value() == !crashes(i));
    for (const int p : pool.map(worker_pid, iota_vector(20))) pids.insert(p);
  });
}

namespace {

/// Creates a pool in an isolated process, reports its workers' and zygote's pids through a pipe,
/// then SIGKILLs that process; checks that all of them are gone within a second. With `busy`,
/// every worker is in the middle of a 20-second item at that moment (so that end-of-file on its
/// task pipe cannot be what ends it).
void check_workers_die_with_owner(bool busy) {
  Channel report;   // the isolated owner writes: count, then that many pids
  Channel started;  // busy items write their worker's pid when they start
  const int status = run_isolated([&report, &started, busy] {
    procpool::Pool pool(with_workers(2));
    if (pool.map(square, iota_vector(20)) != squares(20)) return fail(2, "the map was wrong");
    std::optional<procpool::ImapResults<int>> running;
    if (busy) {
      const auto long_item = [started_fd = started.write_fd()](int i) {
        const int pid = ::getpid();
        (void)!::write(started_fd, &pid, sizeof pid);
        std::this_thread::sleep_for(20s);
        return i;
      };
      // imap dispatches at once, one item per chunk, without the caller waiting on it.
      running.emplace(pool.imap(long_item, iota_vector(4), with_chunk(1)));
      std::set<int> busy_workers;
      while (busy_workers.size() < pool.size()) {
        const auto pid = started.receive(5s);
        if (!pid) return fail(5, "not every worker started a long item");
        busy_workers.insert(*pid);
      }
    }
    const auto workers = pool.worker_pids();
    std::vector<int> pids(workers.begin(), workers.end());
    for (const pid_t p : child_pids()) pids.push_back(p);  // the zygote too
    if (!report.send(static_cast<int>(pids.size()))) return fail(3, "write");
    for (const int p : pids)
      if (!report.send(p)) return fail(3, "write");
    ::raise(SIGKILL);
    return fail(4, "still alive after SIGKILL");
  });
  INFO(procpool_test::describe_status(status));
  REQUIRE(WIFSIGNALED(status));
  REQUIRE(WTERMSIG(status) == SIGKILL);
  const auto count = report.receive(0ms);
  REQUIRE(count.has_value());
  REQUIRE(*count >= 3);  // two workers and the zygote
  std::vector<int> pids;
  for (int k = 0; k < *count; ++k) {
    const auto p = report.receive(0ms);
    REQUIRE(p.has_value());
    pids.push_back(*p);
  }
  const bool all_gone = eventually([&] { return std::all_of(pids.begin(), pids.end(), not_running); }, 1000ms);
  for (const int p : pids) {
    INFO("pid " << p);
    CHECK(not_running(p));
  }
  CHECK(all_gone);
}

}  // namespace

TEST_CASE("when the process owning an idle pool is SIGKILLed its workers are gone within a second") {
  check_workers_die_with_owner(/*busy=*/false);
}

TEST_CASE("when the process owning a pool is SIGKILLed mid-item its workers are gone within a second") {
  check_workers_die_with_owner(/*busy=*/true);
}

TEST_CASE("four threads sharing one pool each get the right results from 20 maps and submits") {
  procpool::Pool pool(with_workers(2));
  std::atomic<int> wrong{0};
  std::atomic<int> threw{0};
  std::mutex first_mu;
  std::string first_problem;
  const auto note = [&](const std::string& what) {
    std::lock_guard lock(first_mu);
    if (first_problem.empty()) first_problem = what;
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < 20; ++k) {
        try {
          const int base = t * 10000 + k * 100;
          if (k % 2 == 0) {
            std::vector<int> in(50);
            std::iota(in.begin(), in.end(), base);
            const auto out = pool.map([](int x) { return 2L * x + 1; }, in);
            for (std::size_t j = 0; j < in.size(); ++j)
              if (out.size() != in.size() || out[j] != 2L * in[j] + 1) {
                ++wrong;
                note("thread " + std::to_string(t) + " map " + std::to_string(k));
                break;
              }
          } else {
            auto a = pool.submit([](int x, int y) { return x * 7 + y; }, base, t);
            auto b = pool.submit(square, base);
            if (a.get() != base * 7 + t || b.get() != square(base)) {
              ++wrong;
              note("thread " + std::to_string(t) + " submit " + std::to_string(k));
            }
          }
        } catch (const std::exception& e) {
          ++threw;
          note(e.what());
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  INFO(first_problem);
  CHECK(wrong == 0);
  CHECK(threw == 0);
}

namespace {
std::mutex g_busy_mutex;  // held often by the caller's busy thread, and taken by tasks
}  // namespace

TEST_CASE("workers replaced while the caller's other thread holds locks and allocates do not deadlock") {
  auto options = with_workers(2);
  // A deadlocked task becomes a TimeoutError instead of a hang.
  options.task_timeout = 3000ms;
  procpool::Pool pool(options);

  std::atomic<bool> stop{false};
  std::atomic<long> rounds{0};
  std::thread busy([&] {
    std::mt19937 rng(12345);
    std::uniform_int_distribution<std::size_t> size(1, 1 << 16);
    while (!stop.load(std::memory_order_relaxed)) {
      std::lock_guard lock(g_busy_mutex);
      for (int k = 0; k < 8; ++k) {
        char* p = new char[size(rng)];
        p[0] = 1;
        delete[] p;
      }
      ++rounds;
    }
  });
  while (rounds.load() < 100) std::this_thread::yield();  // it is really running

  const auto task = [](int i) -> long {
    if (i % 6 == 5) segfault_now();
    std::lock_guard lock(g_busy_mutex);
    std::vector<char> scratch(static_cast<std::size_t>(i) * 1000 + 1, 'x');
    auto* extra = new long[static_cast<std::size_t>(i) + 1];
    extra[0] = static_cast<long>(i) * 3;
    const long v = extra[0] + scratch[0] - 'x';
    delete[] extra;
    return v;
  };
  const auto t0 = std::chrono::steady_clock::now();
  const auto outcomes = pool.try_map(task, iota_vector(60), with_chunk(1));
  const auto elapsed = std::chrono::steady_clock::now() - t0;
  stop = true;
  busy.join();

  CHECK(elapsed < 8s);  // a hang guard
  REQUIRE(outcomes.size() == 60);
  for (int i = 0; i < 60; ++i) {
    const auto& o = outcomes[static_cast<std::size_t>(i)];
    INFO("item " << i);
    if (i % 6 != 5) {
      REQUIRE(o.has_value());
      CHECK(o.value() == 3L * i);
      continue;
    }
    REQUIRE_FALSE(o.has_value());
    try {
      std::rethrow_exception(o.error());
    } catch (const procpool::ProcessError& e) {
      CHECK(e.exitcode() == -SIGSEGV);
      CHECK(e.item() == std::optional<std::size_t>(static_cast<std::size_t>(i)));
    } catch (const std::exception& e) {
      FAIL("wrong failure: " << e.what());
    }
  }
  CHECK(pool.map(square, iota_vector(20)) == squares(20));
}

TEST_CASE("children the caller forks and reaps itself during a map are neither stolen nor disturbing") {
  Channel started;
  Channel go;
  procpool::Pool pool(with_workers(2));
  const auto task = [started_fd = started.write_fd(), go_fd = go.read_fd()](int i) -> long {
    if (i == 0) {
      const int pid = ::getpid();
      (void)!::write(started_fd, &pid, sizeof pid);
      int byte = 0;
      (void)!::read(go_fd, &byte, 1);
    }
    return static_cast<long>(i) * i;
  };
  auto map = std::async(std::launch::async, [&] { return pool.map(task, iota_vector(80)); });
  const bool running = started.receive(5s).has_value();

  // While the map is certainly running (item 0 waits for us), fork and reap our own children.
  int reaped_ok = 0;
  for (int k = 0; k < 20; ++k) {
    const pid_t child = ::fork();
    if (child == 0) ::_exit(7 + k % 3);
    REQUIRE(child > 0);
    std::this_thread::sleep_for(2ms);  // let it end while the pool is polling
    int status = 0;
    pid_t r;
    do {
      r = ::waitpid(child, &status, 0);
    } while (r < 0 && errno == EINTR);
    if (r == child && WIFEXITED(status) && WEXITSTATUS(status) == 7 + k % 3) ++reaped_ok;
  }
  (void)go.send(1);
  CHECK(running);
  CHECK(reaped_ok == 20);
  REQUIRE(map.wait_for(5s) == std::future_status::ready);  // a hang guard
  CHECK(map.get() == squares(80));
  CHECK(pool.map(square, iota_vector(80)) == squares(80));
}

namespace {

volatile sig_atomic_t g_sigpipes = 0;
void count_sigpipe(int) { g_sigpipes = g_sigpipes + 1; }

bool same_mask(const sigset_t& a, const sigset_t& b) {
  for (int s = 1; s < NSIG; ++s)
    if (sigismember(&a, s) != sigismember(&b, s)) return false;
  return true;
}

/// Workers killed mid-map (SIGKILL and SIGSEGV); then every worker killed while the pool is
/// idle, so that the next submit is written to a dead worker's pipe (EPIPE, and a SIGPIPE unless
/// the library keeps it from the caller) before the pool notices the deaths.
bool map_with_killed_workers(procpool::Pool& pool) {
  const auto outcomes = pool.try_map(square_or_crash, iota_vector(60), with_chunk(1));
  for (int i = 0; i < 60; ++i)
    if (outcomes[static_cast<std::size_t>(i)].has_value() == crashes(i)) return false;
  const auto pids = pool.worker_pids();
  if (pids.size() != pool.size()) {
    // Replacements may still be on their way: let a small map register them.
    if (pool.map(square, iota_vector(4)) != squares(4)) return false;
  }
  for (const pid_t p : pool.worker_pids()) ::kill(p, SIGKILL);
  for (const pid_t p : pool.worker_pids())
    if (!eventually([&] { return pid_gone(p); }, 2000ms)) return false;
  auto late = pool.submit(square, 12);  // sent to a dead worker, then run by a replacement
  return late.get() == 144;
}

}  // namespace

TEST_CASE("a pool whose workers were killed mid-map leaves the caller's SIGPIPE handler and signal mask as they were") {
  const int status = run_isolated([] {
    struct sigaction mine {};
    mine.sa_handler = count_sigpipe;
    sigemptyset(&mine.sa_mask);
    mine.sa_flags = SA_RESTART;
    if (::sigaction(SIGPIPE, &mine, nullptr) != 0) return fail(2, "sigaction");
    sigset_t blocked;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGUSR2);
    ::pthread_sigmask(SIG_BLOCK, &blocked, nullptr);

    struct sigaction before {};
    ::sigaction(SIGPIPE, nullptr, &before);
    sigset_t mask_before;
    ::pthread_sigmask(SIG_SETMASK, nullptr, &mask_before);
    {
      procpool::Pool pool(with_workers(2));
      if (!map_with_killed_workers(pool)) return fail(3, "the outcomes were wrong");
      struct sigaction during {};
      ::sigaction(SIGPIPE, nullptr, &during);
      if (during.sa_handler != count_sigpipe) return fail(4, "SIGPIPE's handler changed while the pool lives");
    }
    struct sigaction after {};
    ::sigaction(SIGPIPE, nullptr, &after);
    sigset_t mask_after;
    ::pthread_sigmask(SIG_SETMASK, nullptr, &mask_after);
    sigset_t pending;
    ::sigpending(&pending);
    if (after.sa_handler != before.sa_handler || after.sa_flags != before.sa_flags)
      return fail(5, "SIGPIPE's disposition changed");
    if (!same_mask(mask_before, mask_after)) return fail(6, "the signal mask changed");
    if (sigismember(&pending, SIGPIPE) == 1) return fail(7, "a SIGPIPE was left pending");
    if (g_sigpipes != 0) return fail(8, "the caller's SIGPIPE handler ran " + std::to_string(g_sigpipes) + " times");
    return 0;
  });
  INFO(procpool_test::describe_status(status));
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
}

TEST_CASE("with SIGPIPE at its default disposition a pool whose workers were killed does not kill the caller") {
  struct sigaction before {};
  ::sigaction(SIGPIPE, nullptr, &before);
  sigset_t mask_before;
  ::pthread_sigmask(SIG_SETMASK, nullptr, &mask_before);
  {
    procpool::Pool pool(with_workers(2));
    CHECK(map_with_killed_workers(pool));
    CHECK(map_with_killed_workers(pool));
  }
  struct sigaction after {};
  ::sigaction(SIGPIPE, nullptr, &after);
  sigset_t mask_after;
  ::pthread_sigmask(SIG_SETMASK, nullptr, &mask_after);
  CHECK(after.sa_handler == before.sa_handler);
  CHECK(same_mask(mask_before, mask_after));
}
