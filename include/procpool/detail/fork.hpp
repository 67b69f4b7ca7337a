// procpool::detail: the one place that forks, and the words for how a child ended.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <iostream>
#include <string>

#include "fd.hpp"

extern "C" void __gcov_dump(void) __attribute__((weak));

namespace procpool::detail {

/// Flushes C stdio and the standard C++ streams, so buffered output is written once, not once per
/// process (pitfall: with stdout redirected to a file or pipe, unflushed output is duplicated).
inline void flush_standard_streams() noexcept {
  try {
    std::cout.flush();
    std::cerr.flush();
    std::clog.flush();
    std::wcout.flush();
    std::wcerr.flush();
    std::wclog.flush();
  } catch (...) {
    // A stream whose exceptions() mask throws on failure: nothing sensible to do about it here.
  }
  std::fflush(nullptr);
}

/// Ends a forked child that wrote nothing to the standard streams (the zygote) with _exit, so no
/// atexit handler and no static destructor of the parent program runs in the child. Coverage
/// data is written first.
[[noreturn]] inline void exit_child_unflushed(int code) noexcept {
  if (__gcov_dump != nullptr) __gcov_dump();
  // Called through its address, resolved when the program started: _exit cannot be bound ahead
  // by calling it (see bind_child_functions).
  void (*volatile exit_now)(int) = &::_exit;
  for (;;) exit_now(code);
}

/// Ends a forked child: flushes its output, then leaves as exit_child_unflushed does.
[[noreturn]] inline void exit_child(int code) noexcept {
  flush_standard_streams();
  exit_child_unflushed(code);
}

/// Binds, once and in the calling process, the library functions that only the forked children
/// call (the zygote and the workers), each by a call that does nothing (a bad descriptor, an
/// impossible pid, a zero length) and leaves errno as it was. With lazy binding every process
/// would otherwise look each of them up again on its first call: the dynamic linker's search
/// faults in pages of every library's symbol tables and writes the caller's GOT, which costs a
/// fresh child some hundred microseconds in a VM. Children inherit the bound entries. (Functions
/// that cannot be called for nothing, _exit and mallopt, are called through their addresses
/// instead, which the dynamic linker resolves when the program starts.)
inline void bind_child_functions() noexcept {
  static const bool bound = [] {
    const int saved_errno = errno;
    sigset_t set;
    sigemptyset(&set);
    int value = 0;
    (void)::prctl(PR_GET_PDEATHSIG, &value);
    (void)::getppid();
    (void)::syscall(SYS_getpid);
    (void)::poll(nullptr, 0, 0);
    (void)::close(-1);
    (void)::fcntl(-1, F_GETFL);
    (void)::setsockopt(-1, SOL_SOCKET, SO_SNDBUF, &value, sizeof value);
    msghdr msg{};
    (void)::sendmsg(-1, &msg, MSG_NOSIGNAL);
    (void)::recvmsg(-1, &msg, 0);
    (void)::read(-1, nullptr, 0);
    (void)::write(-1, nullptr, 0);
    (void)::waitpid(::getpid(), nullptr, WNOHANG);  // we are not our own child: ECHILD
    cpu_set_t none;
    CPU_ZERO(&none);
    (void)::sched_setaffinity(-1, sizeof none, &none);  // no such pid (and an empty set): fails
    (void)::sched_yield();
    (void)::madvise(nullptr, 0, MADV_NORMAL);
    (void)::sysconf(_SC_PAGESIZE);
    // Volatile: compilers turn realloc(nullptr, n) into malloc(n), or drop an unused block.
    void* volatile block = nullptr;
    block = std::realloc(block, 1);
    std::free(block);
    (void)std::chrono::steady_clock::now();
    errno = saved_errno;
    return true;
  }();
  (void)bound;
}

/// How the library forks.
struct ForkOptions {
  /// Deliver SIGKILL to the child when the forking thread's process dies (PR_SET_PDEATHSIG).
  /// Only sound when the forking process is single-threaded (the signal follows the parent
  /// *thread*), so the pool sets it for workers forked by its single-threaded zygote.
  bool die_with_parent = false;
  /// The forking process has written nothing to its streams since they were last flushed (the
  /// zygote: forked right after a flush, it runs no user code), so they need no flush before fork.
  bool streams_flushed = false;
};

/// Forks a child that runs `child_main()` and then exits with its return value via exit_child.
/// In the parent returns the child's pid; throws procpool::Error (with the errno text) if fork fails,
/// in which case no child exists. Around fork all signals are blocked, so no handler of the caller runs
/// in the child before the child has restored the caller's signal mask; the library's descriptors
/// other than `keep_fds` are closed in the child.
template <class ChildMain>
[[nodiscard]] pid_t fork_child(ChildMain&& child_main, std::initializer_list<int> keep_fds,
                               ForkOptions options = {}) {
  bind_child_functions();
  if (!options.streams_flushed) flush_standard_streams();
  sigset_t all;
  sigset_t old_mask;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old_mask);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (options.die_with_parent) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      // The parent may have died before prctl ran: then nobody would ever send the signal.
      if (::getppid() != parent) ::_exit(1);
    }
    FdRegistry::close_all_except(keep_fds);
    pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
    int code = 1;
    try {
      code = child_main();
    } catch (...) {
      code = 1;
    }
    exit_child(code);
  }
  const int fork_errno = errno;
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  if (pid < 0) {
    std::string why = "procpool: cannot fork a child process";
    if (fork_errno == EAGAIN) why += " (the process limit RLIMIT_NPROC or the system's pid limit is reached)";
    if (fork_errno == ENOMEM) why += " (out of memory)";
    throw SystemError(why, fork_errno);
  }
  return pid;
}

/// The name of a signal, e.g. "SIGKILL", or "signal 42" for one without a standard name.
[[nodiscard]] inline std::string signal_name(int sig) {
  if (const char* abbrev = ::sigabbrev_np(sig)) return std::string("SIG") + abbrev;
  return "signal " + std::to_string(sig);
}

/// Python's exitcode convention for a waitpid status: the exit code, or -signal.
[[nodiscard]] inline int exitcode_from_status(int status) noexcept {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return -1;
}

/// "killed by signal 9 (SIGKILL)" or "exited with code 3", from an exitcode in Python's convention.
[[nodiscard]] inline std::string describe_exitcode(int exitcode) {
  if (exitcode < 0)
    return "killed by signal " + std::to_string(-exitcode) + " (" + signal_name(-exitcode) + ")";
  return "exited with code " + std::to_string(exitcode);
}

/// The same as a finite verb phrase: "was killed by signal 9 (SIGKILL)" or "exited with code 3".
[[nodiscard]] inline std::string describe_ending(int exitcode) {
  return exitcode < 0 ? "was " + describe_exitcode(exitcode) : describe_exitcode(exitcode);
}

}  // namespace procpool::detail
