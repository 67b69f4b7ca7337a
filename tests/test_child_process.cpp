// procpool::detail::ChildProcess and ForeignProcess: the handles that signal and reap the processes
// the library starts (Process's child, the zygote, the workers), and the fork functions that make them.
//
// Self-contained (no support.hpp): the bodies that change process-wide state run in a helper
// process forked here, and report a failed check by their exit code.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <functional>
#include <iostream>
#include <optional>
#include <procpool/detail/child_process.hpp>
#include <procpool/detail/fork.hpp>
#include <string>
#include <utility>

using procpool::detail::ChildProcess;
using procpool::detail::Fd;
using procpool::detail::ForeignProcess;
using procpool::detail::ForkOptions;
using procpool::detail::kExitcodeUnknown;
using procpool::detail::kWaitStatusUnknown;

namespace {

/// A child that waits until it is killed.
ChildProcess start_sleeper(ForkOptions options = {}) {
  return procpool::detail::fork_child_with_pidfd(
      [] {
        for (;;) ::pause();
        return 0;
      },
      {}, options);
}

/// A pipe whose ends close themselves.
struct TestPipe {
  Fd read;
  Fd write;
  TestPipe() {
    procpool::detail::Pipe p = procpool::detail::make_pipe();
    read = std::move(p.read);
    write = std::move(p.write);
  }
};

/// Waits (at most 10 s) until `fd` polls readable; false if it never does.
bool wait_readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 10'000) == 1;
}

/// Whether `pid` is still a child of ours that has not been reaped (running or a zombie).
bool still_our_unreaped_child(pid_t pid) {
  siginfo_t info{};
  return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0;
}

/// Whether the kernel gives back the status of a child reaped by someone else (Linux 6.15):
/// probed with a child of our own, reaped by us.
bool kernel_keeps_reaped_status() {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(7);
  const Fd pidfd = procpool::detail::open_pidfd(pid);
  int status = 0;
  ::waitpid(pid, &status, 0);
  const std::optional<int> kept = procpool::detail::reaped_child_status(pidfd.get());
  return kept && WIFEXITED(*kept) && WEXITSTATUS(*kept) == 7;
}

/// Runs `body` in a forked helper and returns its waitpid status (the helper exits with the body's
/// return value), so that what the body changes (stdio, signal dispositions) stays in the helper.
int run_isolated(const std::function<int()>& body) {
  std::cout.flush();
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    int code = 99;
    try {
      code = body();
    } catch (...) {
    }
    std::fflush(nullptr);
    ::_exit(code);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

/// Everything readable from `fd` until end-of-file.
std::string read_all(int fd) {
  std::string out;
  char buf[256];
  for (ssize_t n; (n = procpool::detail::read_some(fd, buf, sizeof buf)) > 0;)
    out.append(buf, static_cast<std::size_t>(n));
  return out;
}

std::size_t count_occurrences(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
  return n;
}

}  // namespace

TEST_CASE("A child signalled through its handle and then reaped reports that signal in its status") {
  ChildProcess child = start_sleeper();
  REQUIRE(child.has_process());
  CHECK(child.pidfd() >= 0);  // Linux 5.3 and later
  CHECK(child.readable_fd() == child.pidfd());
  CHECK(child.signal(SIGTERM));
  const int status = child.reap();
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGTERM);
  CHECK(child.reaped());
  CHECK(child.status() == status);
  CHECK(child.exitcode() == -SIGTERM);
  CHECK(child.readable_fd() == -1);    // the pidfd is closed once the status is known
  CHECK(child.pid() > 0);              // kept for messages
  CHECK_FALSE(child.signal(SIGKILL));  // reaped: the pid may belong to someone else now
  CHECK(child.reap() == status);       // the status is kept; reaping again waits for nothing
  CHECK_FALSE(still_our_unreaped_child(child.pid()));
}

TEST_CASE("A child without a pidfd is signalled by its pid and reaped all the same") {
  const pid_t pid = procpool::detail::fork_child(
      [] {
        for (;;) ::pause();
        return 0;
      },
      {});
  ChildProcess child(pid, Fd());
  CHECK(child.pidfd() == -1);
  CHECK(child.readable_fd() == -1);
  CHECK(child.signal(SIGKILL));
  const int status = child.reap();
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGKILL);
  CHECK(child.exitcode() == -SIGKILL);
}

TEST_CASE("try_reap gives nothing while the child runs, and its exit status once it has ended") {
  TestPipe go;
  const int go_read = go.read.get();
  ChildProcess child = procpool::detail::fork_child_with_pidfd(
      [go_read] {
        char byte = 0;
        (void)procpool::detail::read_some(go_read, &byte, 1);
        return 3;
      },
      {go_read});
  CHECK_FALSE(child.try_reap().has_value());
  CHECK_FALSE(child.reaped());
  CHECK_FALSE(child.status().has_value());
  CHECK_FALSE(child.exitcode().has_value());
  CHECK(still_our_unreaped_child(child.pid()));

  go.write.reset();  // end-of-file: the child returns 3
  REQUIRE(wait_readable(child.readable_fd()));
  const std::optional<int> status = child.try_reap();
  REQUIRE(status.has_value());
  CHECK(WIFEXITED(*status));
  CHECK(WEXITSTATUS(*status) == 3);
  CHECK(child.exitcode() == 3);
  CHECK(child.try_reap() == status);  // asked again: the same status, no second wait
  CHECK_FALSE(still_our_unreaped_child(child.pid()));
}

TEST_CASE("A child reaped by someone else's waitpid(-1) reports its status from the pidfd, or the documented unknown value") {
  ChildProcess child = procpool::detail::fork_child_with_pidfd([] { return 5; }, {});
  int taken = 0;
  // The test's own "SIGCHLD handler": it takes whichever child ended (here there is only ours).
  REQUIRE(::waitpid(-1, &taken, 0) == child.pid());
  REQUIRE(WIFEXITED(taken));

  const std::optional<int> status = child.try_reap();
  REQUIRE(status.has_value());
  if (kernel_keeps_reaped_status()) {
    CHECK(*status == taken);
    CHECK(child.exitcode() == 5);
  } else {
    WARN("this kernel cannot give back a reaped child's status (PIDFD_INFO_EXIT, Linux 6.15)");
    CHECK(*status == kWaitStatusUnknown);
    CHECK(child.exitcode() == kExitcodeUnknown);
  }
  CHECK(child.reap() == *status);
  CHECK_FALSE(child.signal(SIGKILL));
}

TEST_CASE("A child reaped by someone else, without a pidfd, reports the unknown status, never a success") {
  const pid_t pid = procpool::detail::fork_child([] { return 0; }, {});
  ChildProcess child(pid, Fd());
  int taken = 0;
  REQUIRE(::waitpid(-1, &taken, 0) == pid);

  CHECK(child.reap() == kWaitStatusUnknown);
  CHECK(child.reaped());
  CHECK(child.exitcode() == kExitcodeUnknown);
  CHECK(procpool::detail::exitcode_from_status(kWaitStatusUnknown) == kExitcodeUnknown);
  CHECK_FALSE(WIFEXITED(kWaitStatusUnknown));
  CHECK_FALSE(WIFSIGNALED(kWaitStatusUnknown));
  CHECK_FALSE(WIFSTOPPED(kWaitStatusUnknown));
}

TEST_CASE("A moved-from handle is empty: it has no process, signals nothing and reaps nothing") {
  ChildProcess original = start_sleeper();
  const pid_t pid = original.pid();
  const int pidfd = original.pidfd();

  ChildProcess moved(std::move(original));
  CHECK(moved.pid() == pid);
  CHECK(moved.pidfd() == pidfd);
  // NOLINTBEGIN(bugprone-use-after-move): what a move leaves behind is the point here
  CHECK_FALSE(original.has_process());
  CHECK_FALSE(static_cast<bool>(original));
  CHECK(original.pid() == -1);
  CHECK(original.pidfd() == -1);
  CHECK(original.readable_fd() == -1);
  CHECK_FALSE(original.signal(SIGKILL));
  CHECK_FALSE(original.try_reap().has_value());
  CHECK(original.reap() == kWaitStatusUnknown);  // at once: an empty handle never waits (no waitpid(-1))
  CHECK_FALSE(original.reaped());
  // NOLINTEND(bugprone-use-after-move)
  CHECK(still_our_unreaped_child(pid));

  ChildProcess assigned;
  assigned = std::move(moved);
  CHECK(assigned.pid() == pid);
  CHECK(assigned.signal(SIGKILL));
  CHECK(WTERMSIG(assigned.reap()) == SIGKILL);
  CHECK_FALSE(still_our_unreaped_child(pid));
}

TEST_CASE("Dropping a handle reaps a child that has ended and leaves a running one alone") {
  pid_t ended_pid = -1;
  {
    ChildProcess ended = procpool::detail::fork_child_with_pidfd([] { return 0; }, {});
    ended_pid = ended.pid();
    REQUIRE(wait_readable(ended.readable_fd()));
  }
  CHECK_FALSE(still_our_unreaped_child(ended_pid));  // no zombie left behind

  pid_t running_pid = -1;
  {
    ChildProcess running = start_sleeper();
    running_pid = running.pid();
  }
  CHECK(::kill(running_pid, 0) == 0);  // not killed by the handle: its owner decides
  REQUIRE(still_our_unreaped_child(running_pid));
  ::kill(running_pid, SIGKILL);
  int status = 0;
  CHECK(::waitpid(running_pid, &status, 0) == running_pid);
}

TEST_CASE("fork_child still returns a pid that the caller reaps itself") {
  const pid_t pid = procpool::detail::fork_child([] { return 4; }, {});
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);  // the handle inside fork_child did not take it
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 4);
}

TEST_CASE("A sole reaper's fork gives a handle with a pidfd, as the zygote uses for its workers") {
  ChildProcess child = start_sleeper(ForkOptions{.sole_reaper = true});
  CHECK(child.pidfd() >= 0);
  CHECK(child.signal(SIGKILL));
  CHECK(WTERMSIG(child.reap()) == SIGKILL);
}

TEST_CASE("A foreign process (a grandchild) can be signalled and watched, and its reaper's report is kept") {
  // An intermediate child forks the grandchild, passes its pid up, reaps it and reports its status:
  // the part the zygote plays for a pool's workers.
  TestPipe pids;
  TestPipe report;
  const int pids_write = pids.write.get();
  const int report_write = report.write.get();
  ChildProcess middle = procpool::detail::fork_child_with_pidfd(
      [pids_write, report_write] {
        std::fflush(nullptr);
        const pid_t grandchild = ::fork();
        if (grandchild == 0) {
          for (;;) ::pause();
        }
        (void)procpool::detail::write_all(pids_write, &grandchild, sizeof grandchild);
        int status = 0;
        if (::waitpid(grandchild, &status, 0) != grandchild) return 1;
        (void)procpool::detail::write_all(report_write, &status, sizeof status);
        return 0;
      },
      {pids_write, report_write});
  pids.write.reset();
  report.write.reset();

  pid_t grandchild = -1;
  REQUIRE(procpool::detail::read_some(pids.read.get(), &grandchild, sizeof grandchild) == sizeof grandchild);
  ForeignProcess worker(grandchild, procpool::detail::open_pidfd(grandchild));
  REQUIRE(worker.has_process());
  CHECK(worker.pidfd() >= 0);
  CHECK_FALSE(worker.ended());
  CHECK(worker.signal(SIGTERM));
  REQUIRE(wait_readable(worker.readable_fd()));  // the pidfd says it ended; its own parent reaps it

  int status = 0;
  REQUIRE(procpool::detail::read_some(report.read.get(), &status, sizeof status) == sizeof status);
  worker.record_status(status);
  CHECK(worker.ended());
  CHECK(worker.exitcode() == -SIGTERM);
  CHECK(worker.readable_fd() == -1);
  CHECK_FALSE(worker.signal(SIGKILL));  // reported reaped: the pid may be reused
  worker.record_status(0);              // a later report changes nothing
  CHECK(worker.exitcode() == -SIGTERM);

  CHECK(middle.reap() == 0);  // the middle process reaped the grandchild itself: we took nothing from it
}

TEST_CASE("A foreign process whose pidfd is closed is signalled by its pid") {
  TestPipe pids;
  const int pids_write = pids.write.get();
  ChildProcess middle = procpool::detail::fork_child_with_pidfd(
      [pids_write] {
        std::fflush(nullptr);
        const pid_t grandchild = ::fork();
        if (grandchild == 0) {
          for (;;) ::pause();
        }
        (void)procpool::detail::write_all(pids_write, &grandchild, sizeof grandchild);
        int status = 0;
        if (::waitpid(grandchild, &status, 0) != grandchild) return 1;
        return WIFSIGNALED(status) && WTERMSIG(status) == SIGUSR1 ? 0 : 2;
      },
      {pids_write});
  pids.write.reset();
  pid_t grandchild = -1;
  REQUIRE(procpool::detail::read_some(pids.read.get(), &grandchild, sizeof grandchild) == sizeof grandchild);

  ForeignProcess worker(grandchild, procpool::detail::open_pidfd(grandchild));
  worker.close_pidfd();  // as the pool's parent does once it stops watching a worker
  CHECK(worker.pidfd() == -1);
  CHECK(worker.readable_fd() == -1);
  CHECK_FALSE(worker.ended());
  CHECK(worker.signal(SIGUSR1));
  const int status = middle.reap();
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);  // the grandchild died of our SIGUSR1
}

TEST_CASE("With sync_with_stdio(false), std::cout output not yet flushed at fork is written once") {
  // The C++ streams keep their own buffers then; flush_standard_streams reaches them without <iostream>.
  const int status = run_isolated([] {
    std::ios_base::sync_with_stdio(false);
    TestPipe out;
    if (::dup2(out.write.get(), 1) < 0) return 1;
    out.write.reset();
    std::cout << "cout-before\n";  // deliberately not flushed
    ChildProcess child = procpool::detail::fork_child_with_pidfd(
        [] {
          std::cout << "cout-child\n";  // flushed by the child's exit
          return 0;
        },
        {1});
    if (child.reap() != 0) return 2;
    std::cout << "cout-after\n";
    std::cout.flush();
    ::close(1);
    const std::string text = read_all(out.read.get());
    if (count_occurrences(text, "cout-before\n") != 1) return 3;
    if (count_occurrences(text, "cout-child\n") != 1) return 4;
    if (count_occurrences(text, "cout-after\n") != 1) return 5;
    if (text.find("cout-before") > text.find("cout-child")) return 6;
    // The caller's setting stays as it was: asking (sync_with_stdio(true)) changed nothing.
    if (std::ios_base::sync_with_stdio(false)) return 7;
    return 0;
  });
  INFO("the isolated body's waitpid status: " << status);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("Synced with stdio (the default), std::cout output not yet flushed at fork is written once") {
  const int status = run_isolated([] {
    TestPipe out;
    if (::dup2(out.write.get(), 1) < 0) return 1;
    out.write.reset();
    std::setvbuf(stdout, nullptr, _IOFBF, 1 << 16);  // as for a file: fully buffered
    std::cout << "cout-before\n";
    std::printf("printf-before\n");
    ChildProcess child = procpool::detail::fork_child_with_pidfd([] { return 0; }, {1});
    if (child.reap() != 0) return 2;
    std::fflush(nullptr);
    ::close(1);
    const std::string text = read_all(out.read.get());
    if (count_occurrences(text, "cout-before\n") != 1) return 3;
    if (count_occurrences(text, "printf-before\n") != 1) return 4;
    if (!std::ios_base::sync_with_stdio(true)) return 5;  // still synced
    return 0;
  });
  INFO("the isolated body's waitpid status: " << status);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}
