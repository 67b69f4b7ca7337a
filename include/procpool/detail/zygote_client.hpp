// procpool::detail: the parent's side of the zygote (see zygote.hpp): starting it, asking it for
// workers, hearing how they ended, and stopping it.
#pragma once

#include <sys/socket.h>

#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "../error.hpp"
#include "child_process.hpp"
#include "fd.hpp"
#include "fork.hpp"
#include "lanes.hpp"
#include "settings.hpp"
#include "worker.hpp"
#include "zygote.hpp"

namespace procpool::detail {

class ZygoteClient {
 public:
  ZygoteClient() = default;
  ZygoteClient(const ZygoteClient&) = delete;
  ZygoteClient& operator=(const ZygoteClient&) = delete;
  ~ZygoteClient() { stop(); }

  /// Forks the zygote, a snapshot of the caller taken now, from which every worker is forked.
  /// `setup` must stay where it is while the zygote lives (the zygote has its own copy; the
  /// address is only taken here).
  void start(const ZygoteSetup& setup) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
      throw SystemError("procpool::Pool: cannot create the zygote's control socket", errno);
    Fd ours(sv[0]);
    Fd theirs(sv[1]);
    const int zygote_end = theirs.get();
    const ZygoteSetup* s = &setup;
    zygote_ = ChildProcess(fork_child([zygote_end, s] { return zygote_main(zygote_end, *s); }, {zygote_end}), Fd());
    theirs.reset();
    control_ = std::move(ours);
  }

  /// The control socket, to poll.
  [[nodiscard]] int fd() const noexcept { return control_.get(); }
  [[nodiscard]] bool running() const noexcept { return static_cast<bool>(control_); }

  /// Asks for worker `index`; false if the zygote is gone.
  bool request_worker(int index) {
    return control_ && send_message(control_.get(), {ZygoteMessage::Op::spawn, index, -1, 0}) == 0;
  }

  /// The next message, with its descriptors: waits for it when `blocking`; nullopt when none is
  /// ready (not blocking) or the zygote is gone (then `gone` is set).
  std::optional<ZygoteMessage> next(std::vector<Fd>& fds, bool& gone) {
    gone = false;
    if (!control_) {
      gone = true;
      return std::nullopt;
    }
    bool would_block = false;
    auto m = receive_message(control_.get(), fds, &would_block);
    if (!m && !would_block) gone = true;
    return m;
  }

  /// From now on next() does not wait.
  void stop_blocking() { set_nonblocking(control_.get(), true); }

  /// Closes the control socket (the zygote then kills and reaps what workers remain, and exits)
  /// and reaps the zygote. shutdown(), not just close: a child the caller forked meanwhile holds
  /// a copy of the socket, which would otherwise keep the zygote waiting as long as it lives.
  void stop() noexcept {
    if (control_) ::shutdown(control_.get(), SHUT_RDWR);
    control_.reset();
    if (zygote_ && !zygote_.reaped()) (void)zygote_.reap();
  }

  /// Forgets the control socket after the zygote ended by itself (it is reaped by stop()).
  void lost() noexcept { control_.reset(); }

 private:
  Fd control_;
  ChildProcess zygote_;
};

}  // namespace procpool::detail
