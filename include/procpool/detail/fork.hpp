// procpool::detail: the one place that forks, and the words for how a child ended.
#pragma once

#include <signal.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
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

/// Ends a forked child: flushes its output and leaves with _exit, so no atexit handler and no
/// static destructor of the parent program runs in the child. Coverage data is written first.
[[noreturn]] inline void exit_child(int code) noexcept {
  flush_standard_streams();
  if (__gcov_dump != nullptr) __gcov_dump();
  ::_exit(code);
}

/// How the library forks.
struct ForkOptions {
  /// Deliver SIGKILL to the child when the forking thread's process dies (PR_SET_PDEATHSIG).
  /// Only sound when the forking process is single-threaded (the signal follows the parent
  /// *thread*), so the pool sets it for workers forked by its single-threaded zygote.
  bool die_with_parent = false;
};

/// Forks a child that runs `child_main()` and then exits with its return value via exit_child.
/// In the parent returns the child's pid; throws procpool::Error (with the errno text) if fork fails,
/// in which case no child exists. Around fork all signals are blocked, so no handler of the caller runs
/// in the child before the child has restored the caller's signal mask; the library's descriptors
/// other than `keep_fds` are closed in the child.
template <class ChildMain>
[[nodiscard]] pid_t fork_child(ChildMain&& child_main, std::initializer_list<int> keep_fds,
                               ForkOptions options = {}) {
  flush_standard_streams();
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
