// procpool::detail: handles to the processes the library starts. One family of types, so that
// procpool::Process, the pool's zygote (which forks and reaps the workers) and the pool's parent
// side (which starts the zygote and watches the workers) signal and reap in one way:
//
//   ProcessHandle    what both handles share: pid, pidfd, signal(), readable_fd(), status().
//   ├── ChildProcess  our own child: try_reap() and reap() take its exit status, exactly once.
//   └── ForeignProcess a process that another process reaps (a pool worker, which is the zygote's
//                      child, seen from the pool's parent): it can be signalled and watched, but
//                      never waited for; its reaper reports the status, given with record_status().
//
// Two types rather than a flag: a handle that must never wait has no reap() to call by mistake.
#pragma once

#include <signal.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <poll.h>

#include <cerrno>
#include <cstdint>
#include <optional>
#include <utility>

#include "fd.hpp"

namespace procpool::detail {

/// The waitpid status a handle reports for a process whose ending is unknown: it was reaped by
/// someone else (a SIGCHLD handler looping on waitpid(-1), or the kernel when SIGCHLD is ignored)
/// on a kernel that cannot give the status back (before Linux 6.15). No real waitpid status is
/// negative, and WIFEXITED, WIFSIGNALED and WIFSTOPPED are all false for -1, so code that reads it
/// as a status never takes it for a success (0, or any other value with a low byte of 0, would be
/// "exited with code ..."). exitcode_from_status turns it into kExitcodeUnknown.
inline constexpr int kWaitStatusUnknown = -1;

/// The exitcode procpool gives a child whose ending is unknown (see procpool::exitcode_unknown):
/// neither an exit code (0..255) nor a signal (-1..-64), and safe to negate.
inline constexpr int kExitcodeUnknown = -256;

/// Python's exitcode convention for a waitpid status: the exit code, or -signal; kExitcodeUnknown
/// for kWaitStatusUnknown.
[[nodiscard]] inline int exitcode_from_status(int status) noexcept {
  if (status == kWaitStatusUnknown) return kExitcodeUnknown;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return -1;
}

/// struct pidfd_info of <linux/pidfd.h> as first published (PIDFD_INFO_SIZE_VER0, 64 bytes, Linux
/// 6.13; exit_code filled since 6.15). Defined here because the C library's headers may predate it;
/// the kernel accepts this size from any later kernel's larger struct.
struct PidfdInfo {
  std::uint64_t mask;
  std::uint64_t cgroupid;
  std::uint32_t pid, tgid, ppid, ruid, rgid, euid, egid, suid, sgid, fsuid, fsgid;
  std::int32_t exit_code;
};
static_assert(sizeof(PidfdInfo) == 64, "struct pidfd_info, PIDFD_INFO_SIZE_VER0, is 64 bytes");

/// PIDFD_GET_INFO and PIDFD_INFO_EXIT of <linux/pidfd.h>.
inline constexpr unsigned long kPidfdGetInfo = _IOWR(0xFF, 11, PidfdInfo);
inline constexpr std::uint64_t kPidfdInfoExit = std::uint64_t{1} << 3;

/// The waitpid status of a child that was reaped by someone else (a caller's SIGCHLD handler
/// looping on waitpid(-1), or the kernel itself when SIGCHLD is ignored), read from a pidfd opened
/// before the reap. nullopt when the kernel cannot say: before Linux 6.15 (no PIDFD_INFO_EXIT:
/// ENOTTY, EINVAL or ESRCH) or without a pidfd.
[[nodiscard]] inline std::optional<int> reaped_child_status(int pidfd) noexcept {
  if (pidfd < 0) return std::nullopt;
  // The kernel records the status when it releases the child, a moment after the other waiter
  // claimed it (which is when our waitpid starts to say ECHILD): a task that still exists is
  // looked at again, for at most about a second.
  for (int attempt = 0; attempt < 1000; ++attempt) {
    PidfdInfo info{};
    info.mask = kPidfdInfoExit;
    if (::ioctl(pidfd, kPidfdGetInfo, &info) != 0) {
      if (errno == EINTR) continue;
      return std::nullopt;
    }
    if ((info.mask & kPidfdInfoExit) != 0) return info.exit_code;
    ::poll(nullptr, 0, 1);
  }
  return std::nullopt;
}

/// What ChildProcess and ForeignProcess share: a pid, the pidfd if there is one, and the process's
/// waitpid status once it is known. Not used on its own (its constructors are protected), and not
/// copyable: a handle is the one owner of its pidfd.
class ProcessHandle {
 public:
  ProcessHandle(const ProcessHandle&) = delete;
  ProcessHandle& operator=(const ProcessHandle&) = delete;

  /// The process id, or -1 for an empty handle (default-constructed or moved from). Still the
  /// process's id once its status is known, for messages (the number may belong to another
  /// process by then: never signal it).
  [[nodiscard]] pid_t pid() const noexcept { return pid_; }
  /// The pidfd, or -1 if there is none (kernels before 5.3, an empty handle, or the status is
  /// known: the pidfd is closed then). Owned by the handle: do not close it.
  [[nodiscard]] int pidfd() const noexcept { return pidfd_.get(); }
  /// A descriptor that polls readable (POLLIN) once the process has ended, for poll(): the pidfd,
  /// or -1 when there is none, which poll() ignores. Without one, callers notice the end some
  /// other way (end-of-file on a pipe the process holds, or a try_reap now and then).
  [[nodiscard]] int readable_fd() const noexcept { return pidfd_.get(); }
  /// True if the handle refers to a process (ended or not): false when empty.
  [[nodiscard]] bool has_process() const noexcept { return pid_ > 0; }
  explicit operator bool() const noexcept { return has_process(); }

  /// The waitpid status, once known (see ChildProcess::try_reap, ForeignProcess::record_status);
  /// kWaitStatusUnknown if the process ended in a way nobody can tell any more.
  [[nodiscard]] std::optional<int> status() const noexcept { return status_; }
  /// status() in Python's exitcode convention (exit code, or -signal; kExitcodeUnknown).
  [[nodiscard]] std::optional<int> exitcode() const noexcept {
    return status_ ? std::optional<int>(exitcode_from_status(*status_)) : std::nullopt;
  }

  /// Sends `sig`. Returns true if it was delivered; false for an empty handle, a process whose
  /// status is known, or a failure (errno says which: ESRCH when it has ended).
  ///
  /// Through the pidfd when there is one: a pidfd names one process for good, so the signal can
  /// never reach another process, whatever happened meanwhile. Without one (kernels before 5.3,
  /// or pidfd_send_signal refused with ENOSYS, e.g. by a seccomp filter), kill() on the pid, which
  /// is only safe while the process has not been reaped: until its parent waits for it, a zombie
  /// holds the pid, which therefore cannot be reused; after that the pid may be handed to any new
  /// process, which kill() would then hit. So signal() does nothing once the status is known, and
  /// owners must learn it promptly: a ChildProcess by reaping through the handle only (never
  /// waitpid on pid() behind it), a ForeignProcess by record_status() as soon as its reaper reports.
  /// (One window stays on kernels without pidfds: a ChildProcess reaped by the caller's own
  /// waitpid(-1), or a ForeignProcess between its reaper's wait and the report.)
  bool signal(int sig) noexcept {
    if (pid_ <= 0 || status_) return false;
#ifdef SYS_pidfd_send_signal
    if (pidfd_) {
      if (::syscall(SYS_pidfd_send_signal, pidfd_.get(), sig, nullptr, 0) == 0) return true;
      if (errno != ENOSYS) return false;
    }
#endif
    return ::kill(pid_, sig) == 0;
  }

 protected:
  ProcessHandle() noexcept = default;
  ProcessHandle(pid_t pid, Fd pidfd) noexcept : pid_(pid), pidfd_(std::move(pidfd)) {}
  ProcessHandle(ProcessHandle&& other) noexcept
      : pid_(std::exchange(other.pid_, -1)),
        pidfd_(std::move(other.pidfd_)),
        status_(std::exchange(other.status_, std::nullopt)) {}
  ProcessHandle& operator=(ProcessHandle&& other) noexcept {
    if (this != &other) {
      pid_ = std::exchange(other.pid_, -1);
      pidfd_ = std::move(other.pidfd_);
      status_ = std::exchange(other.status_, std::nullopt);
    }
    return *this;
  }
  ~ProcessHandle() = default;

  /// The status is known: keep it, and close the pidfd (it has nothing more to tell).
  void set_status(int status) noexcept {
    status_ = status;
    pidfd_.reset();
  }

  pid_t pid_ = -1;
  Fd pidfd_;
  std::optional<int> status_;
};

/// A child process of this process, which this handle reaps: exactly once, and only by its own pid
/// (never waitpid(-1), which would take the caller's other children). Move-only.
///
/// Destruction neither kills nor waits: whoever owns the handle decides how a child ends
/// (procpool::Process joins it, the zygote kills and reaps its workers, the pool waits for its
/// zygote) and reaps it before dropping the handle. A handle dropped earlier reaps a child that
/// has already ended (a waitpid with WNOHANG) and otherwise leaves it running, unreaped, as a
/// zombie once it ends. The same holds for the process a handle held when it is moved onto.
/// (Killing in the destructor was rejected: a copy of the handle in a process forked by the
/// caller, which ends with exit() and so runs destructors, would kill its parent's child.)
class ChildProcess : public ProcessHandle {
 public:
  /// An empty handle: no process.
  ChildProcess() noexcept = default;
  /// Our child `pid`, not yet reaped, with its pidfd (or an invalid Fd if there is none). The
  /// pidfd should be opened before anyone could reap the child (see fork_child_with_pidfd): a
  /// pidfd opened before the reap keeps the status readable after another waiter took it.
  ChildProcess(pid_t pid, Fd pidfd) noexcept : ProcessHandle(pid, std::move(pidfd)) {}

  ChildProcess(ChildProcess&&) noexcept = default;
  /// Releases the child held so far as the destructor does, then takes `other`'s.
  ChildProcess& operator=(ChildProcess&& other) noexcept {
    if (this != &other) {
      drop();
      ProcessHandle::operator=(std::move(other));
    }
    return *this;
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  /// See the class comment: reaps an ended child, leaves a running one alone.
  ~ChildProcess() { drop(); }

  /// The waitpid status if the child has ended (reaping it then), nullopt while it runs (or for an
  /// empty handle). Never blocks for long: at most about a second on a kernel that is still
  /// recording the status of a child someone else has just reaped (see reaped_child_status).
  ///
  /// A child reaped by someone else (waitpid says ECHILD) reports the status kept by its pidfd
  /// (PIDFD_INFO_EXIT, Linux 6.15), else kWaitStatusUnknown: never a status that reads as success.
  std::optional<int> try_reap() noexcept { return wait(WNOHANG); }

  /// Waits until the child has ended (retrying EINTR), reaps it and returns its waitpid status
  /// (kWaitStatusUnknown as for try_reap). Returns the status at once if it is already known;
  /// kWaitStatusUnknown for an empty handle.
  int reap() noexcept { return wait(0).value_or(kWaitStatusUnknown); }

  /// True once the status is known: reaped by this handle, or found reaped by someone else.
  [[nodiscard]] bool reaped() const noexcept { return status_.has_value(); }

  /// Gives the child up without reaping it and returns its pid (-1 for an empty handle): the
  /// caller now reaps it by that pid. Closes the pidfd; the handle is empty afterwards.
  [[nodiscard]] pid_t release() noexcept {
    pidfd_.reset();
    status_.reset();
    return std::exchange(pid_, -1);
  }

 private:
  std::optional<int> wait(int options) noexcept {
    if (status_ || pid_ <= 0) return status_;  // never waitpid(-1) or waitpid(0): not our children
    int status = 0;
    const pid_t r = waitpid_retry(pid_, &status, options);
    if (r == pid_) {
      set_status(status);
    } else if (r < 0) {
      // ECHILD: someone reaped the child before us, the caller's SIGCHLD handler calling
      // waitpid(-1), or the kernel when the caller ignores SIGCHLD or set SA_NOCLDWAIT. The pidfd,
      // opened before that, may still know the status; if not, the ending is unknown, which must
      // never read as success. (No other error is possible for a pid we forked; were one to
      // happen, the child could not be reaped by us either, and its ending is unknown as well.)
      set_status(reaped_child_status(pidfd_.get()).value_or(kWaitStatusUnknown));
    }
    return status_;
  }

  /// What the destructor does (see the class comment).
  void drop() noexcept {
    if (pid_ > 0 && !status_) {
      int status = 0;
      (void)waitpid_retry(pid_, &status, WNOHANG);
    }
  }
};

/// A process that is not our child, though we know its pid and perhaps hold a pidfd for it: a pool
/// worker, seen from the pool's parent (the zygote forks and reaps the workers). It can be
/// signalled (see ProcessHandle::signal for when that is safe) and polled through readable_fd(),
/// but never waited for: its reaper reports its status, which record_status() keeps. Move-only;
/// destruction only closes the pidfd.
class ForeignProcess : public ProcessHandle {
 public:
  /// An empty handle: no process.
  ForeignProcess() noexcept = default;
  /// Process `pid`, not yet reaped by its parent, with a pidfd for it (or an invalid Fd).
  ForeignProcess(pid_t pid, Fd pidfd) noexcept : ProcessHandle(pid, std::move(pidfd)) {}

  ForeignProcess(ForeignProcess&&) noexcept = default;
  ForeignProcess& operator=(ForeignProcess&&) noexcept = default;
  ForeignProcess(const ForeignProcess&) = delete;
  ForeignProcess& operator=(const ForeignProcess&) = delete;
  ~ForeignProcess() = default;

  /// The process's reaper reported its waitpid status: from now on status() gives it and signal()
  /// does nothing (the pid may be reused). Closes the pidfd. A later report is ignored.
  void record_status(int status) noexcept {
    if (pid_ > 0 && !status_) set_status(status);
  }

  /// True once record_status() has been called.
  [[nodiscard]] bool ended() const noexcept { return status_.has_value(); }

  /// Closes the pidfd while the status is still to come (the pool's parent stops polling a worker
  /// that has ended but whose reaper has not reported yet). signal() then falls back to kill(),
  /// which stays safe until the report: before it, its reaper has not waited for the process, so
  /// the pid is not free.
  void close_pidfd() noexcept { pidfd_.reset(); }
};

}  // namespace procpool::detail
