// procpool::detail: the one place that forks, and how a forked child ends.
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
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <ostream>
#include <string>
#include <utility>

#include <fmt/core.h>

#include "child_process.hpp"
#include "fd.hpp"
#include "messages.hpp"

// NOLINTNEXTLINE(bugprone-reserved-identifier): gcov's own flush function, declared weak to call it if linked
extern "C" void __gcov_dump(void) __attribute__((weak));

namespace procpool::detail {

#if defined(__GLIBCXX__)
/// libstdc++'s standard streams, named by their symbols and referenced weakly: <iostream> is not
/// included (see flush_standard_streams), and a program that never uses them may not have them.
extern std::ostream weak_cout __asm__("_ZSt4cout") __attribute__((weak));
extern std::ostream weak_cerr __asm__("_ZSt4cerr") __attribute__((weak));
extern std::ostream weak_clog __asm__("_ZSt4clog") __attribute__((weak));
extern std::wostream weak_wcout __asm__("_ZSt5wcout") __attribute__((weak));
extern std::wostream weak_wcerr __asm__("_ZSt5wcerr") __attribute__((weak));
extern std::wostream weak_wclog __asm__("_ZSt5wclog") __attribute__((weak));

/// Flushes the standard C++ streams of a program that turned off their sync with C stdio.
inline void flush_unsynced_cxx_streams() noexcept {
  try {
    if (&weak_cout != nullptr) weak_cout.flush();
    if (&weak_cerr != nullptr) weak_cerr.flush();
    if (&weak_clog != nullptr) weak_clog.flush();
    if (&weak_wcout != nullptr) weak_wcout.flush();
    if (&weak_wcerr != nullptr) weak_wcerr.flush();
    if (&weak_wclog != nullptr) weak_wclog.flush();
  } catch (...) {
    // A stream whose exceptions() mask throws on failure: nothing sensible to do about it here.
  }
}
#endif

/// Flushes C stdio and, when they buffer on their own, the standard C++ streams, so buffered
/// output is written once, not once per process (pitfall 1: with stdout redirected to a file or a
/// pipe, unflushed output is duplicated).
///
/// Without <iostream>, which the library does not otherwise need and which (libstdc++ before
/// GCC 13) gives every translation unit that includes it a static initializer. The C++ streams
/// need a flush of their own only when the program turned off their sync with C stdio:
///  - synced (the default), libstdc++'s std::cout and friends keep no buffer, every output goes
///    straight to stdout's FILE, so fflush(nullptr) writes it out; libc++'s streams always work
///    that way, whatever sync_with_stdio was told;
///  - unsynced, libstdc++'s streams buffer on their own (a filebuf on the descriptor). A program
///    can only get there by calling std::ios_base::sync_with_stdio(false), which constructs the
///    streams first, so they exist and are flushed through weak references to their symbols.
/// std::ios_base::sync_with_stdio(true) asks which case holds: in libstdc++ it only reports the
/// current setting (only a change to false does anything), so the caller's setting is kept.
inline void flush_standard_streams() noexcept {
#if defined(__GLIBCXX__)
  if (!std::ios_base::sync_with_stdio(true)) flush_unsynced_cxx_streams();
#endif
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
  /// The forking process reaps its children itself, by pid, and keeps SIGCHLD at its default (the
  /// zygote): no child of it can be reaped by anyone else before its pidfd is open, so
  /// fork_child_with_pidfd needs no gate pipe (see fork_child_impl), which saves two descriptors
  /// and a read and a write per fork.
  bool sole_reaper = false;
};

/// fork_child and fork_child_with_pidfd: one implementation.
template <class ChildMain>
[[nodiscard]] ChildProcess fork_child_impl(ChildMain&& child_main, std::initializer_list<int> keep_fds,
                                           ForkOptions options, bool want_pidfd) {
  bind_child_functions();
  if (!options.streams_flushed) flush_standard_streams();
  // With SIGCHLD ignored the kernel reaps a child the moment it ends, with no signal to block:
  // one that ended before pidfd_open would leave no pidfd and so no status. The child therefore
  // waits for a byte on this gate, written once the pidfd exists (usually before the child first
  // runs: the parent needs only microseconds). A byte, not end-of-file, so that a copy of the
  // write end inherited by some other fork cannot hold the child back. A sole reaper (the zygote)
  // needs no gate: nobody but itself reaps its children.
  Pipe gate;
  if (want_pidfd && !options.sole_reaper) gate = make_pipe();
  sigset_t all;
  sigset_t old_mask;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old_mask);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (gate.read) {
      gate.write.reset();  // our own copy must not keep end-of-file away if the parent dies first
      char go = 0;
      (void)read_some(gate.read.get(), &go, 1);  // the byte, or end-of-file if the parent died first
    }
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
  Fd pidfd;
  // Still inside the blocked window: a SIGCHLD handler of the caller that reaps with waitpid(-1)
  // cannot run on this thread before the pidfd exists, and a pidfd opened before the reap keeps
  // the child's exit status readable afterwards (see reaped_child_status). The child cannot end
  // before this either (the gate above), so no other thread's handler can reap it first.
  if (pid > 0 && want_pidfd) {
    pidfd = open_pidfd(pid);
    if (gate.write) {
      const char go = 1;
      (void)write_all(gate.write.get(), &go, 1);  // an empty pipe: never blocks
    }
  }
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  if (pid < 0) {
    const char* cause = fork_errno == EAGAIN ? " (the process limit RLIMIT_NPROC or the system's pid limit is reached)"
                        : fork_errno == ENOMEM ? " (out of memory)"
                                               : "";
    throw SystemError(fmt::format("procpool: cannot fork a child process{}", cause), fork_errno);
  }
  return ChildProcess(pid, std::move(pidfd));
}

/// Forks a child that runs `child_main()` and then exits with its return value via exit_child.
/// In the parent returns the child's pid, which the caller must reap by that pid (fork_child_with_pidfd
/// returns a ChildProcess handle instead); throws procpool::Error (with the errno text) if fork fails,
/// in which case no child exists. Around fork all signals are blocked, so no handler of the caller runs
/// in the child before the child has restored the caller's signal mask; the library's descriptors
/// other than `keep_fds` are closed in the child.
template <class ChildMain>
[[nodiscard]] pid_t fork_child(ChildMain&& child_main, std::initializer_list<int> keep_fds, ForkOptions options = {}) {
  return fork_child_impl(std::forward<ChildMain>(child_main), keep_fds, options, false).release();
}

/// fork_child, returning a handle to the child that holds a pidfd for it (kernels since 5.3),
/// opened before the forking thread's signals are unblocked and before the child runs anything,
/// so the child's exit status survives a caller that reaps children itself (pitfall 13). Costs a
/// pipe more than fork_child (two descriptors while it runs), unless options.sole_reaper.
///
/// Rejected alternatives: a raw clone3 with exit_signal = 0 (such a child is invisible to
/// waitpid(-1) without __WALL) skips glibc's fork bookkeeping (atfork handlers, the malloc and
/// stdio locks, the cached tid), which is unsafe when the caller has other threads; an
/// intermediate process that forks the real child and reports its status doubles the fork cost.
template <class ChildMain>
[[nodiscard]] ChildProcess fork_child_with_pidfd(ChildMain&& child_main, std::initializer_list<int> keep_fds,
                                                 ForkOptions options = {}) {
  return fork_child_impl(std::forward<ChildMain>(child_main), keep_fds, options, true);
}

}  // namespace procpool::detail
