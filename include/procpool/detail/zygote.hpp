// procpool::detail: the zygote, a small single-threaded process forked when a Pool starts, which
// forks (and re-forks) the pool's workers on request.
//
// Why: fork() copies only the calling thread. A worker forked later from a parent whose other
// threads hold locks (malloc arenas, iostreams, user mutexes) would inherit those locks held
// forever. The zygote is a snapshot of the parent taken at pool construction and never runs other
// threads, so every worker, first or replacement, starts from that same clean state. The zygote
// also reaps the workers (they are its children) and reports how each one ended.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <vector>

#include "child_process.hpp"
#include "fd.hpp"
#include "fork.hpp"
#include "worker.hpp"

namespace procpool::detail {

/// A message on the control socket (SOCK_SEQPACKET keeps one message per send).
struct ZygoteMessage {
  enum class Op : std::uint32_t {
    spawn = 1,         // parent -> zygote: fork worker `index`
    spawned = 2,       // zygote -> parent: worker `index` is `pid`; fds: the parent's end of its channel, its pidfd
    spawn_failed = 3,  // zygote -> parent: fork or pipe failed with errno `value`
    exited = 4,        // zygote -> parent: worker `pid` ended with waitpid status `value`
  };
  Op op;
  std::int32_t index;
  std::int32_t pid;
  std::int32_t value;
};

/// Sends one message with up to three descriptors attached. Returns 0 or an errno.
inline int send_message(int sock, const ZygoteMessage& m, std::span<const int> fds = {}) noexcept {
  iovec iov{const_cast<ZygoteMessage*>(&m), sizeof m};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(3 * sizeof(int))] = {};
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(fds.size() * sizeof(int));
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(fds.size() * sizeof(int));
    std::memcpy(CMSG_DATA(c), fds.data(), fds.size() * sizeof(int));
  }
  for (;;) {
    if (::sendmsg(sock, &msg, MSG_NOSIGNAL) >= 0) return 0;
    if (errno != EINTR) return errno;
  }
}

/// Receives one message and the descriptors attached to it (close-on-exec). Returns nullopt at
/// end-of-file, or when nothing is ready on a non-blocking socket (then `would_block` is set).
inline std::optional<ZygoteMessage> receive_message(int sock, std::vector<Fd>& fds, bool* would_block = nullptr) {
  ZygoteMessage m{};
  iovec iov{&m, sizeof m};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(3 * sizeof(int))] = {};
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do {
    n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (would_block != nullptr) *would_block = n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  fds.clear();
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      fds.emplace_back(fd);
    }
  }
  if (n != static_cast<ssize_t>(sizeof m)) return std::nullopt;
  return m;
}

/// What the zygote knows when it starts: a copy of the pool's settings (its own memory snapshot).
struct ZygoteSetup {
  const Settings* settings = nullptr;  // the pool's: pinning, timeout, initializer
  std::span<WorkerSlot> slots;
  int buffer_size = 0;                 // SO_SNDBUF / SO_RCVBUF of the worker sockets, 0 to leave the default
  struct sigaction caller_sigchld {};  // the caller's SIGCHLD disposition, restored in workers
  const LaneArea* lanes = nullptr;
};

/// The zygote's main loop. Ends when the parent closes the control socket (or dies): then it kills
/// and reaps whatever workers remain, so none outlives the pool.
inline int zygote_main(int control, const ZygoteSetup& setup) {
  // Room for every worker, made before the first fork: a zygote that allocates after a fork
  // copies the allocator's pages it writes, which the child still shares.
  std::vector<ChildProcess> children;
  children.reserve(setup.slots.size());
  std::vector<pollfd> fds;
  fds.reserve(setup.slots.size() + 1);
  std::vector<Fd> ignored;
  set_nonblocking(control, false);
  // A caller that ignores SIGCHLD would have the kernel reap the workers and discard how they
  // ended. The zygote is the library's own process: it restores the default here, and each worker
  // gets the caller's disposition back before it runs user code.
  struct sigaction default_chld {};
  default_chld.sa_handler = SIG_DFL;
  sigemptyset(&default_chld.sa_mask);
  ::sigaction(SIGCHLD, &default_chld, nullptr);

  // Reaps child k (which has ended, or been killed), reports how it ended if asked, and forgets it.
  // The wait cannot fail: the zygote keeps SIGCHLD at its default, so its children wait to be reaped.
  const auto reap = [&](std::size_t k, bool report) {
    const int status = children[k].reap();
    if (report) send_message(control, {ZygoteMessage::Op::exited, -1, children[k].pid(), status});
    children.erase(children.begin() + static_cast<std::ptrdiff_t>(k));
  };

  for (;;) {
    fds.clear();
    fds.push_back({control, POLLIN, 0});
    for (const ChildProcess& c : children) fds.push_back({c.readable_fd(), POLLIN, 0});
    // Without pidfds (kernels before 5.3) children are checked for exit every 50 ms instead.
    bool without_pidfd = false;
    for (const ChildProcess& c : children) without_pidfd = without_pidfd || c.readable_fd() < 0;
    poll_retry(fds.data(), fds.size(), without_pidfd ? 50 : -1);

    for (std::size_t k = fds.size() - 1; k >= 1; --k) {
      ChildProcess& c = children[k - 1];
      if (fds[k].revents != 0 || (c.readable_fd() < 0 && c.try_reap())) reap(k - 1, true);
    }

    if (fds[0].revents == 0) continue;
    const auto request = receive_message(control, ignored);
    if (!request) break;  // the pool is gone
    if (request->op != ZygoteMessage::Op::spawn) continue;
    const int index = request->index;
    try {
      // One stream socket per worker carries tasks one way and results the other. Sockets, not
      // pipes: send(MSG_NOSIGNAL) spares the parent SIGPIPE without touching its signal mask, and
      // local sockets move bulk data faster than pipes.
      int sv[2];
      if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        throw SystemError("procpool: cannot create a worker's socket", errno);
      Fd parent_end(sv[0]);
      Fd worker_end(sv[1]);
      if (setup.buffer_size > 0) {
        for (const int fd : sv) {
          (void)::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &setup.buffer_size, sizeof setup.buffer_size);
          (void)::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &setup.buffer_size, sizeof setup.buffer_size);
        }
      }
      WorkerSetup ws;
      ws.settings = setup.settings;
      ws.index = index;
      ws.slot = &setup.slots[static_cast<std::size_t>(index)];
      ws.caller_sigchld = &setup.caller_sigchld;
      ws.lanes = setup.lanes;
      const int channel = worker_end.get();
      // A pidfd without the gate pipe: the zygote is its children's only reaper.
      ChildProcess worker =
          fork_child_with_pidfd([&] { return worker_main(channel, ws); }, {channel},
                                ForkOptions{.die_with_parent = true, .streams_flushed = true, .sole_reaper = true});
      worker_end.reset();
      const pid_t pid = worker.pid();
      Fd pidfd_for_parent(worker.pidfd() >= 0 ? ::fcntl(worker.pidfd(), F_DUPFD_CLOEXEC, 0) : -1);
      const int passed[2] = {parent_end.get(), pidfd_for_parent.get()};
      const int sent = send_message(control, {ZygoteMessage::Op::spawned, index, pid, 0},
                                    std::span<const int>(passed, pidfd_for_parent ? 2 : 1));
      children.push_back(std::move(worker));
      if (sent != 0) {
        // The parent would wait for this worker forever: end it (it is reaped like any other)
        // and say why, so that the parent can try again.
        children.back().signal(SIGKILL);
        send_message(control, {ZygoteMessage::Op::spawn_failed, index, -1, sent});
      }
    } catch (const SystemError& e) {
      send_message(control, {ZygoteMessage::Op::spawn_failed, index, -1, e.error_number()});
    }
  }

  // The pool closed our control socket, and its ends of the workers' sockets: idle workers exit
  // by themselves at once. Give them a moment, then kill whatever still runs (a task that ignores
  // the end of the pool, or a parent that died mid-task), so no worker outlives the pool.
  const auto grace_end = std::chrono::steady_clock::now() + std::chrono::milliseconds{250};
  while (!children.empty()) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(grace_end - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    fds.clear();
    for (const ChildProcess& c : children) fds.push_back({c.readable_fd(), POLLIN, 0});
    if (poll_retry(fds.data(), fds.size(), static_cast<int>(std::min<std::int64_t>(left.count(), 10))) < 0) break;
    for (std::size_t k = children.size(); k-- > 0;)
      if (fds[k].revents != 0 || children[k].try_reap()) reap(k, false);
  }
  for (ChildProcess& c : children) c.signal(SIGKILL);
  while (!children.empty()) reap(children.size() - 1, false);
  exit_child_unflushed(0);  // the zygote wrote nothing to the standard streams
}

}  // namespace procpool::detail
