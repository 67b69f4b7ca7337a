// procpool::Pool at the edge of the system's resources: the process limit (RLIMIT_NPROC), the
// open-file limit (RLIMIT_NOFILE) and the address-space limit (RLIMIT_AS), reached at
// construction or while the pool runs. Each ends in a clear procpool::Error (or a clear per-item
// outcome), never in a hang or a crash, and the pool recovers once the resource is back.
//
// Every test changes process-wide state (uid, rlimits), so each runs in run_isolated, whose
// watchdog shows and kills a helper that hangs.
#include <grp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <new>
#include <numeric>
#include <optional>
#include <procpool/pool.hpp>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

using namespace std::chrono_literals;
using procpool_test::child_pids;
using procpool_test::contains;
using procpool_test::fail;
using procpool_test::fill_descriptors_below;
using procpool_test::iota_vector;
using procpool_test::open_fd_count;
using procpool_test::open_fds;
using procpool_test::run_isolated;
using procpool_test::square;
using procpool_test::squares;
using procpool_test::ubsan_vptr_checks_present;
using procpool_test::waitpid_all;
using procpool_test::with_chunk;
using procpool_test::with_workers;

#if defined(__SANITIZE_ADDRESS__)
#define PROCPOOL_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PROCPOOL_TEST_ASAN 1
#endif
#endif
#ifndef PROCPOOL_TEST_ASAN
#define PROCPOOL_TEST_ASAN 0
#endif

namespace {

std::string lowercase(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

/// In a worker: die by SIGSEGV with the default action and without a core file (the handlers of
/// the test framework or a sanitizer are inherited and would run first otherwise).
[[noreturn]] void segfault_now() {
  const rlimit no_core{0, 0};
  ::setrlimit(RLIMIT_CORE, &no_core);
  ::signal(SIGSEGV, SIG_DFL);
  ::raise(SIGSEGV);
  ::_exit(99);
}

/// Item 0 crashes its worker (so a replacement is needed); every other item is squared.
long square_but_crash_at_zero(int i) {
  if (i == 0) segfault_now();
  return square(i);
}

/// A uid no other process uses while this one lives (pids are unique), so that RLIMIT_NPROC,
/// which counts every task of the real uid on the machine, counts only this test's processes,
/// whatever else runs as nobody meanwhile (other tests, other builds).
uid_t private_uid() { return static_cast<uid_t>(300000 + ::getpid()); }

/// Root ignores RLIMIT_NPROC: becomes `uid` (and gid `uid`, no supplementary groups). Returns 0 or
/// the errno of the step that failed.
int become(uid_t uid) {
  if (::setgroups(0, nullptr) != 0 || ::setgid(static_cast<gid_t>(uid)) != 0 || ::setuid(uid) != 0) return errno;
  ::prctl(PR_SET_DUMPABLE, 1);  // keep /proc/self readable (open_fds) after the uid change
  return 0;
}

/// The tasks (threads included, zombies included) whose real uid is `uid`: what RLIMIT_NPROC counts.
long tasks_of_uid(uid_t uid) {
  long tasks = 0;
  DIR* dir = ::opendir("/proc");
  if (dir == nullptr) return -1;
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
    std::ifstream in(std::string("/proc/") + entry->d_name + "/status");
    bool ours = false;
    long threads = 1;
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("Uid:", 0) == 0) ours = std::strtoul(line.c_str() + 4, nullptr, 10) == uid;
      if (line.rfind("Threads:", 0) == 0) threads = std::strtol(line.c_str() + 8, nullptr, 10);
    }
    if (ours) tasks += threads;
  }
  ::closedir(dir);
  return tasks;
}

bool set_nproc(rlim_t soft, rlim_t hard) {
  const rlimit r{soft, hard};
  return ::setrlimit(RLIMIT_NPROC, &r) == 0;
}

/// Forks a child that only waits (at most 20 s) until it is killed: it holds one process slot of
/// the caller's uid. It closes every inherited descriptor first, so it keeps none of the pool's
/// sockets open (which would keep end-of-file from the zygote and the workers).
pid_t fork_sleeper() {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close_range(3, ~0U, 0);
    ::alarm(20);
    ::pause();
    ::_exit(0);
  }
  return pid;
}

void kill_and_reap(pid_t pid) {
  ::kill(pid, SIGKILL);
  int status = 0;
  waitpid_all(pid, &status);
}

/// Runs small maps until one succeeds with every worker in place again (vacant workers are
/// retried every 100 ms, and only while some call drives the pool). True if that happened in time.
bool recovers(procpool::Pool& pool, std::size_t workers, std::string& last_error) {
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (std::chrono::steady_clock::now() < deadline) {
    const auto outcomes = pool.try_map(square, iota_vector(20));
    bool all_ok = true;
    for (std::size_t i = 0; i < outcomes.size(); ++i) {
      if (!outcomes[i].has_value()) {
        all_ok = false;
        try {
          std::rethrow_exception(outcomes[i].error());
        } catch (const std::exception& e) {
          last_error = e.what();
        }
      } else if (outcomes[i].value() != square(static_cast<int>(i))) {
        all_ok = false;
        last_error = "a wrong value";
      }
    }
    if (all_ok && pool.worker_pids().size() == workers) return true;
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

/// Checks the outcome of item 0 of square_but_crash_at_zero: a ProcessError for SIGSEGV.
std::optional<std::string> crash_outcome_problem(const procpool::Outcome<long>& o) {
  if (o.has_value()) return "item 0 (which crashes) has a value";
  try {
    std::rethrow_exception(o.error());
  } catch (const procpool::ProcessError& e) {
    if (e.exitcode() != -SIGSEGV)
      return "item 0 failed with exitcode " + std::to_string(e.exitcode()) + ": " + e.what();
    return std::nullopt;
  } catch (const std::exception& e) {
    return std::string("item 0 failed with something other than a ProcessError: ") + e.what();
  }
}

/// Checks the other items: with a surviving worker they all succeed; with none, each fails with
/// procpool::Error (not ProcessError or RemoteError) whose message contains every one of `words`.
std::optional<std::string> other_outcomes_problem(const std::vector<procpool::Outcome<long>>& outcomes,
                                                  bool must_succeed, const std::vector<std::string>& words) {
  for (std::size_t i = 1; i < outcomes.size(); ++i) {
    const auto& o = outcomes[i];
    const std::string item = "item " + std::to_string(i) + ": ";
    if (must_succeed) {
      if (!o.has_value()) {
        try {
          std::rethrow_exception(o.error());
        } catch (const std::exception& e) {
          return item + "failed although a worker survived: " + e.what();
        }
      }
      if (o.value() != square(static_cast<int>(i))) return item + "wrong value";
      continue;
    }
    if (o.has_value()) return item + "succeeded although no worker could run it";
    try {
      std::rethrow_exception(o.error());
    } catch (const procpool::ProcessError& e) {
      return item + "failed with a ProcessError: " + e.what();
    } catch (const procpool::RemoteError& e) {
      return item + "failed with a RemoteError: " + e.what();
    } catch (const procpool::Error& e) {
      for (const std::string& w : words)
        if (!contains(e.what(), w)) return item + "its message does not contain '" + w + "': " + e.what();
    } catch (const std::exception& e) {
      return item + "failed with a non-procpool exception: " + e.what();
    }
  }
  return std::nullopt;
}

// ---- RLIMIT_NPROC ---------------------------------------------------------------------------

/// Constructs a two-worker pool as a fresh uid whose RLIMIT_NPROC allows `extra_processes` more
/// processes than it has; the construction must throw procpool::Error naming RLIMIT_NPROC (and,
/// if given, containing `also`), and leave no child and no descriptor behind.
int construction_under_nproc(long extra_processes, const std::string& also) {
  const uid_t uid = private_uid();
  if (const int err = become(uid); err != 0) return fail(1, std::string("cannot change uid: ") + std::strerror(err));
  const long tasks = tasks_of_uid(uid);
  if (tasks < 1) return fail(2, "cannot count the tasks of the uid");
  const auto limit = static_cast<rlim_t>(tasks + extra_processes);
  if (!set_nproc(limit, limit)) return fail(3, std::string("setrlimit(RLIMIT_NPROC): ") + std::strerror(errno));
  const int fds_before = open_fd_count();
  std::string message;
  try {
    procpool::Pool pool(with_workers(2));
    return fail(4, "the pool was constructed although its workers cannot be forked");
  } catch (const procpool::Error& e) {
    message = e.what();
  }
  if (!contains(message, "RLIMIT_NPROC")) return fail(5, "the message does not name RLIMIT_NPROC: " + message);
  if (!also.empty() && !contains(message, also)) return fail(6, "the message does not say '" + also + "': " + message);
  if (!child_pids().empty()) return fail(7, "a child remains");
  if (open_fd_count() != fds_before) return fail(8, "a descriptor leaked");
  return 0;
}

/// A pool built with exactly the processes it needs under RLIMIT_NPROC; then a sleeper of the same
/// uid takes the slot a crashed worker frees, so its replacement cannot be forked. The map still
/// completes; once the sleeper is gone the pool is whole again.
int respawn_under_nproc(std::size_t workers) {
  const uid_t uid = private_uid();
  if (const int err = become(uid); err != 0) return fail(1, std::string("cannot change uid: ") + std::strerror(err));
  const long tasks = tasks_of_uid(uid);
  if (tasks < 1) return fail(2, "cannot count the tasks of the uid");
  const auto exact = static_cast<rlim_t>(tasks) + 1 + workers;  // the zygote and the workers
  const rlim_t hard = exact + 8;
  if (!set_nproc(exact, hard)) return fail(3, std::string("setrlimit(RLIMIT_NPROC): ") + std::strerror(errno));

  procpool::Pool pool(with_workers(workers));
  if (pool.map(square, iota_vector(16)) != squares(16)) return fail(4, "the first map was wrong");

  // One more slot for the sleeper, then the limit goes back: the uid is now one over it.
  if (!set_nproc(exact + 1, hard)) return fail(5, "setrlimit(RLIMIT_NPROC) for the sleeper");
  const pid_t sleeper = fork_sleeper();
  if (sleeper < 0) return fail(6, std::string("cannot fork the sleeper: ") + std::strerror(errno));
  if (!set_nproc(exact, hard)) {
    kill_and_reap(sleeper);
    return fail(7, "setrlimit(RLIMIT_NPROC) back");
  }
  const long at_limit = tasks_of_uid(uid);

  const auto outcomes = pool.try_map(square_but_crash_at_zero, iota_vector(40), with_chunk(1));
  // The replacement could not have been forked, and is still missing.
  const std::size_t live_during = pool.worker_pids().size();
  kill_and_reap(sleeper);

  if (at_limit != static_cast<long>(exact) + 1)
    return fail(8, "expected " + std::to_string(exact + 1) + " tasks of the uid, counted " + std::to_string(at_limit));
  if (outcomes.size() != 40) return fail(9, "try_map returned " + std::to_string(outcomes.size()) + " outcomes");
  if (const auto problem = crash_outcome_problem(outcomes[0])) return fail(10, *problem);
  if (const auto problem =
          other_outcomes_problem(outcomes, workers > 1, {"no worker could be started", "RLIMIT_NPROC"}))
    return fail(11, *problem);
  if (live_during != workers - 1)
    return fail(12, std::to_string(live_during) + " workers alive while the process limit was reached");

  std::string last_error;
  if (!recovers(pool, workers, last_error))
    return fail(13, "the pool did not recover once the process limit allowed it; last error: " + last_error);
  return 0;
}

// ---- RLIMIT_NOFILE --------------------------------------------------------------------------

/// How far RLIMIT_NOFILE is lowered while a worker crashes.
enum class NofileLimit {
  at_lowest_free,  // to the lowest descriptor number the pool holds: no new descriptor can open
  below_pool_fds,  // to 3, below the descriptors the pool already holds (poll() refuses a set
                   // larger than the limit, even of open descriptors)
};

/// A pool whose parent cannot receive a replacement worker's socket: RLIMIT_NOFILE is lowered,
/// after construction, as `how` says, and every descriptor below the limit is taken, so no new
/// descriptor can be opened (not even in the slots a dead worker frees).
int respawn_under_nofile(std::size_t workers, NofileLimit how) {
  const std::vector<int> fds = open_fds();
  const int first_free = *std::max_element(fds.begin(), fds.end()) + 1;
  const int limit = how == NofileLimit::at_lowest_free ? first_free : 3;
  const std::vector<int> fillers = fill_descriptors_below(limit);
  int code = 0;
  {
    procpool::Pool pool(with_workers(workers));
    if (pool.map(square, iota_vector(16)) != squares(16)) return fail(1, "the first map was wrong");
    const int fds_with_pool = open_fd_count();

    rlimit old{};
    ::getrlimit(RLIMIT_NOFILE, &old);
    const rlimit tight{static_cast<rlim_t>(limit), old.rlim_max};
    if (::setrlimit(RLIMIT_NOFILE, &tight) != 0) return fail(2, "setrlimit(RLIMIT_NOFILE)");
    std::vector<procpool::Outcome<long>> outcomes;
    std::size_t live_during = 0;
    try {
      outcomes = pool.try_map(square_but_crash_at_zero, iota_vector(40), with_chunk(1));
      live_during = pool.worker_pids().size();
    } catch (const std::exception& e) {
      ::setrlimit(RLIMIT_NOFILE, &old);
      return fail(3, std::string("try_map threw: ") + e.what());
    }
    ::setrlimit(RLIMIT_NOFILE, &old);

    if (outcomes.size() != 40) return fail(4, "try_map returned " + std::to_string(outcomes.size()) + " outcomes");
    if (const auto problem = crash_outcome_problem(outcomes[0])) return fail(5, *problem);
    if (const auto problem =
            other_outcomes_problem(outcomes, workers > 1, {"no worker could be started", "RLIMIT_NOFILE"}))
      return fail(6, *problem);
    if (live_during != workers - 1)
      return fail(7, std::to_string(live_during) + " workers alive while no descriptor could be opened");

    std::string last_error;
    if (!recovers(pool, workers, last_error))
      return fail(8, "the pool did not recover once descriptors were free again; last error: " + last_error);
    if (open_fd_count() != fds_with_pool)
      code = fail(9, "the pool holds " + std::to_string(open_fd_count()) + " descriptors after recovering, " +
                         std::to_string(fds_with_pool) + " before");
  }
  for (const int fd : fillers) ::close(fd);
  if (code == 0 && !child_pids().empty()) code = fail(10, "a child remains after the pool was destroyed");
  return code;
}

/// Runs respawn_under_nofile in an isolated helper process and checks that it passed.
void check_respawn_under_nofile(std::size_t workers, NofileLimit how) {
  if (ubsan_vptr_checks_present()) {
    WARN("not run under -fsanitize=undefined: its vptr check needs free descriptors");
    return;
  }
  const int status = run_isolated([=] { return respawn_under_nofile(workers, how); });
  INFO(procpool_test::describe_status(status));
  CHECK(status == 0);
}

// ---- RLIMIT_AS ------------------------------------------------------------------------------

constexpr std::size_t kHugeResult = std::size_t{512} << 20;

/// Item 2 returns a 512 MiB string; the others a short one.
std::string huge_at_two(int i) {
  if (i == 2) return std::string(kHugeResult, 'h');
  return std::to_string(i);
}

/// The address space this process uses now, in bytes (VmSize), or 0 if unknown.
std::size_t address_space_in_use() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmSize:", 0) == 0) return std::strtoull(line.c_str() + 7, nullptr, 10) * 1024;
  return 0;
}

/// True, after saying why, where RLIMIT_AS cannot be tested: AddressSanitizer's shadow memory
/// reserves far more address space than any useful limit.
bool address_space_limit_untestable() {
  if (!PROCPOOL_TEST_ASAN) return false;
  WARN("not run under AddressSanitizer: its shadow memory reserves far more address space than any useful RLIMIT_AS");
  return true;
}

/// In an isolated body: lowers RLIMIT_AS to the address space in use plus `room` bytes. Returns
/// the limit it replaced, or nullopt (the reason on stderr) if it could not.
std::optional<rlimit> limit_address_space_to_use_plus(std::size_t room) {
  const std::size_t in_use = address_space_in_use();
  if (in_use == 0) {
    std::fprintf(stderr, "cannot read VmSize from /proc/self/status\n");
    return std::nullopt;
  }
  rlimit old{};
  ::getrlimit(RLIMIT_AS, &old);
  const rlimit tight{static_cast<rlim_t>(in_use + room), old.rlim_max};
  if (::setrlimit(RLIMIT_AS, &tight) != 0) {
    std::perror("setrlimit(RLIMIT_AS)");
    return std::nullopt;
  }
  return old;
}

}  // namespace

TEST_CASE("a pool constructed when RLIMIT_NPROC allows no fork at all throws procpool::Error naming RLIMIT_NPROC and leaves no child") {
  const int status = run_isolated([] { return construction_under_nproc(0, ""); });
  INFO(procpool_test::describe_status(status));
  CHECK(status == 0);
}

TEST_CASE("a pool constructed when RLIMIT_NPROC lets the zygote fork but no worker throws procpool::Error naming RLIMIT_NPROC and leaves no child") {
  const int status = run_isolated([] { return construction_under_nproc(1, "could not create a worker"); });
  INFO(procpool_test::describe_status(status));
  CHECK(status == 0);
}

TEST_CASE("when RLIMIT_NPROC keeps a crashed worker from being replaced the other worker finishes the map and the pool recovers later") {
  const int status = run_isolated([] { return respawn_under_nproc(2); });
  INFO(procpool_test::describe_status(status));
  CHECK(status == 0);
}

TEST_CASE("when RLIMIT_NPROC keeps the only worker from being replaced the remaining items fail with procpool::Error naming the limit, and the pool recovers later") {
  const int status = run_isolated([] { return respawn_under_nproc(1); });
  INFO(procpool_test::describe_status(status));
  CHECK(status == 0);
}

TEST_CASE("a pool constructed with too few free descriptors throws procpool::Error saying 'Too many open files' and leaves no child and no descriptor") {
  if (ubsan_vptr_checks_present()) {
    // UBSan's vptr check probes memory through a pipe of its own; with no descriptor left it
    // reports a false "invalid vptr" for every polymorphic object touched (e.g. the exception).
    WARN("not run under -fsanitize=undefined: its vptr check needs free descriptors");
    return;
  }
  const int status = run_isolated([] {
    // Every number of free descriptors from none to plenty: construction fails at a different step
    // each time (the eventfd, the control socket, a worker's socket in the zygote, receiving it).
    bool constructed_once = false;
    for (int free_fds = 0; free_fds <= 10; ++free_fds) {
      const std::string at = " (with " + std::to_string(free_fds) + " free descriptors)";
      const std::vector<int> fds = open_fds();
      const int fds_before = static_cast<int>(fds.size());
      const int first_free = *std::max_element(fds.begin(), fds.end()) + 1;
      const std::vector<int> fillers = fill_descriptors_below(first_free);
      rlimit old{};
      ::getrlimit(RLIMIT_NOFILE, &old);
      const rlimit tight{static_cast<rlim_t>(first_free + free_fds), old.rlim_max};
      if (::setrlimit(RLIMIT_NOFILE, &tight) != 0) return fail(1, "setrlimit(RLIMIT_NOFILE)");
      std::string message;
      bool map_ok = false;
      try {
        procpool::Pool pool(with_workers(2));
        map_ok = pool.map(square, iota_vector(100)) == squares(100);
        constructed_once = true;
      } catch (const procpool::Error& e) {
        message = e.what();
      } catch (const std::exception& e) {
        message = std::string("not a procpool::Error: ") + e.what();
      }
      ::setrlimit(RLIMIT_NOFILE, &old);
      for (const int fd : fillers) ::close(fd);
      if (free_fds == 0 && message.empty()) return fail(2, "the pool was constructed without a free descriptor");
      // strerror(EMFILE) is "Too many open files"; the message for descriptors lost in transit
      // from the zygote says it in lower case, naming RLIMIT_NOFILE.
      if (!message.empty() && !contains(lowercase(message), "too many open files"))
        return fail(3, "the message lacks 'Too many open files'" + at + ": " + message);
      if (message.empty() && !map_ok) return fail(4, "a map on the pool constructed" + at + " was wrong");
      if (!child_pids().empty()) return fail(5, "a child remains" + at);
      if (open_fd_count() != fds_before) return fail(6, "a descriptor leaked" + at);
    }
    if (!constructed_once) return fail(7, "no pool could be constructed even with 10 free descriptors");
    return 0;
  });
  INFO(procpool_test::describe_status(status));
  CHECK(status == 0);
}

TEST_CASE("when RLIMIT_NOFILE keeps a crashed worker's replacement from being received the other worker finishes the map and the pool recovers later") {
  check_respawn_under_nofile(2, NofileLimit::at_lowest_free);
}

TEST_CASE("when RLIMIT_NOFILE keeps the only worker's replacement from being received the remaining items fail with procpool::Error naming the limit, and the pool recovers later") {
  check_respawn_under_nofile(1, NofileLimit::at_lowest_free);
}

TEST_CASE("when RLIMIT_NOFILE is lowered below the descriptors the pool holds and a worker crashes, the other worker finishes the map and the pool recovers later") {
  check_respawn_under_nofile(2, NofileLimit::below_pool_fds);
}

TEST_CASE("when RLIMIT_NOFILE is lowered below the descriptors the pool holds and the only worker crashes, the remaining items fail with procpool::Error naming the limit, and the pool recovers later") {
  check_respawn_under_nofile(1, NofileLimit::below_pool_fds);
}

TEST_CASE("a result too large for the parent's address space (RLIMIT_AS) fails with procpool::Error mentioning memory and the pool stays usable") {
  if (address_space_limit_untestable()) return;
  const int status = run_isolated([] {
    procpool::Pool pool(with_workers(2));
    if (pool.map(square, iota_vector(16)) != squares(16)) return fail(1, "the first map was wrong");
    // Only the parent is limited: the workers are separate processes, forked before, with their own limit.
    const std::optional<rlimit> old = limit_address_space_to_use_plus(std::size_t{128} << 20);
    if (!old) return fail(2, "cannot lower RLIMIT_AS");

    const auto check_item_two = [](const std::exception_ptr& error) -> std::optional<std::string> {
      try {
        std::rethrow_exception(error);
      } catch (const procpool::RemoteError& e) {
        return std::string("a RemoteError: ") + e.what();
      } catch (const procpool::Error& e) {
        if (!contains(e.what(), "memory")) return std::string("a message not mentioning memory: ") + e.what();
        return std::nullopt;
      } catch (const std::bad_alloc&) {
        return std::string("a std::bad_alloc rather than a procpool::Error");
      } catch (const std::exception& e) {
        return std::string("a non-procpool exception: ") + e.what();
      }
    };

    int code = 0;
    try {
      const auto outcomes = pool.try_map(huge_at_two, iota_vector(6), with_chunk(1));
      if (outcomes.size() != 6) code = fail(4, "try_map returned " + std::to_string(outcomes.size()) + " outcomes");
      for (std::size_t i = 0; code == 0 && i < outcomes.size(); ++i) {
        const auto& o = outcomes[i];
        if (i == 2) {
          if (o.has_value())
            code = fail(5, "the 512 MiB result arrived although it cannot fit");
          else if (const auto problem = check_item_two(o.error()))
            code = fail(6, "item 2 failed with " + *problem);
        } else if (o.has_value()) {
          if (o.value() != std::to_string(i)) code = fail(7, "item " + std::to_string(i) + " has a wrong value");
        } else if (const auto problem = check_item_two(o.error())) {
          // Items that shared the worker with item 2 may fail with it, for the same reason.
          code = fail(8, "item " + std::to_string(i) + " failed with " + *problem);
        }
      }
      // Still usable for small maps, under the same limit: no item of a small map may fail (the
      // worker that was given up on must get no more work, and its unread bytes must not be
      // taken for a new message).
      if (code == 0) {
        const auto small = pool.try_map(square, iota_vector(40), with_chunk(1));
        for (std::size_t i = 0; code == 0 && i < small.size(); ++i) {
          if (!small[i].has_value()) {
            try {
              std::rethrow_exception(small[i].error());
            } catch (const std::exception& e) {
              code = fail(11, "item " + std::to_string(i) + " of a small map after the failure failed: " + e.what());
            }
          } else if (small[i].value() != square(static_cast<int>(i))) {
            code = fail(11, "item " + std::to_string(i) + " of a small map after the failure is wrong");
          }
        }
      }
      // map throws the failure of item 2 (the lowest failed item) as procpool::Error too.
      if (code == 0) {
        try {
          (void)pool.map(huge_at_two, iota_vector(3), with_chunk(1));
          code = fail(9, "map returned although a result cannot fit");
        } catch (const procpool::Error& e) {
          if (const auto problem = check_item_two(std::current_exception())) code = fail(10, "map threw " + *problem);
        }
      }
      if (code == 0 && pool.map(square, iota_vector(200)) != squares(200))
        code = fail(15, "a small map after the second failure was wrong");
    } catch (const std::bad_alloc&) {
      code = fail(12, "std::bad_alloc escaped from the pool (see where with gdb: catch throw)");
    } catch (const std::exception& e) {
      code = fail(13, std::string("the pool threw: ") + e.what());
    }
    ::setrlimit(RLIMIT_AS, &*old);
    if (code == 0 && pool.map(square, iota_vector(50)) != squares(50))
      code = fail(14, "a map after the limit was lifted was wrong");
    return code;
  });
  INFO(procpool_test::describe_status(status));
  CHECK(status == 0);
}

TEST_CASE("a pool constructed under an RLIMIT_AS too tight for its shared lanes still moves large payloads, through its sockets") {
  if (address_space_limit_untestable()) return;
  const int status = run_isolated([] {
    // Room for the pool and the payloads below, not for the lanes of two workers (128 MiB).
    if (!limit_address_space_to_use_plus(std::size_t{96} << 20)) return fail(1, "cannot lower RLIMIT_AS");
    using Bytes = std::vector<unsigned char>;
    const auto flipped = [](const Bytes& in) {
      Bytes out(in);
      for (auto& x : out) x = static_cast<unsigned char>(~x);
      return out;
    };
    try {
      procpool::Pool pool(with_workers(2));
      std::vector<Bytes> in;
      for (int i = 0; i < 24; ++i) in.emplace_back(std::size_t{256} << 10, static_cast<unsigned char>(i * 9));
      const std::vector<Bytes> out = pool.map(flipped, in);
      if (out.size() != in.size()) return fail(3, "map returned " + std::to_string(out.size()) + " results");
      for (std::size_t i = 0; i < in.size(); ++i)
        if (out[i] != flipped(in[i])) return fail(4, "item " + std::to_string(i) + " came back wrong");
    } catch (const std::exception& e) {
      return fail(5, std::string("the pool threw: ") + e.what());
    }
    return 0;
  });
  INFO(procpool_test::describe_status(status));
  CHECK(status == 0);
}
