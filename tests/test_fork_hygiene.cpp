// Fork pitfalls (see the project's fork-pitfalls notes), each checked against procpool::Process.
#include <fcntl.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <procpool/process.hpp>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

using namespace std::chrono_literals;
using procpool_test::count_occurrences;
using procpool_test::fail;
using procpool_test::open_fds;
using procpool_test::run_isolated;
using procpool_test::StdoutCapture;

namespace {

/// Pitfall 1: with stdout fully buffered (a file or a pipe), unflushed output must not be
/// duplicated into the child. Runs in an isolated helper, since it redirects fd 1.
int unflushed_output_is_written_once(StdoutCapture::Kind kind) {
  StdoutCapture capture(kind);
  std::printf("before\n");       // deliberately not flushed
  std::cout << "cout-before\n";  // deliberately not flushed
  procpool::Process p{[] { std::printf("child\n"); }};
  p.start();
  p.join();
  std::printf("after\n");
  std::fflush(stdout);
  capture.restore();
  const std::string text = capture.text();
  if (count_occurrences(text, "before\n") != 2)  // "before\n" and the tail of "cout-before\n"
    return fail(1, "'before' not exactly once: [" + text + "]");
  if (count_occurrences(text, "cout-before\n") != 1) return fail(2, "'cout-before' not exactly once: [" + text + "]");
  if (count_occurrences(text, "child\n") != 1) return fail(3, "'child' not exactly once: [" + text + "]");
  if (count_occurrences(text, "after\n") != 1) return fail(4, "'after' not exactly once: [" + text + "]");
  if (text.find("before") > text.find("child")) return fail(5, "the parent's earlier output came after the child's");
  return 0;
}

int g_trace_fd = -1;  // where the atexit handler and the static destructor below leave a trace

void write_trace(const char* what) {
  if (g_trace_fd < 0) return;
  const std::string line = std::string(what) + " " + std::to_string(::getpid()) + "\n";
  (void)::write(g_trace_fd, line.data(), line.size());
}

/// Everything in the trace file so far.
std::string read_trace() {
  std::string out;
  char buf[256];
  off_t at = 0;
  for (ssize_t n; (n = ::pread(g_trace_fd, buf, sizeof buf, at)) > 0; at += n)
    out.append(buf, static_cast<std::size_t>(n));
  return out;
}

int open_trace() {
  char path[] = "/tmp/procpool-test-trace-XXXXXX";
  g_trace_fd = ::mkstemp(path);
  ::unlink(path);
  return g_trace_fd;
}

struct TracesOnDestruction {
  ~TracesOnDestruction() { write_trace("static-destructor"); }
};

/// Forks a plain child (not through procpool) that ends with std::exit(0): the positive control
/// showing that the handlers under test really do run in a child that ends with exit().
int control_child_exits_normally() {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) std::exit(0);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

std::vector<int> blocked_signals() {
  sigset_t mask;
  ::pthread_sigmask(SIG_SETMASK, nullptr, &mask);
  std::vector<int> out;
  for (int s = 1; s < NSIG; ++s)
    if (sigismember(&mask, s) == 1) out.push_back(s);
  return out;
}

}  // namespace

TEST_CASE("Unflushed stdout is written once, not duplicated, when stdout is a file") {
  const int status = run_isolated([] { return unflushed_output_is_written_once(StdoutCapture::Kind::file); });
  INFO(procpool_test::describe_status(status));
  CHECK(status == 0);
}

TEST_CASE("Unflushed stdout is written once, not duplicated, when stdout is a pipe") {
  const int status = run_isolated([] { return unflushed_output_is_written_once(StdoutCapture::Kind::pipe); });
  INFO(procpool_test::describe_status(status));
  CHECK(status == 0);
}

TEST_CASE("The child's own unflushed output is flushed before it ends, even when it throws") {
  const int status = run_isolated([] {
    StdoutCapture capture;
    procpool::Process p{[]() -> int {
      std::printf("child-printf ");
      std::cout << "child-cout ";
      throw std::runtime_error("after printing");
    }};
    p.start();
    try {
      (void)p.get();
      return fail(1, "get() did not throw");
    } catch (const procpool::RemoteError&) {
    }
    capture.restore();
    const std::string text = capture.text();
    if (count_occurrences(text, "child-printf ") != 1 || count_occurrences(text, "child-cout ") != 1)
      return fail(2, "the child's output was lost or duplicated: [" + text + "]");
    return 0;
  });
  INFO(procpool_test::describe_status(status));
  CHECK(status == 0);
}

TEST_CASE("The child ends with _exit: the parent's atexit handlers do not run in it") {
  const int status = run_isolated([] {
    if (open_trace() < 0) return fail(1, "no trace file");
    std::atexit([] { write_trace("atexit"); });
    procpool::Process p{[] { return 1; }};
    p.start();
    if (p.get() != 1) return fail(2, "result");
    procpool::Process threw{[] { throw std::runtime_error("x"); }};
    threw.start();
    try {
      threw.get();
    } catch (const procpool::RemoteError&) {
    }
    if (!read_trace().empty()) return fail(3, "an atexit handler ran in the child: [" + read_trace() + "]");
    // Positive control: a child ending with exit() does run it.
    control_child_exits_normally();
    if (count_occurrences(read_trace(), "atexit") != 1) return fail(4, "the control did not run the handler");
    return 0;
  });
  INFO(procpool_test::describe_status(status));
  CHECK(status == 0);
}

TEST_CASE("The child ends with _exit: the parent's static objects are not destroyed in it") {
  const int status = run_isolated([] {
    if (open_trace() < 0) return fail(1, "no trace file");
    static TracesOnDestruction tracer;
    (void)tracer;
    procpool::Process p{[] { return std::string("ok"); }};
    p.start();
    if (p.get() != "ok") return fail(2, "result");
    if (!read_trace().empty()) return fail(3, "a static destructor ran in the child: [" + read_trace() + "]");
    control_child_exits_normally();
    if (count_occurrences(read_trace(), "static-destructor") != 1) return fail(4, "the control did not run it");
    return 0;
  });
  INFO(procpool_test::describe_status(status));
  CHECK(status == 0);
}

TEST_CASE("A child never returns into the test framework, even when its callable throws") {
  // If a child ever came back here, it would run the code after get() too and write its own pid.
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  const pid_t test_pid = ::getpid();
  procpool::Process child{[]() -> int { throw std::runtime_error("thrown in the child"); }};
  child.start();
  CHECK_THROWS_AS(child.get(), procpool::RemoteError);
  const pid_t here = ::getpid();
  (void)::write(p[1], &here, sizeof here);
  ::close(p[1]);
  std::vector<pid_t> writers;
  pid_t got = 0;
  while (::read(p[0], &got, sizeof got) == static_cast<ssize_t>(sizeof got)) writers.push_back(got);
  ::close(p[0]);
  CHECK(writers == std::vector<pid_t>{test_pid});
  CHECK(here == test_pid);
  CHECK(procpool_test::child_pids().empty());
}

TEST_CASE("The child's signal mask equals the parent's at start()") {
  sigset_t extra;
  sigemptyset(&extra);
  sigaddset(&extra, SIGUSR1);
  sigaddset(&extra, SIGUSR2);
  sigaddset(&extra, SIGRTMIN + 3);
  sigset_t saved;
  ::pthread_sigmask(SIG_BLOCK, &extra, &saved);
  const std::vector<int> parent_mask = blocked_signals();
  procpool::Process p{blocked_signals};
  p.start();
  const std::vector<int> child_mask = p.get();
  ::pthread_sigmask(SIG_SETMASK, &saved, nullptr);
  CHECK(child_mask == parent_mask);
  CHECK(std::find(child_mask.begin(), child_mask.end(), SIGUSR1) != child_mask.end());
  CHECK(std::find(child_mask.begin(), child_mask.end(), SIGUSR2) != child_mask.end());
  // And no signal is blocked in the child that the parent had not blocked (fork_child blocks all
  // signals around fork; the child must restore the caller's mask before running the callable).
  const std::vector<int> plain = blocked_signals();
  procpool::Process q{blocked_signals};
  q.start();
  CHECK(q.get() == plain);
}

TEST_CASE("The child's signal dispositions equal the parent's at start()") {
  const int status = run_isolated([] {
    ::signal(SIGUSR1, SIG_IGN);
    ::signal(SIGUSR2, [](int) {});
    const auto dispositions = [] {
      std::vector<std::uintptr_t> out;
      for (int sig = 1; sig < NSIG; ++sig) {
        struct sigaction sa {};
        ::sigaction(sig, nullptr, &sa);
        out.push_back(reinterpret_cast<std::uintptr_t>(sa.sa_handler));
      }
      return out;
    };
    procpool::Process p{dispositions};
    p.start();
    if (p.get() != dispositions()) return fail(1, "dispositions differ in the child");
    return 0;
  });
  INFO(procpool_test::describe_status(status));
  CHECK(status == 0);
}

TEST_CASE("A child does not hold another Process's pipe open") {
  // Pitfall 4: the second child must not inherit the first child's reply pipe, or the first
  // Process's end-of-file would depend on the second child.
  const std::vector<int> before = open_fds();
  procpool::Process first{[] {
    std::this_thread::sleep_for(100ms);
    return 1;
  }};
  first.start();
  std::vector<int> first_fds;
  for (int fd : open_fds())
    if (std::find(before.begin(), before.end(), fd) == before.end()) first_fds.push_back(fd);
  REQUIRE_FALSE(first_fds.empty());
  procpool::Process second{open_fds};
  second.start();
  const std::vector<int> in_second = second.get();
  for (int fd : first_fds) {
    INFO("the first Process's descriptor " << fd);
    CHECK(std::find(in_second.begin(), in_second.end(), fd) == in_second.end());
  }
  CHECK(first.get() == 1);
}

TEST_CASE("join() reaps only its own child: the caller's other children are left alone") {
  // Pitfall 7: never waitpid(-1), never a SIGCHLD handler behind the caller's back.
  struct sigaction chld_before {};
  ::sigaction(SIGCHLD, nullptr, &chld_before);
  std::fflush(nullptr);
  const pid_t mine = ::fork();
  if (mine == 0) ::_exit(7);  // ends at once: a zombie until we reap it
  REQUIRE(mine > 0);
  std::this_thread::sleep_for(20ms);
  procpool::Process p{[] {
    std::this_thread::sleep_for(30ms);
    return 2;
  }};
  p.start();
  CHECK(p.get() == 2);
  CHECK_FALSE(p.is_alive());
  int status = 0;
  REQUIRE(::waitpid(mine, &status, 0) == mine);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 7);
  struct sigaction chld_after {};
  ::sigaction(SIGCHLD, nullptr, &chld_after);
  CHECK(chld_after.sa_handler == chld_before.sa_handler);
}

TEST_CASE("A busy background thread in the parent does not hang the children") {
  // Pitfall 3: the child of a multithreaded parent has one thread; locks the other thread held
  // (the allocator's, stdio's) must still work in the child.
  std::atomic<bool> stop{false};
  std::thread busy([&stop] {
    std::vector<std::string> churn;
    while (!stop.load(std::memory_order_relaxed)) {
      churn.emplace_back(1000, 'c');
      if (churn.size() > 100) churn.clear();
      char line[64];
      std::snprintf(line, sizeof line, "%zu", churn.size());
    }
  });
  bool all_finished = true;
  for (int i = 0; i < 20; ++i) {
    procpool::Process p{[](int n) {
                          std::vector<std::string> v(100, std::string(500, 'v'));
                          char line[64];
                          std::snprintf(line, sizeof line, "%d", n);
                          return std::string(line) + std::to_string(v.size());
                        },
                        i};
    p.start();
    if (!p.join_for(10s)) {
      all_finished = false;
      p.kill();
      p.join();
      break;
    }
    CHECK(p.get() == std::to_string(i) + "100");
  }
  stop = true;
  busy.join();
  CHECK(all_finished);
}
