// procpool::Pool: a failing item never hangs a map, is blamed on exactly the right input index, and
// leaves the pool usable with the dead worker replaced.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <numeric>
#include <optional>
#include <procpool/pool.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

using namespace std::chrono_literals;
using Catch::Matchers::Contains;
using procpool_test::Channel;
using procpool_test::die_by_signal;
using procpool_test::iota_vector;
using procpool_test::pid_gone;
using procpool_test::square;
using procpool_test::squares;
using procpool_test::two_workers;
using procpool_test::with_workers;

// A named namespace, so that the demangled type name travelling back is predictable.
namespace procpool_failures {

struct Boom : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace procpool_failures

namespace {

enum class Ending { segfault, abort, exit3, self_sigkill, throws };

/// A task that squares its input, except that the selected items end as `how` says. Before
/// ending, a crashing item writes its worker's pid to `report_fd` (when >= 0). Trivially
/// copyable, so it travels to the workers as its bytes.
struct FailAt {
  int bad = -1;   // the item that fails ...
  int every = 0;  // ... or, when > 0, every item with index % every == bad
  Ending how = Ending::segfault;
  int report_fd = -1;

  [[nodiscard]] bool selected(int i) const { return every > 0 ? i % every == bad : i == bad; }

  long operator()(int i) const {
    if (!selected(i)) return static_cast<long>(i) * i;
    if (report_fd >= 0) {
      const int pid = ::getpid();
      (void)!::write(report_fd, &pid, sizeof pid);
    }
    switch (how) {
      case Ending::segfault: die_by_signal(SIGSEGV);
      case Ending::abort: die_by_signal(SIGABRT);
      case Ending::exit3: std::exit(3);
      case Ending::self_sigkill:
        ::kill(::getpid(), SIGKILL);
        ::pause();
        ::_exit(98);
      case Ending::throws: throw procpool_failures::Boom("bad item " + std::to_string(i));
    }
    return -1;
  }
};

/// Runs small maps (which drive the pool, so replacement workers get registered) until the pool
/// has all its workers again, for at most `limit`; each map must be right. Returns the live pids.
std::vector<pid_t> wait_for_full_pool(procpool::Pool& pool, std::chrono::milliseconds limit = 3000ms) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    REQUIRE(pool.map(square, iota_vector(8)) == squares(8));
    const auto pids = pool.worker_pids();
    if (pids.size() == pool.size() || std::chrono::steady_clock::now() >= deadline) return pids;
    std::this_thread::sleep_for(10ms);
  }
}

/// After a worker (pid `dead`) died: the pool is whole again, without `dead`, every pid alive.
void check_replaced(procpool::Pool& pool, const std::vector<int>& dead) {
  const auto pids = wait_for_full_pool(pool);
  REQUIRE(pids.size() == pool.size());
  for (const int d : dead) {
    CHECK(std::find(pids.begin(), pids.end(), d) == pids.end());
    CHECK(pid_gone(d));  // reaped by the zygote before its exit was reported
  }
  for (const pid_t p : pids) CHECK(::kill(p, 0) == 0);
}

/// Every outcome of a try_map over 0..n-1 with `task`: the selected items failed with an error
/// of type E for which `check(error, index)` holds; every other item has its square.
template <class E, class Check>
void check_outcomes(const std::vector<procpool::Outcome<long>>& outcomes, const FailAt& task, int n, Check&& check) {
  REQUIRE(outcomes.size() == static_cast<std::size_t>(n));
  int failed = 0;
  for (int i = 0; i < n; ++i) {
    const auto& o = outcomes[static_cast<std::size_t>(i)];
    INFO("item " << i);
    if (!task.selected(i)) {
      REQUIRE(o.has_value());
      CHECK(o.value() == square(i));
      CHECK(o.error() == nullptr);
      continue;
    }
    ++failed;
    REQUIRE_FALSE(o.has_value());
    REQUIRE(o.error() != nullptr);
    try {
      std::rethrow_exception(o.error());
    } catch (const E& e) {
      check(e, i);
    } catch (const std::exception& e) {
      FAIL("item " << i << " failed with the wrong exception type: " << e.what());
    }
  }
  CHECK(failed > 0);
}

/// The common shape of the crash tests: map throws ProcessError for the crashing item with the
/// right exit code and words; try_map fails exactly that item; the worker is replaced; the pool
/// stays usable.
void check_crash(Ending how, int exitcode, const std::string& words) {
  constexpr int kItems = 100;
  constexpr int kBad = 41;
  Channel report;
  procpool::Pool pool(two_workers());
  const FailAt task{kBad, 0, how, report.write_fd()};
  const auto inputs = iota_vector(kItems);

  const auto t0 = std::chrono::steady_clock::now();
  try {
    (void)pool.map(task, inputs);
    FAIL("map did not throw");
  } catch (const procpool::ProcessError& e) {
    CHECK(e.item() == std::optional<std::size_t>(kBad));
    CHECK(e.exitcode() == exitcode);
    CHECK_THAT(e.what(), Contains(words));
    CHECK_THAT(e.what(), Contains("item 41"));
  }

  const auto outcomes = pool.try_map(task, inputs);
  check_outcomes<procpool::ProcessError>(outcomes, task, kItems, [&](const procpool::ProcessError& e, int i) {
    CHECK(e.item() == std::optional<std::size_t>(static_cast<std::size_t>(i)));
    CHECK(e.exitcode() == exitcode);
    CHECK_THAT(e.what(), Contains(words));
    CHECK_THAT(e.what(), Contains("item " + std::to_string(i)));
  });
  CHECK(std::chrono::steady_clock::now() - t0 < 8s);  // a hang guard, not a speed claim

  const auto dead = report.drain();
  CHECK(dead.size() == 2);  // one crash per call
  CHECK(pool.map(square, inputs) == squares(kItems));
  check_replaced(pool, dead);
}

}  // namespace

TEST_CASE("a task that throws makes map throw a RemoteError naming the item, the type and the message") {
  procpool::Pool pool(two_workers());
  const auto before = pool.worker_pids();
  const FailAt task{41, 0, Ending::throws, -1};
  try {
    (void)pool.map(task, iota_vector(100));
    FAIL("map did not throw");
  } catch (const procpool::RemoteError& e) {
    CHECK(e.item() == std::optional<std::size_t>(41));
    CHECK(e.type_name() == "procpool_failures::Boom");
    CHECK(e.remote_what() == "bad item 41");
    CHECK_THAT(e.what(), Contains("item 41"));
    CHECK_THAT(e.what(), Contains("procpool_failures::Boom"));
    CHECK_THAT(e.what(), Contains("bad item 41"));
  }
  // An exception is an ordinary outcome: no worker died or was replaced for it.
  CHECK(pool.worker_pids() == before);
  CHECK(pool.map(square, iota_vector(100)) == squares(100));
}

TEST_CASE("when several tasks throw, try_map fails exactly those items and map reports the lowest one") {
  procpool::Pool pool(two_workers());
  const FailAt task{3, 7, Ending::throws, -1};
  const auto outcomes = pool.try_map(task, iota_vector(150));
  check_outcomes<procpool::RemoteError>(outcomes, task, 150, [](const procpool::RemoteError& e, int i) {
    CHECK(e.item() == std::optional<std::size_t>(static_cast<std::size_t>(i)));
    CHECK(e.remote_what() == "bad item " + std::to_string(i));
  });
  try {
    (void)pool.map(task, iota_vector(150));
    FAIL("map did not throw");
  } catch (const procpool::RemoteError& e) {
    CHECK(e.item() == std::optional<std::size_t>(3));
  }
}

TEST_CASE("a task that segfaults fails only its own item with ProcessError -11 and the worker is replaced") {
  check_crash(Ending::segfault, -SIGSEGV, "killed by signal 11 (SIGSEGV)");
}

TEST_CASE("a task that aborts fails only its own item with ProcessError -6 and the worker is replaced") {
  check_crash(Ending::abort, -SIGABRT, "killed by signal 6 (SIGABRT)");
}

TEST_CASE("a task that calls exit(3) fails only its own item with ProcessError 3 saying exited with code 3") {
  check_crash(Ending::exit3, 3, "exited with code 3");
}

TEST_CASE("a task that sends itself SIGKILL fails only its own item with ProcessError -9") {
  check_crash(Ending::self_sigkill, -SIGKILL, "killed by signal 9 (SIGKILL)");
}

TEST_CASE("a worker killed from outside while it runs a long item fails exactly that item with ProcessError -9") {
  constexpr int kItems = 60;
  constexpr int kLong = 23;
  Channel started;  // the long item writes its worker's pid here ...
  Channel go;       // ... then waits for a byte here, which never comes: the test kills it
  procpool::Pool pool(two_workers());
  const auto task = [started_fd = started.write_fd(), go_fd = go.read_fd()](int i) -> long {
    if (i == kLong) {
      const int pid = ::getpid();
      (void)!::write(started_fd, &pid, sizeof pid);
      int byte = 0;
      (void)!::read(go_fd, &byte, 1);
      return -1;  // reached only if the test released it: a wrong value
    }
    return static_cast<long>(i) * i;
  };

  std::vector<procpool::Outcome<long>> outcomes;
  std::exception_ptr map_error;
  std::thread runner([&] {
    try {
      outcomes = pool.try_map(task, iota_vector(kItems));
    } catch (...) {
      map_error = std::current_exception();
    }
  });
  const auto victim = started.receive(5s);
  if (!victim) {
    CHECK(go.send(1));  // release the item so the thread ends, then fail
  } else {
    const auto pids = pool.worker_pids();
    CHECK(std::find(pids.begin(), pids.end(), *victim) != pids.end());
    REQUIRE(::kill(*victim, SIGKILL) == 0);
  }
  runner.join();
  REQUIRE(victim.has_value());
  REQUIRE(map_error == nullptr);

  REQUIRE(outcomes.size() == static_cast<std::size_t>(kItems));
  for (int i = 0; i < kItems; ++i) {
    const auto& o = outcomes[static_cast<std::size_t>(i)];
    INFO("item " << i);
    if (i != kLong) {
      REQUIRE(o.has_value());
      CHECK(o.value() == square(i));
      continue;
    }
    REQUIRE_FALSE(o.has_value());
    try {
      std::rethrow_exception(o.error());
    } catch (const procpool::ProcessError& e) {
      CHECK(e.item() == std::optional<std::size_t>(kLong));
      CHECK(e.exitcode() == -SIGKILL);
      CHECK_THAT(e.what(), Contains("killed by signal 9 (SIGKILL)"));
      CHECK_THAT(e.what(), Contains("item 23"));
    } catch (const std::exception& e) {
      FAIL("the killed item failed with the wrong exception type: " << e.what());
    }
  }
  CHECK(pool.map(square, iota_vector(kItems)) == squares(kItems));
  check_replaced(pool, {*victim});
}

namespace {

/// Waits (at most 5 s) until process `pid` is stopped ('T' in /proc/<pid>/stat).
bool wait_until_stopped(pid_t pid) {
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (std::chrono::steady_clock::now() < deadline) {
    const auto info = procpool_test::process_info("/proc", std::to_string(pid));
    if (info && info->state == 'T') return true;
    std::this_thread::sleep_for(1ms);
  }
  return false;
}

}  // namespace

TEST_CASE("an idle worker killed from outside before it picked up a task leaves the task to one replacement, which runs it") {
  // The worker is stopped, so the task it is handed stays unread (in its shared-memory mailbox,
  // or on its socket); killing it then is a death outside any item: the task must be run again,
  // by a single replacement that does not mistake the dead worker's leftovers for its own work
  // (which would cost it its life, and another replacement). Each worker start writes a byte.
  int starts[2];
  REQUIRE(::pipe2(starts, O_CLOEXEC | O_NONBLOCK) == 0);
  procpool::PoolOptions options = with_workers(1);
  const int start_fd = starts[1];
  options.initializer = [start_fd] { (void)!::write(start_fd, "s", 1); };
  constexpr int kRounds = 3;
  {
    procpool::Pool pool{options};
    REQUIRE(pool.submit(square, 3).get() == 9);
    for (int round = 0; round < kRounds; ++round) {
      INFO("round " << round);
      const auto pids = pool.worker_pids();
      REQUIRE(pids.size() == 1);
      REQUIRE(::kill(pids[0], SIGSTOP) == 0);
      REQUIRE(wait_until_stopped(pids[0]));  // else it could still take the task and die in it
      auto task = pool.submit(square, 40 + round);
      REQUIRE(::kill(pids[0], SIGKILL) == 0);
      CHECK(task.get() == square(40 + round));
      CHECK(pool.submit(square, 5).get() == 25);
      check_replaced(pool, {pids[0]});
    }
  }
  char buf[64];
  const ssize_t n = ::read(starts[0], buf, sizeof buf);
  ::close(starts[0]);
  ::close(starts[1]);
  CHECK(n == 1 + kRounds);  // the first worker and one replacement per round
}

TEST_CASE("when every 10th of 200 items segfaults, exactly those items fail and the pool stays whole") {
  constexpr int kItems = 200;
  Channel report;
  procpool::Pool pool(two_workers());
  const FailAt task{0, 10, Ending::segfault, report.write_fd()};
  const auto t0 = std::chrono::steady_clock::now();
  const auto outcomes = pool.try_map(task, iota_vector(kItems));
  CHECK(std::chrono::steady_clock::now() - t0 < 8s);  // a hang guard
  check_outcomes<procpool::ProcessError>(outcomes, task, kItems, [](const procpool::ProcessError& e, int i) {
    CHECK(e.item() == std::optional<std::size_t>(static_cast<std::size_t>(i)));
    CHECK(e.exitcode() == -SIGSEGV);
  });
  const auto dead = report.drain();
  CHECK(dead.size() == 20);
  CHECK(pool.map(square, iota_vector(kItems)) == squares(kItems));
  check_replaced(pool, dead);

  // map itself reports the lowest-numbered failure.
  try {
    (void)pool.map(task, iota_vector(kItems));
    FAIL("map did not throw");
  } catch (const procpool::ProcessError& e) {
    CHECK(e.item() == std::optional<std::size_t>(0));
  }
}

TEST_CASE("an item that hangs past task_timeout fails with TimeoutError naming it while the others succeed") {
  constexpr int kItems = 40;
  constexpr int kHang = 17;
  Channel report;
  auto options = two_workers();
  options.task_timeout = 200ms;
  procpool::Pool pool(options);
  const auto task = [report_fd = report.write_fd()](int i) -> long {
    if (i == kHang) {
      const int pid = ::getpid();
      (void)!::write(report_fd, &pid, sizeof pid);
      std::this_thread::sleep_for(10s);
      return -1;
    }
    return static_cast<long>(i) * i;
  };

  const auto t0 = std::chrono::steady_clock::now();
  const auto outcomes = pool.try_map(task, iota_vector(kItems));
  CHECK(std::chrono::steady_clock::now() - t0 < 8s);  // a hang guard: the item sleeps 10 s
  REQUIRE(outcomes.size() == static_cast<std::size_t>(kItems));
  for (int i = 0; i < kItems; ++i) {
    const auto& o = outcomes[static_cast<std::size_t>(i)];
    INFO("item " << i);
    if (i != kHang) {
      REQUIRE(o.has_value());
      CHECK(o.value() == square(i));
      continue;
    }
    REQUIRE_FALSE(o.has_value());
    try {
      std::rethrow_exception(o.error());
    } catch (const procpool::TimeoutError& e) {
      CHECK(e.item() == std::optional<std::size_t>(kHang));
      CHECK_THAT(e.what(), Contains("item 17"));
    } catch (const std::exception& e) {
      FAIL("the hanging item failed with the wrong exception type: " << e.what());
    }
  }

  // map throws the TimeoutError itself.
  const auto t1 = std::chrono::steady_clock::now();
  CHECK_THROWS_AS(pool.map(task, iota_vector(kItems)), procpool::TimeoutError);
  CHECK(std::chrono::steady_clock::now() - t1 < 8s);

  CHECK(pool.map(square, iota_vector(kItems)) == squares(kItems));
  check_replaced(pool, report.drain());
}

TEST_CASE("an initializer that throws makes map throw procpool::Error mentioning the initializer, without hanging") {
  const auto t0 = std::chrono::steady_clock::now();
  {
    auto options = two_workers();
    options.initializer = [] { throw std::runtime_error("cannot open the database"); };
    std::optional<procpool::Pool> constructed;
    try {
      constructed.emplace(options);
    } catch (const std::exception& e) {
      FAIL("the constructor threw: " << e.what());
    }
    procpool::Pool& pool = *constructed;
    try {
      (void)pool.map(square, iota_vector(50));
      FAIL("map did not throw");
    } catch (const procpool::Error& e) {
      CHECK_THAT(e.what(), Contains("initializer"));
      CHECK_THAT(e.what(), Contains("cannot open the database"));
    }
    // The pool is broken for good: later calls fail the same way instead of waiting.
    try {
      (void)pool.map(square, iota_vector(5));
      FAIL("map did not throw");
    } catch (const procpool::Error& e) {
      CHECK_THAT(e.what(), Contains("initializer"));
    }
    CHECK_THROWS_AS(pool.submit(square, 3).get(), procpool::Error);
  }  // the destructor must not hang either
  CHECK(std::chrono::steady_clock::now() - t0 < 8s);
  CHECK(procpool_test::zombie_children().empty());
}

TEST_CASE("a pool whose initializer throws at once is still constructed, however fast its workers die") {
  // The first workers may die of their initializer before the constructor has heard that the
  // last one was forked. The contract is the same either way: the constructor returns, and
  // calls fail with procpool::Error naming the initializer.
  auto options = with_workers(4);
  options.initializer = [] { throw std::runtime_error("no licence"); };
  for (int round = 0; round < 20; ++round) {
    INFO("round " << round);
    std::optional<procpool::Pool> pool;
    try {
      pool.emplace(options);
    } catch (const std::exception& e) {
      FAIL("the constructor threw: " << e.what());
    }
    try {
      (void)pool->map(square, iota_vector(8));
      FAIL("map did not throw");
    } catch (const procpool::Error& e) {
      CHECK_THAT(e.what(), Contains("initializer"));
    }
  }
}

TEST_CASE("a crash inside a submitted task fails its Future with a ProcessError that names the exit") {
  procpool::Pool pool(two_workers());
  auto ok = pool.submit(square, 12);
  auto crash = pool.submit(FailAt{5, 0, Ending::exit3, -1}, 5);
  CHECK(ok.get() == 144);
  try {
    (void)crash.get();
    FAIL("get() did not throw");
  } catch (const procpool::ProcessError& e) {
    CHECK(e.exitcode() == 3);
    CHECK_THAT(e.what(), Contains("exited with code 3"));
  }
  CHECK(pool.submit(square, 9).get() == 81);
}
