// procpool::Process: how a child ended, when the caller reaps children itself (a SIGCHLD handler
// looping on waitpid(-1, WNOHANG), or SIGCHLD ignored), and what a moved-from Process says.
//
// Every body that changes SIGCHLD's disposition runs in a forked helper (run_isolated), so no
// handler leaks into other tests; those bodies report a failed check by their exit code.
#include <signal.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <optional>
#include <procpool/process.hpp>
#include <string>
#include <utility>
#include <vector>

#include "support.hpp"

using namespace std::chrono_literals;
using procpool_test::contains;
using procpool_test::die_by_signal;
using procpool_test::fail;
using procpool_test::pid_gone;
using procpool_test::run_isolated;
using procpool_test::ubsan_vptr_checks_present;

namespace {

/// A server's SIGCHLD handler: reaps every ended child, whoever forked it (pitfall 13).
void reap_every_child(int) {
  const int saved_errno = errno;
  while (::waitpid(-1, nullptr, WNOHANG) > 0) {
  }
  errno = saved_errno;
}

/// Sets SIGCHLD's disposition for its lifetime (a handler, SIG_IGN, ...), then restores the old
/// one. The bodies run isolated anyway; this keeps each body's own state tidy as well.
class SigchldDisposition {
 public:
  explicit SigchldDisposition(void (*handler)(int), int flags = SA_RESTART | SA_NOCLDSTOP) {
    struct sigaction sa {};
    sa.sa_handler = handler;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGCHLD, &sa, &old_);
  }
  SigchldDisposition(const SigchldDisposition&) = delete;
  SigchldDisposition& operator=(const SigchldDisposition&) = delete;
  ~SigchldDisposition() { ::sigaction(SIGCHLD, &old_, nullptr); }

 private:
  struct sigaction old_ {};
};

/// Waits (at most 10 s) until `pid` has been reaped by someone other than procpool: the caller's
/// SIGCHLD handler or the kernel. Then procpool's own waitpid surely finds no child, which is the
/// case under test (otherwise procpool might win the race and reap the child itself).
bool wait_until_reaped_elsewhere(pid_t pid) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!pid_gone(pid)) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    ::usleep(1000);  // SIGCHLD interrupts it, and the handler runs
  }
  return true;
}

/// exitcode() in words, for failure messages.
template <class P>
std::string exitcode_text(const P& p) {
  return p.exitcode() ? std::to_string(*p.exitcode()) : std::string("nullopt");
}

/// Whether this kernel gives back the status of a child that someone else reaped (PIDFD_INFO_EXIT,
/// Linux 6.15): probed with a child of our own, reaped by us.
bool kernel_keeps_reaped_status() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(7);
  const procpool::detail::Fd pidfd = procpool::detail::open_pidfd(pid);
  int status = 0;
  procpool::detail::waitpid_retry(pid, &status, 0);
  const std::optional<int> kept = procpool::detail::reaped_child_status(pidfd.get());
  return kept && WIFEXITED(*kept) && WEXITSTATUS(*kept) == 7;
}

/// Runs `body` in a forked helper and CHECKs that every check in it passed.
void check_isolated(const std::function<int()>& body) {
  const int status = run_isolated(body);
  INFO(procpool_test::describe_status(status));
  CHECK(status == 0);
}

/// What get() threw, as text ("" if it threw nothing or something else), and the exit code the
/// ProcessError carried.
template <class P>
std::pair<std::string, std::optional<int>> process_error_of(P& p) {
  try {
    (void)p.get();
  } catch (const procpool::ProcessError& e) {
    return {e.what(), e.exitcode()};
  } catch (...) {
    return {"(not a ProcessError)", std::nullopt};
  }
  return {"", std::nullopt};
}

/// The message of the procpool::Error that `f` throws, or "" if it throws none.
template <class F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const procpool::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The caller's SIGCHLD handler reaps the child before procpool does

TEST_CASE("With a SIGCHLD handler reaping every child, a child that raises SIGSEGV reports exitcode -11 and get() names SIGSEGV") {
  check_isolated([] {
    SigchldDisposition reaper(reap_every_child);
    procpool::Process p{[] {
      die_by_signal(SIGSEGV);
      return 1;
    }};
    p.start();
    if (!wait_until_reaped_elsewhere(p.pid())) return fail(1, "the handler never reaped the child");
    if (p.exitcode() != -11) return fail(2, "exitcode() is " + exitcode_text(p));
    const auto [message, code] = process_error_of(p);
    if (!contains(message, "SIGSEGV")) return fail(3, "get() did not name SIGSEGV: " + message);
    if (code != -11) return fail(4, "the ProcessError's exitcode is not -11");
    return 0;
  });
}

TEST_CASE("With a SIGCHLD handler reaping every child, a child that exits with code 3 reports 3") {
  check_isolated([] {
    SigchldDisposition reaper(reap_every_child);
    procpool::Process p{[] {
      ::_exit(3);
      return 1;
    }};
    p.start();
    if (!wait_until_reaped_elsewhere(p.pid())) return fail(1, "the handler never reaped the child");
    p.join();
    if (p.exitcode() != 3) return fail(2, "exitcode() is " + exitcode_text(p));
    const auto [message, code] = process_error_of(p);
    if (!contains(message, "exited with code 3")) return fail(3, "get() did not say 'exited with code 3': " + message);
    if (code != 3) return fail(4, "the ProcessError's exitcode is not 3");
    return 0;
  });
}

TEST_CASE("With a SIGCHLD handler reaping every child, a child that returns a value still gives it, with exitcode 0") {
  check_isolated([] {
    SigchldDisposition reaper(reap_every_child);
    procpool::Process p{[] { return std::string("result"); }};
    p.start();
    std::string result;
    try {
      result = p.get();
    } catch (const std::exception& e) {
      return fail(1, std::string("get() threw: ") + e.what());
    }
    if (result != "result") return fail(2, "the result was '" + result + "'");
    if (p.exitcode() != 0) return fail(3, "exitcode() is not 0");
    return 0;
  });
}

TEST_CASE("With a SIGCHLD handler reaping every child, is_alive() and join_for() follow the child") {
  check_isolated([] {
    SigchldDisposition reaper(reap_every_child);
    int gate[2];
    if (::pipe(gate) != 0) return fail(1, "pipe");
    procpool::Process p{[gate] {
      ::close(gate[1]);
      char c;
      while (::read(gate[0], &c, 1) < 0 && errno == EINTR) {
      }
      die_by_signal(SIGSEGV);
      return 0;
    }};
    p.start();
    ::close(gate[0]);
    if (!p.is_alive()) return fail(2, "is_alive() is false while the child waits");
    if (p.join_for(50ms)) return fail(3, "join_for() returned true while the child waits");
    if (p.exitcode().has_value()) return fail(4, "exitcode() has a value while the child waits");
    ::close(gate[1]);  // the child goes on and crashes
    if (!p.join_for(10s)) return fail(5, "join_for(10s) returned false after the child ended");
    if (p.is_alive()) return fail(6, "is_alive() is true after the child ended");
    if (p.exitcode() != -11) return fail(7, "exitcode() is " + exitcode_text(p));
    return 0;
  });
}

// ---------------------------------------------------------------------------------------------
// The kernel reaps the child (SIGCHLD ignored)

TEST_CASE("With SIGCHLD ignored, a crashed child reports SIGSEGV where the kernel keeps the status, and never reads as success") {
  const bool kept = kernel_keeps_reaped_status();
  INFO("this kernel " << (kept ? "keeps" : "does not keep") << " a reaped child's status for its pidfd");
  check_isolated([kept] {
    SigchldDisposition ignored(SIG_IGN, 0);
    procpool::Process p{[] {
      die_by_signal(SIGSEGV);
      return 1;
    }};
    p.start();
    if (!wait_until_reaped_elsewhere(p.pid())) return fail(1, "the kernel never reaped the child");
    const int expected = kept ? -11 : procpool::exitcode_unknown;
    if (p.exitcode() != expected)
      return fail(2, "exitcode() is " + exitcode_text(p) + ", not " + std::to_string(expected));
    if (p.is_alive()) return fail(3, "is_alive() after the child ended");
    const auto [message, code] = process_error_of(p);
    if (code != expected) return fail(4, "the ProcessError's exitcode is not " + std::to_string(expected));
    if (kept && !contains(message, "SIGSEGV")) return fail(5, "get() did not name SIGSEGV: " + message);
    if (!kept && !contains(message, "unknown")) return fail(6, "get() did not say the ending is unknown: " + message);
    if (contains(message, "code 0")) return fail(7, "get() read the crash as exit code 0: " + message);
    return 0;
  });
}

TEST_CASE("With SIGCHLD ignored, a child that returns a value gives it, and exitcode() is 0 where the kernel keeps the status") {
  const bool kept = kernel_keeps_reaped_status();
  check_isolated([kept] {
    SigchldDisposition ignored(SIG_IGN, 0);
    procpool::Process p{[] { return 42; }};
    p.start();
    if (!wait_until_reaped_elsewhere(p.pid())) return fail(1, "the kernel never reaped the child");
    int result = 0;
    try {
      result = p.get();
    } catch (const std::exception& e) {
      return fail(2, std::string("get() threw: ") + e.what());
    }
    if (result != 42) return fail(3, "the result was " + std::to_string(result));
    if (p.exitcode() != (kept ? 0 : procpool::exitcode_unknown)) return fail(4, "exitcode() is " + exitcode_text(p));
    return 0;
  });
}

TEST_CASE("With SIGCHLD ignored, 500 children that exit at once each report their own exit code") {
  // A child that ends before its pidfd exists is reaped by the kernel at once and its status is
  // gone: start() must not let the child run before the pidfd is open (when it did, 8 runs in 9
  // of this test with 200 children lost some child's status on this machine).
  const bool kept = kernel_keeps_reaped_status();
  check_isolated([kept] {
    SigchldDisposition ignored(SIG_IGN, 0);
    for (int k = 0; k < 500; ++k) {
      procpool::Process<int> p{[k]() -> int { ::_exit(k % 100 + 1); }};
      p.start();
      p.join();
      const int expected = kept ? k % 100 + 1 : procpool::exitcode_unknown;
      if (p.exitcode() != expected)
        return fail(1, "child " + std::to_string(k) + ": exitcode() is " + exitcode_text(p) + ", not " +
                           std::to_string(expected));
    }
    return 0;
  });
}

// ---------------------------------------------------------------------------------------------
// Where the status cannot be had back (kernels before 6.15, or no pidfd)

TEST_CASE("An unknown ending is a ProcessError saying another waitpid took the status, with an exit code that is not 0") {
  STATIC_REQUIRE(procpool::exitcode_unknown != 0);
  STATIC_REQUIRE(procpool::exitcode_unknown < -64);  // below every -signal, and -it is no exit code either
  const procpool::ProcessError e =
      procpool::detail::ended_without_result("procpool::Process: the child process 1234", procpool::exitcode_unknown);
  const std::string message = e.what();
  INFO(message);
  CHECK(e.exitcode() == procpool::exitcode_unknown);
  CHECK(contains(message, "the child process 1234"));
  CHECK(contains(message, "unknown"));
  CHECK(contains(message, "waitpid"));
  CHECK(contains(message, "SIGCHLD"));
  CHECK_FALSE(contains(message, "code 0"));
  CHECK_FALSE(contains(procpool::detail::describe_exitcode(procpool::exitcode_unknown), "signal"));
  // Without a pidfd the kernel has nothing to say.
  CHECK_FALSE(procpool::detail::reaped_child_status(-1).has_value());
}

TEST_CASE("Without a pidfd, a child reaped by the caller's SIGCHLD handler has exitcode_unknown, never 0, and get() says so") {
  if (ubsan_vptr_checks_present()) {
    WARN("not run under -fsanitize=undefined: its vptr check needs free descriptors");
    return;
  }
  check_isolated([] {
    SigchldDisposition reaper(reap_every_child);
    // Room for exactly two pipes (the reply and start()'s gate) and not for the pidfd, as on a
    // kernel without pidfd_open: the fallback every kernel before 6.15 takes once its status is gone.
    int highest = 0;
    for (const int fd : procpool_test::open_fds()) highest = std::max(highest, fd);
    const int limit = highest + 12;
    std::vector<int> fillers = procpool_test::fill_descriptors_below(limit);
    if (fillers.size() < 4) return fail(1, "could not fill the descriptor table");
    for (std::size_t k = 0; k < 4; ++k) ::close(fillers[k]);
    rlimit old{};
    ::getrlimit(RLIMIT_NOFILE, &old);
    const rlimit tight{static_cast<rlim_t>(limit), old.rlim_max};
    if (::setrlimit(RLIMIT_NOFILE, &tight) != 0) return fail(2, "setrlimit(RLIMIT_NOFILE)");
    procpool::Process p{[] {
      die_by_signal(SIGSEGV);
      return 1;
    }};
    p.start();
    ::setrlimit(RLIMIT_NOFILE, &old);
    for (std::size_t k = 4; k < fillers.size(); ++k) ::close(fillers[k]);
    if (!wait_until_reaped_elsewhere(p.pid())) return fail(3, "the handler never reaped the child");
    p.join();
    if (p.exitcode() != procpool::exitcode_unknown) return fail(4, "exitcode() is " + exitcode_text(p));
    if (p.is_alive()) return fail(5, "is_alive() after the child ended");
    const auto [message, code] = process_error_of(p);
    if (code != procpool::exitcode_unknown) return fail(6, "the ProcessError's exitcode is not exitcode_unknown");
    if (!contains(message, "unknown") || !contains(message, "waitpid"))
      return fail(7, "get() did not say another waitpid took the status: " + message);
    return 0;
  });
}

// ---------------------------------------------------------------------------------------------
// A moved-from Process

TEST_CASE("start() on a moved-from Process throws procpool::Error saying it was moved from") {
  procpool::Process a{[] { return 1; }};
  procpool::Process b{std::move(a)};
  const std::string message = error_message([&] { a.start(); });  // NOLINT(bugprone-use-after-move)
  INFO(message);
  CHECK(contains(message, "moved from"));
  CHECK_FALSE(contains(message, "already started"));
  b.start();
  CHECK(b.get() == 1);
}

TEST_CASE("join(), join_for() and get() on a moved-from Process throw procpool::Error saying it was moved from") {
  procpool::Process a{[] { return 1; }};
  a.start();
  procpool::Process b{std::move(a)};
  // NOLINTBEGIN(bugprone-use-after-move)
  const std::string join_message = error_message([&] { a.join(); });
  const std::string join_for_message = error_message([&] { (void)a.join_for(10ms); });
  const std::string get_message = error_message([&] { (void)a.get(); });
  const std::string start_message = error_message([&] { a.start(); });
  // NOLINTEND(bugprone-use-after-move)
  INFO(join_message << "\n" << join_for_message << "\n" << get_message << "\n" << start_message);
  CHECK(contains(join_message, "moved from"));
  CHECK(contains(join_for_message, "moved from"));
  CHECK(contains(get_message, "moved from"));
  CHECK(contains(start_message, "moved from"));
  CHECK(b.get() == 1);
}

TEST_CASE("A started Process still says 'already started', not 'moved from', on a second start()") {
  procpool::Process a{[] { return 1; }};
  a.start();
  const std::string message = error_message([&] { a.start(); });
  INFO(message);
  CHECK(contains(message, "already started"));
  CHECK_FALSE(contains(message, "moved from"));
  CHECK(a.get() == 1);
}
