// procpool::Process: run one callable in a forked child process and get its result back.
#pragma once

#include <sys/types.h>

#include <fmt/core.h>

#include <chrono>
#include <concepts>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "codec.hpp"
#include "detail/buffer.hpp"
#include "detail/child_process.hpp"
#include "detail/fd.hpp"
#include "detail/fork.hpp"
#include "detail/messages.hpp"
#include "detail/remote_exception.hpp"
#include "error.hpp"

namespace procpool {

/// What Process::exitcode() (and the ProcessError from get()) reports for a child whose ending is
/// unknown: another waiter in this process reaped it first (a SIGCHLD handler looping on
/// waitpid(-1), or the kernel when SIGCHLD is ignored) on a kernel that cannot give the status
/// back (Linux before 6.15; from 6.15 procpool reads it from the child's pidfd). Never 0, so an
/// unknown ending never reads as success; and neither an exit code (0..255) nor -signal.
inline constexpr int exitcode_unknown = detail::kExitcodeUnknown;

namespace detail {

/// The first byte of a child's reply.
enum class ReplyKind : std::uint8_t { value = 1, exception = 2 };

/// The callable and its arguments, type-erased so that Process<R> depends only on R.
template <class R>
struct ProcessTask {
  virtual ~ProcessTask() = default;
  /// Runs in the child; encodes the result (or the exception) into `reply`.
  virtual void run(Buffer& reply) = 0;
};

template <class R, class F, class... Args>
struct ProcessTaskFor final : ProcessTask<R> {
  template <class G, class... As>
  explicit ProcessTaskFor(G&& g, As&&... as) : f(std::forward<G>(g)), args(std::forward<As>(as)...) {}

  void run(Buffer& reply) override {
    Encoder out(reply);
    try {
      if constexpr (std::is_void_v<R>) {
        std::apply(f, args);
        out(ReplyKind::value);
      } else {
        // Encoded straight from the call's result: no copy of a large R.
        const R result = std::apply(f, args);
        out(ReplyKind::value);
        encode(out, result);
      }
    } catch (...) {
      reply.clear();
      out(ReplyKind::exception, describe_current_exception());
    }
  }

  F f;
  std::tuple<Args...> args;
};

/// What class template argument deduction gives `Process{f, args...}` when `f` cannot be called
/// with `args...`: a Process of this type, whose first static_assert says so (rather than a page
/// of failed deduction candidates).
template <class F, class... Args>
struct ProcessNotCallable {};

template <class R>
inline constexpr bool is_process_not_callable_v = false;
template <class F, class... Args>
inline constexpr bool is_process_not_callable_v<ProcessNotCallable<F, Args...>> = true;

/// The result type Process{f, args...} deduces.
template <class F, class... Args>
struct process_result {
  using type = ProcessNotCallable<F, Args...>;
};
template <class F, class... Args>
  requires std::invocable<F&, Args&...>
struct process_result<F, Args...> {
  using type = std::invoke_result_t<F&, Args&...>;
};

/// The ProcessError for a child that ended without a reply, from its exitcode (Python's
/// convention, or exitcode_unknown). `who` names the child, e.g. "procpool::Process: the child
/// process 1234".
[[nodiscard]] inline ProcessError ended_without_result(const std::string& who, int exitcode) {
  if (exitcode == kExitcodeUnknown)
    return ProcessError(fmt::format("{} ended without returning a result, and how it ended is unknown: another "
                                    "waitpid in this process (a SIGCHLD handler calling waitpid(-1)?) or the kernel "
                                    "(SIGCHLD set to SIG_IGN or SA_NOCLDWAIT) took its exit status, and this kernel "
                                    "cannot give it back (Linux 6.15 can); reap only your own children's pids to "
                                    "keep it",
                                    who),
                        exitcode);
  if (exitcode == 0)
    return ProcessError(fmt::format("{} exited with code 0 without returning a result (did it call exit(0)?)", who),
                        exitcode);
  return ProcessError(fmt::format("{} {} before returning a result", who, describe_ending(exitcode)), exitcode);
}

}  // namespace detail

/// A callable running in a forked child process: Python's multiprocessing.Process, with a result.
///
/// The child is a fork of the caller made at start(), so any callable works, captures included:
/// it sees the parent's memory as it was at that moment (changes it makes stay in the child).
/// The result (type R, which must be Encodable unless void) comes back through a pipe; an
/// exception thrown by the callable comes back as a RemoteError; a child that dies or exits
/// early is reported as a ProcessError. Movable, not copyable. A started Process that is
/// destroyed without join() is joined by its destructor, like std::jthread: kill() it first if
/// it might never finish.
template <class R>
class Process {
  static_assert(!detail::is_process_not_callable_v<R>,
                "procpool::Process: the callable cannot be called with these arguments (the child calls "
                "f(args...) with lvalue copies of the arguments): change the arguments or the callable's parameters");
  static_assert(detail::is_process_not_callable_v<R> || std::is_void_v<R> || Encodable<R>,
                "procpool::Process<R>: the result type R must be encodable to travel back from the child; "
                "see procpool/codec.hpp (add a serialize member, an ADL serialize, or specialise procpool::Codec)");

 public:
  /// The result type returned by get().
  using result_type = R;

  /// Prepares `f(args...)` to run in a child; nothing is forked until start().
  template <class F, class... Args>
    requires(!std::same_as<std::remove_cvref_t<F>, Process> &&
             std::invocable<std::decay_t<F>&, std::decay_t<Args>&...> &&
             (std::is_void_v<R> ||
              std::convertible_to<std::invoke_result_t<std::decay_t<F>&, std::decay_t<Args>&...>, R>))
  explicit Process(F&& f, Args&&... args)
      : task_(std::make_unique<detail::ProcessTaskFor<R, std::decay_t<F>, std::decay_t<Args>...>>(
            std::forward<F>(f), std::forward<Args>(args)...)) {}

  /// Takes over `other`'s task and, if it was started, its child process.
  Process(Process&& other) noexcept = default;
  /// Joins this Process first if it was started and not joined.
  Process& operator=(Process&& other) noexcept {
    if (this != &other) {
      join_if_started();
      task_ = std::move(other.task_);
      state_ = std::move(other.state_);
    }
    return *this;
  }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  /// Joins a started child (see the class comment).
  ~Process() { join_if_started(); }

  /// Forks the child, which runs the callable. Throws procpool::Error if already started or moved
  /// from, or if the pipe or the fork fails (e.g. RLIMIT_NPROC, EMFILE), in which case no child exists.
  void start() {
    if (moved_from())
      throw Error("procpool::Process::start: this Process was moved from; start the Process it was moved to");
    if (!task_)
      throw Error("procpool::Process::start: this Process was already started (a Process runs once; "
                  "construct a new Process to run the callable again)");
    auto state = std::make_unique<State>();
    detail::Pipe pipe = detail::make_pipe();
    const int reply_fd = pipe.write.get();
    detail::ProcessTask<R>* task = task_.get();
    state->child = detail::fork_child_with_pidfd(
        [task, reply_fd]() -> int {
          detail::Buffer reply;
          task->run(reply);
          // The parent may be gone: then EPIPE (or SIGPIPE) ends us, which is what we want.
          return detail::write_all(reply_fd, reply.data(), reply.size()) == 0 ? 0 : 1;
        },
        {reply_fd});
    pipe.write.reset();
    detail::set_nonblocking(pipe.read.get(), true);
    state->reply = std::move(pipe.read);
    state_ = std::move(state);
    task_.reset();  // the callable's state now lives in the child; free ours
  }

  /// Waits until the child has ended, collecting its reply meanwhile (so a large result never
  /// deadlocks), and reaps it. Throws procpool::Error if the process was never started or was
  /// moved from.
  void join() { (void)wait(std::nullopt, "join"); }

  /// Like join() but gives up after `timeout`; returns true if the child has ended.
  template <class Rep, class Period>
  [[nodiscard]] bool join_for(std::chrono::duration<Rep, Period> timeout) {
    return wait(std::chrono::duration_cast<std::chrono::nanoseconds>(timeout), "join_for");
  }

  /// nullopt while the child runs (or before start, or on a moved-from Process), else its exit
  /// code, or -signal if a signal killed it (Python's convention). Reaps the child if it has ended.
  /// The status survives a caller that reaps children itself (a SIGCHLD handler looping on
  /// waitpid(-1), or SIGCHLD ignored) on Linux 6.15 and later; on older kernels such a child's
  /// ending is unknown and this returns procpool::exitcode_unknown (never 0).
  [[nodiscard]] std::optional<int> exitcode() const {
    if (!state_) return std::nullopt;
    state_->child.try_reap();
    return state_->child.exitcode();
  }

  /// The child's process id, or -1 before start().
  [[nodiscard]] pid_t pid() const noexcept { return state_ ? state_->child.pid() : -1; }

  /// True between start() and the child's end.
  [[nodiscard]] bool is_alive() const {
    if (!state_) return false;
    state_->child.try_reap();
    return !state_->child.reaped();
  }

  /// Asks the child to stop with SIGTERM (a no-op once it has ended).
  void terminate() { signal(SIGTERM); }
  /// Stops the child at once with SIGKILL (a no-op once it has ended).
  void kill() { signal(SIGKILL); }

  /// Joins, then returns the child's result. Throws RemoteError if the callable threw, and
  /// ProcessError if the child was killed or exited before returning a result (its exitcode() is
  /// exitcode_unknown if how it ended is unknown, see exitcode()).
  R get() {
    (void)wait(std::nullopt, "get");
    const State& s = *state_;
    const std::string who = fmt::format("procpool::Process: the child process {}", s.child.pid());
    if (s.reply_bytes.size() > 0) {
      try {
        Decoder in(s.reply_bytes.view());
        const auto kind = decode_as<detail::ReplyKind>(in);
        if (kind == detail::ReplyKind::exception) {
          auto info = decode_as<detail::RemoteException>(in);
          throw detail::make_remote_error(info, who);
        }
        if (kind == detail::ReplyKind::value) {
          if constexpr (std::is_void_v<R>) {
            return;
          } else {
            R result = decode_as<R>(in);
            if (in.remaining() == 0) return result;
          }
        }
      } catch (const DecodeError&) {
        // An incomplete reply: the child died while writing it; reported below with its cause.
      }
    }
    throw detail::ended_without_result(who, *s.child.exitcode());
  }

 private:
  struct State {
    detail::ChildProcess child;  // reaped (its status known) once the child has ended
    detail::Fd reply;
    detail::Buffer reply_bytes;

    /// Reads what is available without blocking; returns false at end-of-file.
    bool read_available() {
      while (reply) {
        constexpr std::size_t chunk = 1 << 16;
        std::byte* dst = reply_bytes.grow(chunk);
        const ssize_t n = detail::read_some(reply.get(), dst, chunk);
        reply_bytes.resize(reply_bytes.size() - chunk + (n > 0 ? static_cast<std::size_t>(n) : 0));
        if (n > 0) continue;
        if (n < 0 && errno == EAGAIN) return true;
        reply.reset();  // end-of-file (or an error, which ends the reply just the same)
      }
      return false;
    }
  };

  /// Collects the reply until the child ends or the deadline passes; true if it ended. `caller`
  /// names the public function, for the messages.
  bool wait(std::optional<std::chrono::nanoseconds> timeout, const char* caller) {
    if (moved_from())
      throw Error(fmt::format("procpool::Process::{0}: this Process was moved from; call {0}() on the Process it "
                              "was moved to",
                              caller));
    if (!state_)
      throw Error(fmt::format("procpool::Process::{}: this Process was not started; call start() first", caller));
    State& s = *state_;
    const auto deadline = std::chrono::steady_clock::now() + timeout.value_or(std::chrono::nanoseconds{0});
    while (!s.child.reaped()) {
      const bool open = s.read_available();
      if (!open && s.child.readable_fd() < 0) {
        s.child.reap();  // no pidfd (old kernel): end-of-file is our signal that the child is ending
        break;
      }
      int wait_ms = -1;
      if (timeout) {
        const auto left = deadline - std::chrono::steady_clock::now();
        if (left <= std::chrono::nanoseconds{0}) {
          s.child.try_reap();
          break;
        }
        wait_ms = static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(left).count());
      }
      pollfd fds[2] = {{s.child.readable_fd(), POLLIN, 0}, {s.reply.get(), POLLIN, 0}};
      // A negative fd is ignored by poll: a closed reply or a missing pidfd simply drops out.
      detail::poll_retry(fds, 2, wait_ms);
      if (fds[0].revents != 0) {
        s.read_available();  // whatever the child wrote before it ended is in the pipe now
        s.child.reap();
      }
    }
    if (s.child.reaped()) s.read_available();
    return s.child.reaped();
  }

  void signal(int sig) {
    if (!state_) return;
    detail::ChildProcess& child = state_->child;
    // Reaped first if it has ended, so that it is never signalled by a pid that may be reused (a
    // caller's waitpid(-1) may have taken it: then the status is known and signal() does nothing).
    child.try_reap();
    (void)child.signal(sig);
  }

  /// Neither a callable to run nor a started child: what a move leaves behind (start() keeps the
  /// state, a failed start() keeps the callable).
  [[nodiscard]] bool moved_from() const noexcept { return !task_ && !state_; }

  void join_if_started() noexcept {
    if (!state_) return;
    try {
      join();
    } catch (...) {
      // A destructor must not throw; join() only throws for a process never started or moved from.
    }
  }

  std::unique_ptr<detail::ProcessTask<R>> task_;
  std::unique_ptr<State> state_;  // exists once started; mutable state behind a const-callable poll
};

template <class F, class... Args>
Process(F, Args...) -> Process<typename detail::process_result<std::decay_t<F>, std::decay_t<Args>...>::type>;

}  // namespace procpool
