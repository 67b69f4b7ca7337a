// Helpers shared by procpool's tests: counting descriptors and children, running a test body in a
// forked helper process when it changes process-wide state (rlimits, stdout, uid, timers), a pipe
// of ints between a test and its workers, and the small tasks and option builders many tests use.
// Header-only; everything lives in namespace procpool_test. Parts of it run inside forked children
// (workers, isolated bodies), so nothing here uses Catch2: helpers report failure by their result.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <numeric>
#include <optional>
#include <procpool/pool.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

// Defined only when UBSan's runtime (with its vptr checks) is linked in.
extern "C" void __ubsan_handle_dynamic_type_cache_miss(void*, void*, void*) __attribute__((weak));
extern "C" void __ubsan_handle_dynamic_type_cache_miss_abort(void*, void*, void*) __attribute__((weak));

namespace procpool_test {

/// The descriptors open in this process (from /proc/self/fd), without the one used to list them.
inline std::vector<int> open_fds() {
  std::vector<int> fds;
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return fds;
  const int own = ::dirfd(dir);
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    const int fd = std::atoi(entry->d_name);
    if (fd != own) fds.push_back(fd);
  }
  ::closedir(dir);
  return fds;
}

/// How many descriptors are open in this process (see open_fds).
inline int open_fd_count() { return static_cast<int>(open_fds().size()); }

/// Fills every free descriptor below `limit` (temporarily lowering RLIMIT_NOFILE to it) with
/// descriptors of /dev/null; returns them. Afterwards no descriptor below `limit` is free.
/// (Not copies of fd 0: a test runner may start us with stdin closed.)
inline std::vector<int> fill_descriptors_below(int limit) {
  rlimit old{};
  ::getrlimit(RLIMIT_NOFILE, &old);
  const rlimit tight{static_cast<rlim_t>(limit), old.rlim_max};
  ::setrlimit(RLIMIT_NOFILE, &tight);
  std::vector<int> fillers;
  for (int fd; (fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0;) fillers.push_back(fd);
  ::setrlimit(RLIMIT_NOFILE, &old);
  return fillers;
}

/// One process as /proc/<pid>/stat describes it.
struct ProcessInfo {
  pid_t pid;
  pid_t ppid;
  char state;  // 'R', 'S', 'Z' (zombie: ended, not yet reaped), ...
  std::string name;
};

/// The process `pid` (or thread, with `dir` = "/proc/<pid>/task"), nullopt if it has ended.
inline std::optional<ProcessInfo> process_info(const std::string& dir, const std::string& pid) {
  std::ifstream in(dir + "/" + pid + "/stat");
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so parse after the last ')'.
  const auto open = line.find('(');
  const auto close = line.rfind(')');
  if (open == std::string::npos || close == std::string::npos || close < open) return std::nullopt;
  std::istringstream rest(line.substr(close + 1));
  char state = '?';
  long ppid = -1;
  rest >> state >> ppid;
  return ProcessInfo{static_cast<pid_t>(std::atol(pid.c_str())), static_cast<pid_t>(ppid), state,
                     line.substr(open + 1, close - open - 1)};
}

/// Every process on the machine (that this one may see).
inline std::vector<ProcessInfo> all_processes() {
  std::vector<ProcessInfo> all;
  DIR* dir = ::opendir("/proc");
  if (dir == nullptr) return all;
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
    if (auto info = process_info("/proc", entry->d_name)) all.push_back(std::move(*info));
  }
  ::closedir(dir);
  return all;
}

/// One process that is a child of this one.
struct ChildInfo {
  pid_t pid;
  char state;  // 'R', 'S', 'Z' (zombie: ended, not yet reaped), ...
};

/// Every process whose parent is this process, zombies included.
inline std::vector<ChildInfo> child_infos() {
  std::vector<ChildInfo> children;
  const pid_t self = ::getpid();
  for (const ProcessInfo& p : all_processes())
    if (p.ppid == self) children.push_back({p.pid, p.state});
  return children;
}

/// The first line of a small /proc file, or "?".
inline std::string proc_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (!std::getline(in, line) || line.empty()) return "?";
  return line;
}

/// Writes `root` and its descendants to stderr: for each thread its state, the kernel function it
/// waits in, the system call it is in and, when readable, its kernel stack. What a hung test
/// leaves behind, so that a hang seen once in CI can be understood from the log alone.
inline void dump_process_tree(pid_t root) {
  const std::vector<ProcessInfo> all = all_processes();
  std::vector<std::pair<pid_t, int>> todo{{root, 0}};
  while (!todo.empty()) {
    const auto [pid, depth] = todo.back();
    todo.pop_back();
    const std::string base = "/proc/" + std::to_string(pid);
    std::vector<std::string> threads;
    if (DIR* dir = ::opendir((base + "/task").c_str())) {
      while (const dirent* entry = ::readdir(dir))
        if (entry->d_name[0] >= '0' && entry->d_name[0] <= '9') threads.emplace_back(entry->d_name);
      ::closedir(dir);
    }
    for (const std::string& tid : threads) {
      const auto info = process_info(base + "/task", tid);
      if (!info) continue;
      const std::string task = base + "/task/" + tid;
      std::string syscall = proc_line(task + "/syscall");
      syscall = syscall.substr(0, syscall.find(' '));
      std::fprintf(stderr, "%*s%s %d (%s) state %c, waits in %s, system call %s\n", depth * 2, "",
                   tid == std::to_string(pid) ? "process" : "  thread", info->pid, info->name.c_str(), info->state,
                   proc_line(task + "/wchan").c_str(), syscall.c_str());
      std::ifstream stack(task + "/stack");
      for (std::string frame; std::getline(stack, frame);)
        std::fprintf(stderr, "%*s    %s\n", depth * 2, "", frame.c_str());
    }
    for (const ProcessInfo& p : all)
      if (p.ppid == pid) todo.emplace_back(p.pid, depth + 1);
    // The user-space stacks too, where gdb is installed (CI installs it).
    if (::access("/usr/bin/gdb", X_OK) == 0) {
      const std::string command = "timeout 20 /usr/bin/gdb -p " + std::to_string(pid) +
                                  " -batch -nx -ex 'thread apply all bt' 2>&1 | grep -E '^(#|Thread)'";
      std::fflush(stderr);
      if (std::FILE* gdb = ::popen(command.c_str(), "r")) {
        char line[512];
        while (std::fgets(line, sizeof line, gdb) != nullptr) std::fprintf(stderr, "%*s    %s", depth * 2, "", line);
        ::pclose(gdb);
      }
    }
  }
}

/// The pids of this process's children, zombies included: empty means "no child remains".
inline std::vector<pid_t> child_pids() {
  std::vector<pid_t> pids;
  for (const ChildInfo& c : child_infos()) pids.push_back(c.pid);
  return pids;
}

/// The pids of this process's children that have ended but were never reaped.
inline std::vector<pid_t> zombie_children() {
  std::vector<pid_t> pids;
  for (const ChildInfo& c : child_infos())
    if (c.state == 'Z') pids.push_back(c.pid);
  return pids;
}

/// waitpid(pid, status, 0), retried while a signal interrupts it.
inline void waitpid_all(pid_t pid, int* status) {
  while (::waitpid(pid, status, 0) < 0 && errno == EINTR) {
  }
}

/// Exit code of run_isolated when the body threw.
inline constexpr int kIsolatedBodyThrew = 100;

/// How long run_isolated waits for its helper before it reports a hang (and kills it).
inline constexpr std::chrono::seconds kIsolatedWatchdog{30};

/// Runs `body` in a forked helper process and returns its waitpid status; the helper ends with
/// _exit(body()) and never returns into the test framework (an exception ends it with
/// _exit(kIsolatedBodyThrew)). For tests that change process-wide state. A body reports a failed
/// check by returning a distinct non-zero code (see fail()). A helper still running after
/// kIsolatedWatchdog is shown with its descendants (dump_process_tree), then killed.
inline int run_isolated(const std::function<int()>& body) {
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int code = kIsolatedBodyThrew;
    try {
      code = body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "run_isolated: the body threw: %s\n", e.what());
    } catch (...) {
      std::fprintf(stderr, "run_isolated: the body threw a non-std exception\n");
    }
    std::cout.flush();
    std::fflush(nullptr);
    ::_exit(code);
  }
  const long pidfd = ::syscall(SYS_pidfd_open, pid, 0);
  if (pidfd >= 0) {
    pollfd ended{static_cast<int>(pidfd), POLLIN, 0};
    const auto deadline = std::chrono::steady_clock::now() + kIsolatedWatchdog;
    int ready = 0;
    while (ready == 0) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      ready = ::poll(&ended, 1, static_cast<int>(left.count()));
      if (ready < 0 && errno == EINTR) ready = 0;
    }
    ::close(static_cast<int>(pidfd));
    if (ready == 0) {
      std::fprintf(stderr, "run_isolated: the helper %d still runs after %lld s; it and its descendants:\n", pid,
                   static_cast<long long>(kIsolatedWatchdog.count()));
      dump_process_tree(pid);
      ::kill(pid, SIGKILL);
    }
  }
  int status = 0;
  waitpid_all(pid, &status);
  return status;
}

/// A waitpid status in words, for test messages: "exited with code 3" or "killed by signal 9".
inline std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  return "status " + std::to_string(status);
}

/// In an isolated body: says which check failed (on stderr, which ctest shows) and returns `code`.
inline int fail(int code, const std::string& what) {
  std::fprintf(stderr, "isolated check %d failed: %s\n", code, what.c_str());
  std::fflush(stderr);
  return code;
}

/// In an isolated body: narrows the process's affinity mask to its first allowed CPU. Returns 0, or
/// the fail() code of the step that failed (2: reading the mask, 3: setting it).
inline int narrow_affinity_to_one_cpu() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return fail(2, "sched_getaffinity");
  int first = -1;
  for (int c = 0; c < CPU_SETSIZE && first < 0; ++c)
    if (CPU_ISSET(c, &set)) first = c;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(first, &one);
  if (::sched_setaffinity(0, sizeof one, &one) != 0) return fail(3, "sched_setaffinity");
  return 0;
}

/// Redirects fd 1 to a temporary file or to a pipe for its lifetime and reads back what was
/// written. Meant for isolated bodies (it changes fd 1 for the whole process).
class StdoutCapture {
 public:
  enum class Kind { file, pipe };

  /// Captures fd `fd` (1 by default; 2 captures stderr).
  explicit StdoutCapture(Kind kind = Kind::file, int fd = 1) : kind_(kind), fd_(fd) {
    std::cout.flush();
    std::fflush(stdout);
    std::fflush(stderr);
    saved_ = ::dup(fd_);
    int target = -1;
    if (kind == Kind::file) {
      char path[] = "/tmp/procpool-test-stdout-XXXXXX";
      target = ::mkstemp(path);
      ::unlink(path);
      read_fd_ = ::dup(target);
    } else {
      int p[2] = {-1, -1};
      if (::pipe(p) == 0) {
        read_fd_ = p[0];
        target = p[1];
        ::fcntl(read_fd_, F_SETFL, O_NONBLOCK);
      }
    }
    ::dup2(target, fd_);
    ::close(target);
  }
  StdoutCapture(const StdoutCapture&) = delete;
  StdoutCapture& operator=(const StdoutCapture&) = delete;
  ~StdoutCapture() {
    restore();
    if (read_fd_ >= 0) ::close(read_fd_);
  }

  /// Everything written to fd 1 so far (this process's own buffers are not flushed first: call
  /// this after the check you want, e.g. after a child has ended). Reading a pipe consumes it.
  std::string text() {
    if (kind_ == Kind::file) {
      std::string out;
      char buf[4096];
      off_t at = 0;
      for (ssize_t n; (n = ::pread(read_fd_, buf, sizeof buf, at)) > 0; at += n)
        out.append(buf, static_cast<std::size_t>(n));
      return out;
    }
    char buf[4096];
    for (ssize_t n; (n = ::read(read_fd_, buf, sizeof buf)) > 0;) piped_.append(buf, static_cast<std::size_t>(n));
    return piped_;
  }

  /// Puts the original fd 1 back (after flushing what is buffered for the capture).
  void restore() {
    if (saved_ < 0) return;
    std::cout.flush();
    std::fflush(stdout);
    std::fflush(stderr);
    ::dup2(saved_, fd_);
    ::close(saved_);
    saved_ = -1;
  }

 private:
  Kind kind_;
  int fd_ = 1;
  int saved_ = -1;
  int read_fd_ = -1;
  std::string piped_;
};

/// How many times `needle` occurs in `haystack`.
inline int count_occurrences(const std::string& haystack, const std::string& needle) {
  int n = 0;
  for (auto at = haystack.find(needle); at != std::string::npos; at = haystack.find(needle, at + needle.size())) ++n;
  return n;
}

/// Sets a signal's disposition to SIG_DFL for its lifetime. Catch2 installs handlers for SIGTERM,
/// SIGSEGV, SIGABRT, ... that a forked child inherits; a test that kills a child with one of them
/// uses this so the child dies quietly instead of printing a Catch2 failure report first.
class DefaultSignal {
 public:
  explicit DefaultSignal(int sig) : sig_(sig) {
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    ::sigaction(sig_, &dfl, &old_);
  }
  DefaultSignal(const DefaultSignal&) = delete;
  DefaultSignal& operator=(const DefaultSignal&) = delete;
  ~DefaultSignal() { ::sigaction(sig_, &old_, nullptr); }

 private:
  int sig_;
  struct sigaction old_ {};
};

/// Whether UBSan's vptr checks are linked in (they reject some of what forked children do).
inline bool ubsan_vptr_checks_present() {
  return &__ubsan_handle_dynamic_type_cache_miss != nullptr || &__ubsan_handle_dynamic_type_cache_miss_abort != nullptr;
}

/// Whether `needle` occurs in `haystack`.
inline bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

/// Whether process `pid` no longer exists (reaped, not merely ended).
inline bool pid_gone(pid_t pid) { return ::kill(pid, 0) == -1 && errno == ESRCH; }

/// In a child: die by `sig` with the default action and without a core file (the parent's
/// handlers, e.g. Catch2's or a sanitizer's, are inherited and would otherwise run first).
[[noreturn]] inline void die_by_signal(int sig) {
  const rlimit no_core{0, 0};
  ::setrlimit(RLIMIT_CORE, &no_core);
  ::signal(sig, SIG_DFL);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, sig);
  ::pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  ::raise(sig);
  ::_exit(99);  // not reached
}

/// The signal mask of the calling thread, in words: one '0' or '1' per signal 1..NSIG-1.
inline std::string thread_mask() {
  sigset_t mask;
  ::pthread_sigmask(SIG_SETMASK, nullptr, &mask);
  std::string d;
  for (int s = 1; s < NSIG; ++s) d += sigismember(&mask, s) == 1 ? '1' : '0';
  return d;
}

/// A pipe carrying ints between the test and its workers or children. Create it before the Pool
/// (or the fork): workers are forks of the process as it was when the pool was constructed, so
/// they inherit both ends. Usable in a child: it reports failure by its results (the constructor
/// throws std::runtime_error), so tests CHECK or REQUIRE what send returns.
class Channel {
 public:
  Channel() {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
    read_ = p[0];
    write_ = p[1];
  }
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;
  ~Channel() {
    ::close(read_);
    ::close(write_);
  }
  [[nodiscard]] int read_fd() const { return read_; }
  [[nodiscard]] int write_fd() const { return write_; }

  /// Writes `value` to the pipe; false if that failed.
  [[nodiscard]] bool send(int value) const {
    return ::write(write_, &value, sizeof value) == static_cast<ssize_t>(sizeof value);
  }

  /// The next int written to the pipe, or nullopt if none arrives within `timeout`.
  [[nodiscard]] std::optional<int> receive(std::chrono::milliseconds timeout) const {
    pollfd p{read_, POLLIN, 0};
    int r;
    do {
      r = ::poll(&p, 1, static_cast<int>(timeout.count()));
    } while (r < 0 && errno == EINTR);
    if (r <= 0) return std::nullopt;
    int value = 0;
    if (::read(read_, &value, sizeof value) != static_cast<ssize_t>(sizeof value)) return std::nullopt;
    return value;
  }

  /// Every int already in the pipe (does not wait).
  [[nodiscard]] std::vector<int> drain() const {
    std::vector<int> out;
    while (const auto v = receive(std::chrono::milliseconds(0))) out.push_back(*v);
    return out;
  }

 private:
  int read_ = -1;
  int write_ = -1;
};

/// PoolOptions with `n` workers, everything else default. (Not `PoolOptions{.workers = n}`: g++
/// -Wextra warns that the designated initializer leaves `initializer` without one.)
inline procpool::PoolOptions with_workers(std::size_t n) {
  procpool::PoolOptions options;
  options.workers = n;
  return options;
}

/// PoolOptions with two workers, everything else default.
inline procpool::PoolOptions two_workers() { return with_workers(2); }

/// MapOptions with chunks of `chunk` items, everything else default.
inline procpool::MapOptions with_chunk(std::size_t chunk) {
  procpool::MapOptions options;
  options.chunk_size = chunk;
  return options;
}

/// The task most pool tests map: i squared, as a long.
inline long square(int i) { return static_cast<long>(i) * i; }

/// 0, 1, ..., n-1.
inline std::vector<int> iota_vector(int n) {
  std::vector<int> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

/// square(0), ..., square(n-1): what mapping square over iota_vector(n) must give.
inline std::vector<long> squares(int n) {
  std::vector<long> v;
  for (int i = 0; i < n; ++i) v.push_back(square(i));
  return v;
}

}  // namespace procpool_test
