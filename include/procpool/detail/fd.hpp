// procpool::detail: RAII file descriptors and the system-call loops every other layer relies on.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <utility>

#include "../error.hpp"

namespace procpool::detail {

/// Every descriptor the library owns, as a lock-free bitmap, so that a forked child can close the
/// descriptors it does not need (pitfall: a worker holding another worker's pipe keeps end-of-file
/// from ever arriving). Lock-free because the child of a multithreaded parent cannot take locks.
class FdRegistry {
 public:
  static constexpr int kMaxTracked = 1 << 16;  // descriptors above this are simply not tracked

  static void add(int fd) noexcept {
    if (fd < 0 || fd >= kMaxTracked) return;
    // The mark first, so that a child forked in between never holds a bit above its mark.
    std::atomic<int>& used = words_used();
    int seen = used.load(std::memory_order_relaxed);
    while (fd / 64 >= seen && !used.compare_exchange_weak(seen, fd / 64 + 1, std::memory_order_relaxed)) {
    }
    word(fd).fetch_or(bit(fd), std::memory_order_relaxed);
  }
  static void remove(int fd) noexcept {
    if (fd >= 0 && fd < kMaxTracked) word(fd).fetch_and(~bit(fd), std::memory_order_relaxed);
  }
  /// In a freshly forked child: closes every library descriptor not listed in `keep`.
  static void close_all_except(std::initializer_list<int> keep) noexcept {
    // Only up to the highest word ever used: the table's other pages were never touched, and
    // reading them would cost the child a page fault each.
    const int used = words_used().load(std::memory_order_relaxed);
    for (int w = 0; w < used; ++w) {
      std::uint64_t bits = words()[w].load(std::memory_order_relaxed);
      while (bits != 0) {
        const int fd = w * 64 + std::countr_zero(bits);
        bits &= bits - 1;
        if (std::find(keep.begin(), keep.end(), fd) != keep.end()) continue;
        remove(fd);
        ::close(fd);
      }
    }
  }

 private:
  static std::atomic<std::uint64_t>* words() noexcept {
    static std::atomic<std::uint64_t> table[kMaxTracked / 64] = {};
    return table;
  }
  /// One more than the index of the highest word that ever had a bit set.
  static std::atomic<int>& words_used() noexcept {
    static std::atomic<int> used{0};
    return used;
  }
  static std::atomic<std::uint64_t>& word(int fd) noexcept { return words()[fd / 64]; }
  static std::uint64_t bit(int fd) noexcept { return std::uint64_t{1} << (fd % 64); }
};

/// An owned file descriptor, closed on destruction and registered in FdRegistry meanwhile. Move-only.
class Fd {
 public:
  Fd() noexcept = default;
  explicit Fd(int fd) noexcept : fd_(fd) { FdRegistry::add(fd); }
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }

  [[nodiscard]] int get() const noexcept { return fd_; }
  [[nodiscard]] bool valid() const noexcept { return fd_ >= 0; }
  explicit operator bool() const noexcept { return valid(); }
  /// Gives up ownership (and tracking) without closing.
  [[nodiscard]] int release() noexcept {
    FdRegistry::remove(fd_);
    return std::exchange(fd_, -1);
  }

  /// Closes the descriptor. close() is not retried on EINTR: on Linux the fd is gone either way.
  void reset() noexcept {
    if (fd_ >= 0) {
      FdRegistry::remove(fd_);
      ::close(fd_);
    }
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

/// The two ends of a pipe.
struct Pipe {
  Fd read;
  Fd write;
};

/// A close-on-exec pipe, so no descriptor of ours leaks into a program the user execs.
[[nodiscard]] inline Pipe make_pipe(int extra_flags = 0) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC | extra_flags) != 0) throw SystemError("procpool: cannot create a pipe", errno);
  return Pipe{Fd(fds[0]), Fd(fds[1])};
}

inline void set_nonblocking(int fd, bool on) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0) throw SystemError("procpool: fcntl(F_GETFL) failed", errno);
  const int wanted = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (wanted != flags && ::fcntl(fd, F_SETFL, wanted) != 0) throw SystemError("procpool: fcntl(F_SETFL) failed", errno);
}

/// Writes all n bytes to a blocking fd, retrying EINTR and short writes.
/// Returns 0 on success or the errno that stopped it (EPIPE when the reader is gone).
/// Used only in children, where a SIGPIPE from a vanished parent may end the process; the parent
/// writes to workers with send(MSG_NOSIGNAL) instead.
[[nodiscard]] inline int write_all(int fd, const void* data, std::size_t n) noexcept {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {  // a non-blocking fd handed to us: wait until it drains
        pollfd pfd{fd, POLLOUT, 0};
        ::poll(&pfd, 1, -1);
        continue;
      }
      return errno;
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return 0;
}

/// Writes every byte of `parts` to a (possibly non-blocking) fd with writev, retrying EINTR and
/// short writes, waiting out EAGAIN. Returns 0 or the errno that stopped it. `parts` is consumed.
[[nodiscard]] inline int writev_all(int fd, iovec* parts, int count) noexcept {
  while (count > 0) {
    const ssize_t w = ::writev(fd, parts, count);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        pollfd pfd{fd, POLLOUT, 0};
        ::poll(&pfd, 1, -1);
        continue;
      }
      return errno;
    }
    auto left = static_cast<std::size_t>(w);
    while (count > 0 && left >= parts->iov_len) {
      left -= parts->iov_len;
      ++parts;
      --count;
    }
    if (count > 0) {
      parts->iov_base = static_cast<char*>(parts->iov_base) + left;
      parts->iov_len -= left;
    }
  }
  return 0;
}

/// One read(), retrying EINTR. Returns bytes read, 0 at end-of-file, -1 with errno set otherwise.
[[nodiscard]] inline ssize_t read_some(int fd, void* data, std::size_t n) noexcept {
  for (;;) {
    const ssize_t r = ::read(fd, data, n);
    if (r >= 0 || errno != EINTR) return r;
  }
}

/// poll() over the set in slices of at most `slice` descriptors, none of them blocking: the number
/// of descriptors ready, or -1 with errno set.
inline int poll_slices_now(pollfd* fds, nfds_t n, nfds_t slice) noexcept {
  int ready = 0;
  for (nfds_t first = 0; first < n; first += slice) {
    int r;
    do {
      r = ::poll(fds + first, std::min(slice, n - first), 0);
    } while (r < 0 && errno == EINTR);
    if (r < 0) return -1;
    ready += r;
  }
  return ready;
}

/// poll() that retries EINTR while keeping the overall timeout (ms, -1 for none): a storm of
/// signals must neither cut the wait short nor stretch it.
///
/// poll() refuses (EINVAL) a set larger than RLIMIT_NOFILE, even of descriptors already open: a
/// caller may lower its limit below what it holds. The set is then polled in slices the limit
/// allows, without blocking, once a millisecond until something is ready or the time is up: late
/// by up to a millisecond, but never blind to a worker's death.
inline int poll_retry(pollfd* fds, nfds_t n, int timeout_ms) noexcept {
  using clock = std::chrono::steady_clock;
  const auto deadline = clock::now() + std::chrono::milliseconds(timeout_ms);
  const auto left_ms = [&]() -> int {  // -1 without a timeout; 0 once it has passed
    if (timeout_ms < 0) return -1;
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - clock::now()).count();
    return static_cast<int>(std::max<std::int64_t>(0, left));
  };
  nfds_t slice = 0;  // 0: the whole set in one poll()
  for (int wait_ms = timeout_ms;; wait_ms = left_ms()) {
    if (slice == 0) {
      const int r = ::poll(fds, n, wait_ms);
      if (r >= 0) return r;
      if (errno == EINVAL) {
        rlimit limit{};
        if (::getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur >= n || limit.rlim_cur == 0) return -1;
        slice = static_cast<nfds_t>(limit.rlim_cur);
      } else if (errno != EINTR) {
        return -1;
      }
    } else {
      const int r = poll_slices_now(fds, n, slice);
      if (r != 0 || wait_ms == 0) return r;
      ::poll(nullptr, 0, 1);  // nothing ready yet: look again in a millisecond
    }
  }
}

/// waitpid() on one specific pid (never -1: other children belong to the caller), retrying EINTR.
inline pid_t waitpid_retry(pid_t pid, int* status, int options) noexcept {
  for (;;) {
    const pid_t r = ::waitpid(pid, status, options);
    if (r >= 0 || errno != EINTR) return r;
  }
}

/// A pidfd for a child we have not reaped yet (race-free: the pid cannot be reused before we reap).
/// Returns an invalid Fd on kernels without pidfd_open (< 5.3); callers fall back to end-of-file.
[[nodiscard]] inline Fd open_pidfd(pid_t pid) noexcept {
#ifdef SYS_pidfd_open
  const long fd = ::syscall(SYS_pidfd_open, pid, 0);
  if (fd >= 0) {
    // pidfd_open sets O_CLOEXEC itself.
    return Fd(static_cast<int>(fd));
  }
#else
  (void)pid;
#endif
  return Fd();
}

}  // namespace procpool::detail
