// Soak: many tasks through one Pool while about 1% of them fail in every way a task can fail.
// Every other item must be right, every failing item reported with its true cause, nothing may
// hang, and nothing may leak. CI runs a reduced size; the full size (100k tasks) runs with
//   PROCPOOL_SOAK_TASKS=100000 ctest --test-dir build -L soak --output-on-failure
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <procpool/procpool.hpp>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

namespace {

enum class Fault { none, segfault, abort_call, exit_call, exception, timeout, external_kill };

/// Which fault item i has: about one item in a hundred, the kinds spread evenly, the same every run.
Fault fault_of(std::uint64_t i) {
  std::uint64_t h = i * 0x9E3779B97F4A7C15ull;
  h ^= h >> 29;
  h *= 0xBF58476D1CE4E5B9ull;
  h ^= h >> 32;
  if (h % 100 != 0) return Fault::none;
  return static_cast<Fault>(1 + (h / 100) % 6);
}

// Under the sanitizers std::exit does slow work of its own (LeakSanitizer scans the whole
// process; ThreadSanitizer extends atexit processing): the timeout must stay far above how long
// any fault that is not a hang takes to end.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define PROCPOOL_SOAK_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define PROCPOOL_SOAK_SANITIZED 1
#endif
#endif
#ifdef PROCPOOL_SOAK_SANITIZED
constexpr std::chrono::milliseconds kTaskTimeout{10'000};
#else
constexpr std::chrono::milliseconds kTaskTimeout{1'000};
#endif

/// Stops and joins a thread however the scope is left (a failed REQUIRE included).
class Joining {
 public:
  Joining(std::atomic<bool>& stop, std::thread& thread) : stop_(stop), thread_(thread) {}
  Joining(const Joining&) = delete;
  Joining& operator=(const Joining&) = delete;
  ~Joining() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::atomic<bool>& stop_;
  std::thread& thread_;
};

std::size_t soak_size() {
  if (const char* env = std::getenv("PROCPOOL_SOAK_TASKS")) return static_cast<std::size_t>(std::stoull(env));
  return 3000;
}

// A pipe the workers inherit (it exists before the pool): a task that wants to be killed "from
// outside" writes its pid here, and a killer thread in the test sends it SIGKILL, as the OOM
// killer would.
int g_kill_requests[2] = {-1, -1};

std::int64_t task(std::int64_t i) {
  switch (fault_of(static_cast<std::uint64_t>(i))) {
    case Fault::none: return i * i + 7;
    case Fault::segfault:
      ::signal(SIGSEGV, SIG_DFL);  // a sanitizer's handler would turn the signal into an exit code
      ::raise(SIGSEGV);
      break;
    case Fault::abort_call: ::signal(SIGABRT, SIG_DFL); std::abort();
    case Fault::exit_call: std::exit(3);
    case Fault::exception: throw std::invalid_argument("item " + std::to_string(i) + " is invalid");
    case Fault::timeout: std::this_thread::sleep_for(std::chrono::seconds(30)); break;
    case Fault::external_kill: {
      const pid_t self = ::getpid();
      (void)!::write(g_kill_requests[1], &self, sizeof self);
      std::this_thread::sleep_for(std::chrono::seconds(30));
      break;
    }
  }
  return -1;
}

}  // namespace

TEST_CASE("A soak of tasks with 1% random faults reports every fault with its cause and every other result right") {
  const std::size_t n = soak_size();
  REQUIRE(::pipe2(g_kill_requests, O_CLOEXEC) == 0);
  const int fds_before = procpool_test::open_fd_count();

  std::vector<std::int64_t> inputs(n);
  for (std::size_t i = 0; i < n; ++i) inputs[i] = static_cast<std::int64_t>(i);
  std::map<Fault, int> seen;
  {
    procpool::PoolOptions options;
    options.workers = 2;
    options.task_timeout = kTaskTimeout;
    procpool::Pool pool{options};
    // The killer thread starts after the pool: the zygote is a fork of this process, and under
    // AddressSanitizer (whose allocator, unlike glibc's malloc, has no fork handlers in GCC 12)
    // a fork while another thread is starting can leave an allocator lock held in every worker,
    // where LeakSanitizer's check at std::exit then waits for it forever.
    std::atomic<bool> done{false};
    std::thread killer([&] {
      for (;;) {
        pollfd p{g_kill_requests[0], POLLIN, 0};
        if (::poll(&p, 1, 50) <= 0) {
          if (done) return;
          continue;
        }
        pid_t victim = 0;
        if (::read(g_kill_requests[0], &victim, sizeof victim) == sizeof victim) ::kill(victim, SIGKILL);
      }
    });
    Joining stop_killer(done, killer);
    const auto outcomes = pool.try_map(task, inputs);
    REQUIRE(outcomes.size() == n);
    for (std::size_t i = 0; i < n; ++i) {
      const Fault fault = fault_of(i);
      INFO("item " << i << " fault " << static_cast<int>(fault));
      if (fault == Fault::none) {
        REQUIRE(outcomes[i].has_value());
        REQUIRE(outcomes[i].value() == static_cast<std::int64_t>(i * i + 7));
        continue;
      }
      REQUIRE_FALSE(outcomes[i].has_value());
      ++seen[fault];
      try {
        std::rethrow_exception(outcomes[i].error());
      } catch (const procpool::RemoteError& e) {
        REQUIRE(fault == Fault::exception);
        REQUIRE(e.type_name() == "std::invalid_argument");
        REQUIRE(e.item() == i);
      } catch (const procpool::TimeoutError& e) {
        REQUIRE(fault == Fault::timeout);
        REQUIRE(e.item() == i);
      } catch (const procpool::ProcessError& e) {
        REQUIRE(e.item() == i);
        const std::string what = e.what();
        REQUIRE(what.find("item " + std::to_string(i)) != std::string::npos);
        switch (fault) {
          case Fault::segfault: REQUIRE(e.exitcode() == -SIGSEGV); break;
          case Fault::abort_call: REQUIRE(e.exitcode() == -SIGABRT); break;
          case Fault::exit_call: REQUIRE(e.exitcode() == 3); break;
          case Fault::external_kill: REQUIRE(e.exitcode() == -SIGKILL); break;
          default: FAIL("a ProcessError for an item whose fault is not a death: " << what);
        }
      }
    }
    // The pool is still whole afterwards.
    REQUIRE(pool.map([](int x) { return x + 1; }, std::vector{1, 2, 3}) == std::vector{2, 3, 4});
  }  // the killer thread is stopped and joined, then the pool destroyed
  ::close(g_kill_requests[0]);
  ::close(g_kill_requests[1]);

  // Every kind of fault occurred (at the CI size too), and nothing is left behind.
  for (const Fault f :
       {Fault::segfault, Fault::abort_call, Fault::exit_call, Fault::exception, Fault::timeout, Fault::external_kill})
    CHECK(seen[f] > 0);
  CHECK(procpool_test::child_pids().empty());
  CHECK(procpool_test::open_fd_count() == fds_before - 2);
}
