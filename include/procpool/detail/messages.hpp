// procpool::detail: the words of procpool's messages, in one place, built with fmt: how a child
// ended ("was killed by signal 9 (SIGKILL)"), which worker it was, and the texts of the errors
// that replace an item when its worker dies or runs past the task timeout.
#pragma once

#include <fmt/core.h>
#include <signal.h>
#include <string.h>  // sigabbrev_np (glibc 2.32 and later)
#include <sys/types.h>

#include <chrono>
#include <string>
#include <string_view>

namespace procpool::detail {

/// The name of a standard signal from procpool's own table ("SIGKILL"), or "signal 42" for one
/// without a standard name (the real-time signals, or none at all). The table is what signal_name
/// uses on C libraries without sigabbrev_np (glibc before 2.32, musl); it lists the signals by
/// their macros, so it is right on every architecture, and names each number as glibc does
/// (SIGABRT, not SIGIOT; SIGPOLL, not SIGIO).
[[nodiscard]] inline std::string signal_name_from_table(int sig) {
  const char* name = nullptr;
  switch (sig) {
    case SIGHUP: name = "SIGHUP"; break;
    case SIGINT: name = "SIGINT"; break;
    case SIGQUIT: name = "SIGQUIT"; break;
    case SIGILL: name = "SIGILL"; break;
    case SIGTRAP: name = "SIGTRAP"; break;
    case SIGABRT: name = "SIGABRT"; break;
    case SIGBUS: name = "SIGBUS"; break;
    case SIGFPE: name = "SIGFPE"; break;
    case SIGKILL: name = "SIGKILL"; break;
    case SIGUSR1: name = "SIGUSR1"; break;
    case SIGSEGV: name = "SIGSEGV"; break;
    case SIGUSR2: name = "SIGUSR2"; break;
    case SIGPIPE: name = "SIGPIPE"; break;
    case SIGALRM: name = "SIGALRM"; break;
    case SIGTERM: name = "SIGTERM"; break;
#ifdef SIGSTKFLT
    case SIGSTKFLT: name = "SIGSTKFLT"; break;
#endif
    case SIGCHLD: name = "SIGCHLD"; break;
    case SIGCONT: name = "SIGCONT"; break;
    case SIGSTOP: name = "SIGSTOP"; break;
    case SIGTSTP: name = "SIGTSTP"; break;
    case SIGTTIN: name = "SIGTTIN"; break;
    case SIGTTOU: name = "SIGTTOU"; break;
    case SIGURG: name = "SIGURG"; break;
    case SIGXCPU: name = "SIGXCPU"; break;
    case SIGXFSZ: name = "SIGXFSZ"; break;
    case SIGVTALRM: name = "SIGVTALRM"; break;
    case SIGPROF: name = "SIGPROF"; break;
    case SIGWINCH: name = "SIGWINCH"; break;
#ifdef SIGPOLL
    case SIGPOLL: name = "SIGPOLL"; break;
#elif defined(SIGIO)
    case SIGIO: name = "SIGIO"; break;
#endif
#ifdef SIGPWR
    case SIGPWR: name = "SIGPWR"; break;
#endif
    case SIGSYS: name = "SIGSYS"; break;
    default: break;
  }
  if (name != nullptr) return name;
  return fmt::format("signal {}", sig);
}

/// The name of a signal, e.g. "SIGKILL", or "signal 42" for one without a standard name. Asks the
/// C library (sigabbrev_np) where it can, procpool's table (signal_name_from_table) otherwise.
[[nodiscard]] inline std::string signal_name(int sig) {
#if defined(__GLIBC__) && defined(__GLIBC_PREREQ)
#if __GLIBC_PREREQ(2, 32)
  if (const char* abbrev = ::sigabbrev_np(sig)) return fmt::format("SIG{}", abbrev);
  return fmt::format("signal {}", sig);
#else
  return signal_name_from_table(sig);
#endif
#else
  return signal_name_from_table(sig);
#endif
}

/// How a child ended, from its exitcode in Python's convention: "exited with code 3" (0 and up),
/// "killed by signal 9 (SIGKILL)" (-1 to -255: minus the signal), or "ended in an unknown way"
/// (anything lower: kExitcodeUnknown, -256, of fork.hpp, the status another waiter took).
[[nodiscard]] inline std::string describe_exitcode(int exitcode) {
  if (exitcode >= 0) return fmt::format("exited with code {}", exitcode);
  if (exitcode > -256) return fmt::format("killed by signal {} ({})", -exitcode, signal_name(-exitcode));
  return "ended in an unknown way";
}

/// The same as a finite verb phrase: "was killed by signal 9 (SIGKILL)", "exited with code 3" or
/// "ended in an unknown way".
[[nodiscard]] inline std::string describe_ending(int exitcode) {
  if (exitcode < 0 && exitcode > -256) return fmt::format("was {}", describe_exitcode(exitcode));
  return describe_exitcode(exitcode);
}

/// A pool's worker by its index and pid: "worker 1 (pid 4242)".
[[nodiscard]] inline std::string describe_worker(int index, pid_t pid) {
  return fmt::format("worker {} (pid {})", index, pid);
}

/// A duration as a person would write it: "500 ms" (whole milliseconds, however many: "2000 ms"),
/// else "250 us", else "1500 ns".
[[nodiscard]] inline std::string describe_duration(std::chrono::nanoseconds d) {
  using std::chrono::duration_cast;
  using std::chrono::microseconds;
  using std::chrono::milliseconds;
  if (d % milliseconds{1} == std::chrono::nanoseconds::zero())
    return fmt::format("{} ms", duration_cast<milliseconds>(d).count());
  if (d % microseconds{1} == std::chrono::nanoseconds::zero())
    return fmt::format("{} us", duration_cast<microseconds>(d).count());
  return fmt::format("{} ns", d.count());
}

// The messages below name a worker as its transport describes it: describe_worker() for a local
// pool ("worker 1 (pid 4242)"); a transport across machines prefixes where it runs.

/// The message of the ProcessError for an item whose worker died while running it: "procpool::Pool:
/// worker 1 (pid 4242) was killed by signal 9 (SIGKILL) while running item 41; the worker was
/// replaced". `who` names the pool ("procpool::Pool"), `what` the item ("item 41").
[[nodiscard]] inline std::string worker_ended_message(std::string_view who, std::string_view worker, int exitcode,
                                                      std::string_view what) {
  return fmt::format("{}: {} {} while running {}; the worker was replaced", who, worker, describe_ending(exitcode),
                     what);
}

/// The message of the TimeoutError for an item that ran past the task timeout: "procpool::Pool:
/// item 41 ran longer than the task timeout of 500 ms; worker 1 (pid 4242) was killed and replaced".
[[nodiscard]] inline std::string task_timeout_message(std::string_view who, std::string_view what,
                                                      std::chrono::nanoseconds timeout, std::string_view worker) {
  return fmt::format("{}: {} ran longer than the task timeout of {}; {} was killed and replaced", who, what,
                     describe_duration(timeout), worker);
}

/// Why a pool is broken when a worker's initializer ran past the task timeout: "procpool::Pool: the
/// initializer ran longer than the task timeout of 500 ms in worker 1 (pid 4242), which was killed;
/// the pool cannot start workers (make the initializer return sooner, or raise task_timeout)".
[[nodiscard]] inline std::string initializer_timeout_message(std::string_view who, std::chrono::nanoseconds timeout,
                                                             std::string_view worker) {
  return fmt::format(
      "{}: the initializer ran longer than the task timeout of {} in {}, which was killed; the pool cannot "
      "start workers (make the initializer return sooner, or raise task_timeout)",
      who, describe_duration(timeout), worker);
}

/// Why a pool is broken when its workers keep dying in the initializer: "procpool::Pool: worker 1
/// (pid 4242) was killed by signal 11 (SIGSEGV) while running the initializer, three times in a row".
[[nodiscard]] inline std::string initializer_deaths_message(std::string_view who, std::string_view worker,
                                                            int exitcode) {
  return fmt::format("{}: {} {} while running the initializer, three times in a row", who, worker,
                     describe_ending(exitcode));
}

/// The start of the message of items whose chunk lost its worker three times outside any item
/// (the item's name follows): "procpool::Pool: worker 1 (pid 4242) was killed by signal 9 (SIGKILL)
/// three times while handling the chunk holding ".
[[nodiscard]] inline std::string chunk_deaths_prefix(std::string_view who, std::string_view worker, int exitcode) {
  return fmt::format("{}: {} {} three times while handling the chunk holding ", who, worker, describe_ending(exitcode));
}

/// The message of the CancelledError of a task stopped by Future::cancel: "procpool::Pool: the
/// submitted task was cancelled".
[[nodiscard]] inline std::string cancelled_message(std::string_view who, std::string_view what) {
  return fmt::format("{}: {} was cancelled", who, what);
}

/// The message of the TimeoutError of an item whose call ran out of time: "procpool::Pool: item 41
/// had not finished when its call's timeout of 2 s passed; ...".
[[nodiscard]] inline std::string deadline_message(std::string_view who, std::string_view what,
                                                  std::chrono::nanoseconds timeout) {
  return fmt::format(
      "{}: {} had not finished when its call's timeout of {} passed; the call's unfinished items failed, and workers "
      "running them were killed and replaced (raise the timeout, or split the work)",
      who, what, describe_duration(timeout));
}

}  // namespace procpool::detail
