// Signals change nothing: a storm of interrupting signals, the caller's own children ending (with
// the caller's SIGCHLD handler), and a caller that ignores SIGCHLD. The library installs no
// process-wide signal handler and leaves the caller's signal mask alone.
//
// Each test changes process-wide signal state, so each runs in run_isolated, whose watchdog
// shows and kills a helper that hangs (some also keep a shorter guard of their own).
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <future>
#include <numeric>
#include <optional>
#include <procpool/pool.hpp>
#include <procpool/process.hpp>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

using namespace std::chrono_literals;
using procpool_test::child_pids;
using procpool_test::die_by_signal;
using procpool_test::fail;
using procpool_test::iota_vector;
using procpool_test::run_isolated;
using procpool_test::square;
using procpool_test::squares;
using procpool_test::thread_mask;
using procpool_test::waitpid_all;
using procpool_test::with_chunk;
using procpool_test::with_workers;
using procpool_test::zombie_children;

namespace {

/// Squares, except that items with i % 10 == 5 segfault.
long square_or_segfault(int i) {
  if (i % 10 == 5) die_by_signal(SIGSEGV);
  return square(i);
}

/// Squares, except that item 3 hangs (until the task timeout kills its worker), item 5 segfaults
/// and item 6 aborts.
long square_hang_or_crash(int i) {
  if (i == 3) std::this_thread::sleep_for(20s);
  if (i == 5) die_by_signal(SIGSEGV);
  if (i == 6) die_by_signal(SIGABRT);
  return square(i);
}

/// Each byte of a string, plus one: a transformation whose result has the input's size.
std::string shifted(const std::string& s) {
  std::string out = s;
  for (char& c : out) c = static_cast<char>(c + 1);
  return out;
}

/// A string of `size` bytes that differs with `seed` all along.
std::string patterned(std::size_t size, int seed) {
  std::string s(size, '\0');
  for (std::size_t k = 0; k < size; ++k) s[k] = static_cast<char>('a' + (k * 7 + static_cast<std::size_t>(seed)) % 23);
  return s;
}

std::string what_of(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "a non-std exception";
  }
}

/// The exit code of the ProcessError in `error`, or nullopt if it is something else.
std::optional<int> process_error_exitcode(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const procpool::ProcessError& e) {
    return e.exitcode();
  } catch (...) {
    return std::nullopt;
  }
}

bool is_timeout(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const procpool::TimeoutError&) {
    return true;
  } catch (...) {
    return false;
  }
}

/// The disposition of every signal 1..31: handler, flags and blocked set, in words.
std::vector<std::string> dispositions() {
  std::vector<std::string> out;
  for (int sig = 1; sig <= 31; ++sig) {
    struct sigaction sa {};
    if (::sigaction(sig, nullptr, &sa) != 0) {
      out.push_back(std::to_string(sig) + ": sigaction failed");
      continue;
    }
    std::string d = std::to_string(sig) + ": handler " +
                    std::to_string(reinterpret_cast<std::uintptr_t>(sa.sa_handler)) + ", flags " +
                    std::to_string(sa.sa_flags) + ", mask ";
    for (int s = 1; s < NSIG; ++s) d += sigismember(&sa.sa_mask, s) == 1 ? '1' : '0';
    out.push_back(d);
  }
  return out;
}

/// The first signal whose disposition differs, in words, or nullopt.
std::optional<std::string> first_difference(const std::vector<std::string>& before,
                                            const std::vector<std::string>& after) {
  for (std::size_t k = 0; k < std::min(before.size(), after.size()); ++k)
    if (before[k] != after[k]) return "before: " + before[k] + "; after: " + after[k];
  if (before.size() != after.size()) return std::string("a different number of signals");
  return std::nullopt;
}

// Lock-free atomics: async-signal-safe, and the handlers may run on any thread (the storm
// thread too, before it has blocked the signals), so plain sig_atomic_t increments would race.
std::atomic<int> g_alarms{0};
std::atomic<int> g_usr1{0};
std::atomic<int> g_sigchld{0};
static_assert(std::atomic<int>::is_always_lock_free);

void count_alarm(int) { g_alarms.fetch_add(1, std::memory_order_relaxed); }
void count_usr1(int) { g_usr1.fetch_add(1, std::memory_order_relaxed); }
void count_sigchld(int) { g_sigchld.fetch_add(1, std::memory_order_relaxed); }
void do_nothing(int) {}
void do_nothing_siginfo(int, siginfo_t*, void*) {}

/// Installs `handler` for `sig` without SA_RESTART: every blocking call it interrupts fails with EINTR.
void install_interrupting(int sig, void (*handler)(int)) {
  struct sigaction sa {};
  sa.sa_handler = handler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;
  ::sigaction(sig, &sa, nullptr);
}

/// The storm: SIGALRM every millisecond from an interval timer, and SIGUSR1 sent to the process
/// from a thread of its own in a tight loop. Both are process-directed; the storm thread blocks
/// them, so they land in the test's thread (and any thread the pool's caller has). The storm
/// thread is also the hang guard (SIGALRM is taken by the storm): past the deadline it ends the
/// process with code kStormHang.
constexpr int kStormHang = 90;

class Storm {
 public:
  explicit Storm(std::chrono::seconds limit) {
    install_interrupting(SIGALRM, count_alarm);
    install_interrupting(SIGUSR1, count_usr1);
    const auto deadline = std::chrono::steady_clock::now() + limit;
    thread_ = std::thread([this, deadline] {
      sigset_t both;
      sigemptyset(&both);
      sigaddset(&both, SIGALRM);
      sigaddset(&both, SIGUSR1);
      ::pthread_sigmask(SIG_BLOCK, &both, nullptr);
      for (unsigned k = 1; !stop_.load(std::memory_order_relaxed); ++k) {
        ::kill(::getpid(), SIGUSR1);
        // A breath between signals: tens of thousands a second still interrupt every system
        // call, without starving the pool of the machine's (two, shared) cores.
        std::this_thread::sleep_for(std::chrono::microseconds(20));
        if (k % 64 == 0 && std::chrono::steady_clock::now() > deadline) {
          std::fprintf(stderr, "the storm test hung: ended by the watchdog\n");
          std::fflush(stderr);
          ::_exit(kStormHang);
        }
      }
    });
    const itimerval every_ms{{0, 1000}, {0, 1000}};
    ::setitimer(ITIMER_REAL, &every_ms, nullptr);
  }
  Storm(const Storm&) = delete;
  Storm& operator=(const Storm&) = delete;
  ~Storm() { stop(); }

  void stop() {
    if (!thread_.joinable()) return;
    const itimerval off{};
    ::setitimer(ITIMER_REAL, &off, nullptr);
    stop_ = true;
    thread_.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

/// A pipe created before a pool, so that its workers inherit it: item 0 announces itself on
/// `started` and then waits (at most 10 s) for the test to write to `go`.
struct Handshake {
  int started[2] = {-1, -1};
  int go[2] = {-1, -1};
  Handshake() {
    if (::pipe2(started, O_CLOEXEC) != 0 || ::pipe2(go, O_CLOEXEC) != 0) throw std::runtime_error("pipe2");
  }
  Handshake(const Handshake&) = delete;
  Handshake& operator=(const Handshake&) = delete;
  ~Handshake() {
    for (const int fd : {started[0], started[1], go[0], go[1]}) ::close(fd);
  }
  /// In the test: waits (at most 10 s) until item 0 runs.
  [[nodiscard]] bool wait_started() const {
    pollfd p{started[0], POLLIN, 0};
    int r;
    do {
      r = ::poll(&p, 1, 10000);
    } while (r < 0 && errno == EINTR);
    char byte = 0;
    return r > 0 && ::read(started[0], &byte, 1) == 1;
  }
  void release() const { (void)!::write(go[1], "g", 1); }
};

}  // namespace

TEST_CASE("a storm of signals interrupting every system call changes no result of map, submit, imap or task_timeout") {
  const int status = run_isolated([] {
    Storm storm(30s);
    int code = 0;
    {
      procpool::Pool pool(with_workers(2));

      // Many chunks: 100 000 items in chunks of 100.
      if (pool.map(square, iota_vector(100'000), with_chunk(100)) != squares(100'000))
        return fail(1, "map of 100 000 items in chunks of 100 was wrong");

      // Big payloads both ways: 1 MiB strings in, 1 MiB strings out.
      std::vector<std::string> big;
      for (int k = 0; k < 6; ++k) big.push_back(patterned(std::size_t{1} << 20, k));
      const auto big_out = pool.map(shifted, big, with_chunk(1));
      if (big_out.size() != big.size()) return fail(2, "map of 1 MiB strings returned the wrong number of results");
      for (std::size_t k = 0; k < big.size(); ++k)
        if (big_out[k] != shifted(big[k]))
          return fail(3, "map of 1 MiB strings: result " + std::to_string(k) + " is wrong");

      // Submits, many at once and one by one.
      std::vector<procpool::Future<long>> futures;
      for (int i = 0; i < 200; ++i) futures.push_back(pool.submit(square, i));
      for (int i = 0; i < 200; ++i)
        if (futures[static_cast<std::size_t>(i)].get() != square(i))
          return fail(4, "submit " + std::to_string(i) + " was wrong");
      for (int i = 0; i < 20; ++i)
        if (pool.submit(shifted, big[static_cast<std::size_t>(i) % big.size()]).get() !=
            big_out[static_cast<std::size_t>(i) % big.size()])
          return fail(5, "a submit of a 1 MiB string was wrong");

      // imap, in order.
      long expected = 0;
      int seen = 0;
      for (const long v : pool.imap(square, iota_vector(20'000), with_chunk(50))) {
        expected = square(seen++);
        if (v != expected) return fail(6, "imap result " + std::to_string(seen - 1) + " was wrong");
      }
      if (seen != 20'000) return fail(7, "imap yielded " + std::to_string(seen) + " results");
    }
    {
      // A task timeout and crashes: the deadline is kept and the deaths attributed under the storm.
      procpool::PoolOptions options = with_workers(2);
      options.task_timeout = 300ms;
      procpool::Pool pool(options);
      const auto outcomes = pool.try_map(square_hang_or_crash, iota_vector(12), with_chunk(1));
      for (int i = 0; i < 12 && code == 0; ++i) {
        const auto& o = outcomes[static_cast<std::size_t>(i)];
        const std::string item = "item " + std::to_string(i) + ": ";
        if (i == 3) {
          if (o.has_value() || !is_timeout(o.error())) code = fail(8, item + "not a TimeoutError");
        } else if (i == 5 || i == 6) {
          const int want = i == 5 ? -SIGSEGV : -SIGABRT;
          if (o.has_value() || process_error_exitcode(o.error()) != want)
            code = fail(9, item + "not a ProcessError " + std::to_string(want) +
                               (o.has_value() ? "" : ": " + what_of(o.error())));
        } else if (!o.has_value()) {
          code = fail(10, item + "failed: " + what_of(o.error()));
        } else if (o.value() != square(i)) {
          code = fail(11, item + "wrong value");
        }
      }
      if (code == 0 && pool.map(square, iota_vector(1000)) != squares(1000))
        code = fail(12, "the map after the timeout was wrong");
    }
    storm.stop();
    // Proof that the storm reached the calls above (the work takes over 300 ms, a signal each
    // millisecond, and more): low bounds, since pending signals of one kind coalesce, and under
    // ThreadSanitizer, which delays their delivery, they coalesce much more.
    if (code == 0 && g_alarms < 10)
      code = fail(13, "too few SIGALRMs arrived for a storm: " + std::to_string(g_alarms.load()));
    if (code == 0 && g_usr1 < 100)
      code = fail(14, "too few SIGUSR1s arrived for a storm: " + std::to_string(g_usr1.load()));
    return code;
  });
  INFO(procpool_test::describe_status(status));
  CHECK(status == 0);
}

TEST_CASE("the caller's own children ending during a map, with its SIGCHLD handler counting them, are reaped by the caller alone") {
  const int status = run_isolated([] {
    install_interrupting(SIGCHLD, count_sigchld);

    // Children that end at once and stay zombies until the end: the library must not reap them.
    std::vector<pid_t> early;
    for (int k = 0; k < 5; ++k) {
      const pid_t pid = ::fork();
      if (pid == 0) ::_exit(40 + k);
      if (pid < 0) return fail(1, "fork");
      early.push_back(pid);
    }
    for (int tries = 0; zombie_children().size() < early.size(); ++tries) {
      if (tries > 2000) return fail(2, "the early children did not end");
      std::this_thread::sleep_for(1ms);
    }

    Handshake handshake;
    int code = 0;
    {
      procpool::Pool pool(with_workers(2));
      const auto task = [started = handshake.started[1], go = handshake.go[0]](int i) -> long {
        if (i == 0) {
          (void)!::write(started, "s", 1);
          pollfd p{go, POLLIN, 0};
          ::poll(&p, 1, 10000);
        }
        return square_or_segfault(i);
      };
      auto map = std::async(std::launch::async, [&] { return pool.try_map(task, iota_vector(200), with_chunk(1)); });
      if (!handshake.wait_started()) code = fail(3, "item 0 did not start");

      // While the map certainly runs (item 0 waits for us), our own children come and go.
      int reaped_ok = 0;
      for (int k = 0; k < 20; ++k) {
        const pid_t pid = ::fork();
        if (pid == 0) {
          std::this_thread::sleep_for(std::chrono::milliseconds(k % 3));
          ::_exit(7 + k % 3);
        }
        if (pid < 0) {
          code = fail(4, "fork");
          break;
        }
        int child_status = 0;
        waitpid_all(pid, &child_status);
        if (WIFEXITED(child_status) && WEXITSTATUS(child_status) == 7 + k % 3) ++reaped_ok;
      }
      handshake.release();
      const auto outcomes = map.get();
      if (code == 0 && reaped_ok != 20)
        code = fail(5, "only " + std::to_string(reaped_ok) + " of 20 children were reaped by their own waitpid");
      for (int i = 0; i < 200 && code == 0; ++i) {
        const auto& o = outcomes[static_cast<std::size_t>(i)];
        if (i % 10 == 5) {
          if (o.has_value() || process_error_exitcode(o.error()) != -SIGSEGV)
            code = fail(6, "item " + std::to_string(i) + " is not a ProcessError for SIGSEGV");
        } else if (!o.has_value() || o.value() != square(i)) {
          code = fail(7, "item " + std::to_string(i) + " is wrong" + (o.has_value() ? "" : ": " + what_of(o.error())));
        }
      }
      if (code == 0 && pool.map(square, iota_vector(500)) != squares(500)) code = fail(8, "a map afterwards was wrong");
    }
    // The early children are still ours to reap, with their exit codes.
    for (std::size_t k = 0; k < early.size() && code == 0; ++k) {
      int child_status = 0;
      const pid_t r = ::waitpid(early[k], &child_status, WNOHANG);
      if (r != early[k])
        code = fail(
            9, "early child " + std::to_string(k) + " was reaped by someone else (waitpid: " + std::to_string(r) + ")");
      else if (!WIFEXITED(child_status) || WEXITSTATUS(child_status) != 40 + static_cast<int>(k))
        code = fail(10, "early child " + std::to_string(k) + " has the wrong status");
    }
    if (code == 0 && g_sigchld == 0) code = fail(11, "the test's SIGCHLD handler never ran");
    if (code == 0 && !child_pids().empty()) code = fail(12, "a child remains");
    return code;
  });
  INFO(procpool_test::describe_status(status));
  CHECK(status == 0);
}

TEST_CASE("pools install no signal handler: every disposition and the thread's mask are the same before, during and after, crashes and timeouts included") {
  const int status = run_isolated([] {
    // Dispositions of every kind, so that a library resetting one "to the default" is noticed too.
    struct sigaction sa {};
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = SIG_IGN;
    ::sigaction(SIGPIPE, &sa, nullptr);
    sa.sa_handler = do_nothing;
    sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    ::sigaction(SIGCHLD, &sa, nullptr);
    sa.sa_flags = 0;
    sigaddset(&sa.sa_mask, SIGINT);
    ::sigaction(SIGTERM, &sa, nullptr);
    struct sigaction info {};
    info.sa_sigaction = do_nothing_siginfo;
    info.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&info.sa_mask);
    ::sigaction(SIGUSR2, &info, nullptr);
    sigset_t blocked;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGUSR1);
    sigaddset(&blocked, SIGWINCH);
    ::pthread_sigmask(SIG_BLOCK, &blocked, nullptr);

    const std::vector<std::string> before = dispositions();
    const std::string mask_before = thread_mask();
    {
      procpool::PoolOptions options = with_workers(2);
      options.task_timeout = 300ms;
      procpool::Pool pool(options);
      if (const auto d = first_difference(before, dispositions())) return fail(1, "after construction: " + *d);
      if (thread_mask() != mask_before) return fail(2, "the mask changed at construction");

      const auto outcomes = pool.try_map(square_hang_or_crash, iota_vector(10), with_chunk(1));
      if (outcomes[3].has_value() || !is_timeout(outcomes[3].error())) return fail(3, "item 3 did not time out");
      if (outcomes[5].has_value() || outcomes[6].has_value()) return fail(4, "items 5 and 6 did not fail");
      auto crash = pool.submit(square_or_segfault, 15);
      try {
        (void)crash.get();
        return fail(5, "the crashing submit returned");
      } catch (const procpool::ProcessError&) {
      }
      long sum = 0;
      for (const long v : pool.imap(square, iota_vector(1000))) sum += v;
      if (sum != 332'833'500L) return fail(6, "imap was wrong");

      if (const auto d = first_difference(before, dispositions())) return fail(7, "after crashes and timeouts: " + *d);
      if (thread_mask() != mask_before) return fail(8, "the mask changed after crashes and timeouts");
      pool.terminate();
    }
    {
      procpool::Pool pool(with_workers(1));
      if (pool.map(square_or_segfault, iota_vector(5)) != squares(5))
        return fail(9, "a gracefully destroyed pool's map was wrong");
    }
    if (const auto d = first_difference(before, dispositions())) return fail(10, "after destruction: " + *d);
    if (thread_mask() != mask_before) return fail(11, "the mask changed after destruction");
    return 0;
  });
  INFO(procpool_test::describe_status(status));
  CHECK(status == 0);
}

// With SIGCHLD ignored, the kernel reaps a caller's children itself as they end: waitpid on one
// then fails with ECHILD, and its exit status is lost. procpool's Process must still end join()
// and get() (the result travels through a pipe, not through the exit status); its exit code is
// unknowable. Pool workers are children of the zygote, which inherits the ignored SIGCHLD.
TEST_CASE("a caller that ignores SIGCHLD can still start, join and get a Process, whose result arrives and whose crash is an error") {
  const int status = run_isolated([] {
    ::alarm(10);
    ::signal(SIGCHLD, SIG_IGN);
    procpool::Process ok{[] { return 42; }};
    ok.start();
    if (ok.get() != 42) return fail(1, "the result was wrong");
    if (ok.is_alive()) return fail(2, "is_alive() after get()");

    procpool::Process crash{[]() -> int { die_by_signal(SIGSEGV); }};
    crash.start();
    try {
      (void)crash.get();
      return fail(3, "get() of a crashed child returned");
    } catch (const procpool::ProcessError&) {
    }
    if (crash.is_alive()) return fail(4, "is_alive() after a crash");

    procpool::Process<void> joined{[] { std::this_thread::sleep_for(20ms); }};
    joined.start();
    joined.join();
    if (joined.is_alive()) return fail(5, "is_alive() after join()");
    struct sigaction after {};
    ::sigaction(SIGCHLD, nullptr, &after);
    if (after.sa_handler != SIG_IGN) return fail(6, "SIGCHLD is no longer ignored");
    if (!child_pids().empty()) return fail(7, "a child remains");
    return 0;
  });
  INFO(procpool_test::describe_status(status));
  CHECK(status == 0);
}

TEST_CASE("a caller that ignores SIGCHLD can still use a Pool, whose crashed items are ProcessErrors naming the signal") {
  const int status = run_isolated([] {
    ::alarm(10);
    ::signal(SIGCHLD, SIG_IGN);
    {
      procpool::Pool pool(with_workers(2));
      if (pool.map(square, iota_vector(1000)) != squares(1000)) return fail(1, "a map was wrong");
      const auto outcomes = pool.try_map(square_or_segfault, iota_vector(40), with_chunk(1));
      for (int i = 0; i < 40; ++i) {
        const auto& o = outcomes[static_cast<std::size_t>(i)];
        const std::string item = "item " + std::to_string(i) + ": ";
        if (i % 10 != 5) {
          if (!o.has_value() || o.value() != square(i))
            return fail(2, item + "wrong" + (o.has_value() ? "" : ": " + what_of(o.error())));
          continue;
        }
        if (o.has_value()) return fail(3, item + "the crash has a value");
        const auto code = process_error_exitcode(o.error());
        if (!code) return fail(4, item + "not a ProcessError: " + what_of(o.error()));
        if (*code != -SIGSEGV)
          return fail(5, item + "exitcode " + std::to_string(*code) + " rather than -11: " + what_of(o.error()));
      }
      if (pool.map(square, iota_vector(1000)) != squares(1000)) return fail(6, "a map after the crashes was wrong");
    }
    struct sigaction after {};
    ::sigaction(SIGCHLD, nullptr, &after);
    if (after.sa_handler != SIG_IGN) return fail(7, "SIGCHLD is no longer ignored");
    if (!child_pids().empty()) return fail(8, "a child remains");
    return 0;
  });
  INFO(procpool_test::describe_status(status));
  CHECK(status == 0);
}
