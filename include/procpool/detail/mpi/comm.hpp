// procpool::detail::mpi: messages between ranks over MPI, never blocking: an Outbox of
// non-blocking sends and an Inbox of matched probes (MPI_Improbe + MPI_Mrecv). A message is its
// kind (the MPI tag) and a body; a body larger than kInlineBytes travels as a head (its length and
// its front, a small header) plus pieces sent with the tag `piece` (MPI counts are ints: one MPI
// message carries less than 2 GiB), received straight into place. Messages from one rank are
// delivered in the order it sent them.
#pragma once

// The C API only: Open MPI's and MPICH's deprecated C++ bindings are not used (nor warnings-clean).
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <algorithm>
#include <bit>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <fmt/core.h>

#include "../../error.hpp"
#include "../buffer.hpp"
#include "../runner.hpp"

namespace procpool::detail::mpi {

/// What a message is (its MPI tag).
enum class Kind : int {
  hello = 1,    // serving rank -> 0: who it is (executable id, host, workers)
  verdict = 2,  // 0 -> serving rank: empty: serve; else why the job cannot run
  job = 3,      // 0 -> serving rank: a callable (see transport.hpp)
  chunk = 4,    // 0 -> serving rank: items to run
  results = 5,  // serving rank -> 0: the results of a chunk
  stop = 6,     // 0 -> serving rank: finish and leave
  piece = 7,    // the continuation of a large message
};

/// The largest MPI message sent: a larger body travels in pieces this size.
inline constexpr std::size_t kPieceBytes = std::size_t{16} << 20;
static_assert(kPieceBytes < static_cast<std::size_t>(INT_MAX));

/// A body up to this size travels inside its head message; a larger one in pieces of its own.
inline constexpr std::size_t kInlineBytes = std::size_t{64} << 10;

/// Throws procpool::Error for a failed MPI call (MPI_ERRORS_RETURN is set on the communicator).
inline void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw Error(fmt::format("procpool::mpi: {} failed: {}", what, std::string(text, static_cast<std::size_t>(len))));
}

/// Debug tracing to stderr, when PROCPOOL_MPI_TRACE is set.
inline bool tracing() {
  static const bool on = std::getenv("PROCPOOL_MPI_TRACE") != nullptr;
  return on;
}
#define PROCPOOL_MPI_TRACE(...)                                              \
  do {                                                                       \
    if (::procpool::detail::mpi::tracing()) fmt::print(stderr, __VA_ARGS__); \
  } while (false)

/// A message received.
struct Message {
  int source = 0;
  Kind kind = Kind::stop;
  Buffer body;
};

/// A few large buffers kept for reuse by this process's messages: a chunk's items arriving, a
/// rank's gathered results. Fresh memory faults once per 4 KiB page on first touch, and under a
/// hypervisor each fault costs microseconds; a rank that takes in megabytes per chunk would spend
/// more time faulting than copying. At most kMaxBytes are kept, idle, per process.
class BufferStash {
 public:
  static constexpr std::size_t kMinBytes = std::size_t{16} << 10;  // smaller ones are cheap to allocate
  static constexpr std::size_t kMaxBytes = std::size_t{64} << 20;  // kept in all
  static constexpr std::size_t kMaxBuffers = 16;

  static BufferStash& instance() {
    static BufferStash stash;
    return stash;
  }

  /// An empty buffer of capacity at least `n`, its pages mapped: a kept one if one is large enough.
  [[nodiscard]] Buffer take(std::size_t n) {
    if (n >= kMinBytes) {
      std::lock_guard lock(mu_);
      auto best = kept_.end();
      for (auto it = kept_.begin(); it != kept_.end(); ++it)
        if (it->capacity() >= n && (best == kept_.end() || it->capacity() < best->capacity())) best = it;
      if (best != kept_.end()) {
        Buffer b = std::move(*best);
        kept_.erase(best);
        bytes_ -= b.capacity();
        b.clear();
        return b;
      }
    }
    // Rounded up to a power of two, so that a later, slightly larger message finds it large enough.
    const std::size_t capacity = n >= kMinBytes ? std::bit_ceil(n) : n;
    Buffer b(capacity);
    prefault_for_write(b.data(), capacity);
    return b;
  }

  /// Keeps `b` for a later take(), if it is large, its own, and there is room (the smallest kept
  /// ones make room for a larger one).
  void give(Buffer&& b) noexcept {
    // Only buffers take() made (a power of two): a message's own buffer is sized to it, and would
    // rarely fit another.
    if (!b.owns_storage() || b.capacity() < kMinBytes || b.capacity() > kMaxBytes || !std::has_single_bit(b.capacity()))
      return;
    std::lock_guard lock(mu_);
    while (!kept_.empty() && (bytes_ + b.capacity() > kMaxBytes || kept_.size() >= kMaxBuffers)) {
      const auto smallest = std::min_element(
          kept_.begin(), kept_.end(), [](const Buffer& x, const Buffer& y) { return x.capacity() < y.capacity(); });
      if (smallest->capacity() >= b.capacity()) return;
      bytes_ -= smallest->capacity();
      kept_.erase(smallest);
    }
    try {
      kept_.push_back(std::move(b));
      bytes_ += kept_.back().capacity();
    } catch (const std::bad_alloc&) {
      // Not kept: it is freed like any other.
    }
  }

 private:
  std::mutex mu_;
  std::vector<Buffer> kept_;
  std::size_t bytes_ = 0;
};

/// Sends in flight; their buffers are kept until MPI is done with them.
class Outbox {
 public:
  explicit Outbox(MPI_Comm comm) : comm_(comm) {}
  Outbox(const Outbox&) = delete;
  Outbox& operator=(const Outbox&) = delete;
  Outbox(Outbox&& other) noexcept
      : comm_(other.comm_),
        pending_(std::exchange(other.pending_, {})),
        last_ticket_(other.last_ticket_),
        bytes_sent_(other.bytes_sent_) {}
  Outbox& operator=(Outbox&&) = delete;
  ~Outbox() { drain(); }

  /// Starts sending `front` followed by `back` to `dest`, as one message of kind `kind` (the
  /// receiver gets one body). A large `back` is sent from where it lies, never copied: so a chunk's
  /// items or a rank's gathered results go out without another pass over their bytes. If `back`
  /// only borrows its memory (Buffer::over), its owner must call keep() before reusing it. Returns
  /// the send's ticket (for keep()).
  std::uint64_t send(int dest, Kind kind, Buffer front, Buffer back = {}) {
    Pending& p = pending_.emplace_back();
    p.ticket = ++last_ticket_;
    // The head says how long the whole body is. A small body travels in it (one message); a large
    // one has only its front there, and its back follows in pieces, received straight into place.
    const std::uint64_t total = front.size() + back.size();
    const bool small = total <= kInlineBytes;
    p.head.reserve(sizeof total + front.size() + (small ? back.size() : 0));
    p.head.append(&total, sizeof total);
    p.head.append(front.data(), front.size());
    if (small) {
      p.head.append(back.data(), back.size());
    } else {
      p.back = std::move(back);
    }
    bytes_sent_ += total;
    PROCPOOL_MPI_TRACE("{} send kind {} to {} bytes {}\n", monotonic_ns() / 1000, static_cast<int>(kind), dest, total);
    MPI_Request r = MPI_REQUEST_NULL;
    check(MPI_Isend(p.head.data(), static_cast<int>(p.head.size()), MPI_BYTE, dest, static_cast<int>(kind), comm_, &r),
          "MPI_Isend");
    p.requests.push_back(r);
    for (std::size_t at = 0; at < p.back.size(); at += kPieceBytes) {
      const std::size_t n = std::min(kPieceBytes, p.back.size() - at);
      check(
          MPI_Isend(p.back.data() + at, static_cast<int>(n), MPI_BYTE, dest, static_cast<int>(Kind::piece), comm_, &r),
          "MPI_Isend");
      p.requests.push_back(r);
    }
    return p.ticket;
  }

  /// `storage` is the owner of memory that the send `ticket` may still be reading (its borrowed
  /// back): if that send is not done, it takes `storage` along, and a copy of the bytes takes its
  /// place, so that the owner may reuse or free its buffer while MPI still reads the original.
  void keep(std::uint64_t ticket, Buffer& storage) {
    for (Pending& p : pending_) {
      if (p.ticket != ticket) continue;
      if (p.back.owns_storage() || p.back.data() != storage.data()) return;
      // Usually the send is done (its results came back) and MPI only has not been asked yet.
      int done = 0;
      check(MPI_Testall(static_cast<int>(p.requests.size()), p.requests.data(), &done, MPI_STATUSES_IGNORE),
            "MPI_Testall");
      if (done != 0) {
        p.back = Buffer();
        return;
      }
      Buffer copy(storage.size());
      copy.append(storage.data(), storage.size());
      p.back = std::exchange(storage, std::move(copy));
      return;
    }
  }

  /// Lets MPI progress the sends; forgets those done. True if one finished.
  bool progress() {
    bool any = false;
    while (!pending_.empty()) {
      Pending& p = pending_.front();
      int done = 0;
      check(MPI_Testall(static_cast<int>(p.requests.size()), p.requests.data(), &done, MPI_STATUSES_IGNORE),
            "MPI_Testall");
      if (done == 0) break;
      BufferStash::instance().give(std::move(p.back));
      pending_.pop_front();
      any = true;
    }
    return any;
  }

  /// Waits until every send is done (or cancelled by a failed MPI).
  void drain() noexcept {
    for (Pending& p : pending_)
      MPI_Waitall(static_cast<int>(p.requests.size()), p.requests.data(), MPI_STATUSES_IGNORE);
    pending_.clear();
  }

  [[nodiscard]] bool empty() const noexcept { return pending_.empty(); }
  [[nodiscard]] std::uint64_t bytes_sent() const noexcept { return bytes_sent_; }

 private:
  struct Pending {
    std::uint64_t ticket = 0;
    Buffer head;  // the whole body's length, then its front (or all of a small body)
    Buffer back;  // the rest of a large body, sent in pieces
    std::vector<MPI_Request> requests;
  };
  MPI_Comm comm_;
  std::deque<Pending> pending_;
  std::uint64_t last_ticket_ = 0;
  std::uint64_t bytes_sent_ = 0;
};

/// Messages received, in the order each sender sent them.
class Inbox {
 public:
  explicit Inbox(MPI_Comm comm) : comm_(comm) {}
  Inbox(const Inbox&) = delete;
  Inbox& operator=(const Inbox&) = delete;
  /// Messages already taken in (heads received early) move with it.
  Inbox(Inbox&& other) noexcept : comm_(other.comm_), arriving_(std::exchange(other.arriving_, {})) {}
  Inbox& operator=(Inbox&&) = delete;
  ~Inbox() {
    for (Arriving& a : arriving_)
      for (MPI_Request& r : a.requests)
        if (r != MPI_REQUEST_NULL) {
          MPI_Cancel(&r);
          MPI_Request_free(&r);
        }
  }

  /// The next complete message, if one has arrived (from `source`, or from anyone).
  std::optional<Message> poll(int source = MPI_ANY_SOURCE) {
    receive_heads(source);
    for (auto it = arriving_.begin(); it != arriving_.end(); ++it) {
      if (!it->requests.empty()) {
        int done = 0;
        check(MPI_Testall(static_cast<int>(it->requests.size()), it->requests.data(), &done, MPI_STATUSES_IGNORE),
              "MPI_Testall");
        if (done == 0) continue;
        it->requests.clear();
      }
      // A later message from a sender waits behind that sender's earlier one.
      bool earlier = false;
      for (auto e = arriving_.begin(); e != it; ++e) earlier = earlier || e->message.source == it->message.source;
      if (earlier) continue;
      Message m = std::move(it->message);
      arriving_.erase(it);
      return m;
    }
    return std::nullopt;
  }

  /// Whether a message is partly received.
  [[nodiscard]] bool receiving() const noexcept { return !arriving_.empty(); }

 private:
  struct Arriving {
    Message message;
    std::vector<MPI_Request> requests;  // its pieces still arriving
  };

  /// Receives the heads of the messages that have arrived, and starts receiving their pieces.
  void receive_heads(int source) {
    for (;;) {
      int flag = 0;
      MPI_Message handle = MPI_MESSAGE_NULL;
      MPI_Status status;
      check(MPI_Improbe(source, MPI_ANY_TAG, comm_, &flag, &handle, &status), "MPI_Improbe");
      if (flag == 0) return;
      if (status.MPI_TAG == static_cast<int>(Kind::piece))
        throw Error("procpool::mpi: a piece of a message arrived before its head (a protocol error)");
      int count = 0;
      MPI_Get_count(&status, MPI_BYTE, &count);
      Buffer head = BufferStash::instance().take(static_cast<std::size_t>(count));
      head.resize(static_cast<std::size_t>(count));
      check(MPI_Mrecv(head.data(), count, MPI_BYTE, &handle, MPI_STATUS_IGNORE), "MPI_Mrecv");
      std::uint64_t total = 0;
      if (head.size() < sizeof total) throw Error("procpool::mpi: a message without its length arrived");
      std::memcpy(&total, head.data(), sizeof total);
      Arriving& a = arriving_.emplace_back();
      a.message.source = status.MPI_SOURCE;
      a.message.kind = static_cast<Kind>(status.MPI_TAG);
      PROCPOOL_MPI_TRACE("{} recv kind {} from {} bytes {}\n", monotonic_ns() / 1000, status.MPI_TAG, status.MPI_SOURCE,
                         total);
      const std::size_t first = head.size() - sizeof total;
      if (first == total) {
        head.erase_front(sizeof total);
        a.message.body = std::move(head);
        continue;
      }
      a.message.body = BufferStash::instance().take(static_cast<std::size_t>(total));
      a.message.body.resize(static_cast<std::size_t>(total));
      std::memcpy(a.message.body.data(), head.data() + sizeof total, first);
      for (std::size_t at = first; at < total; at += kPieceBytes) {
        const std::size_t n = std::min<std::size_t>(kPieceBytes, static_cast<std::size_t>(total) - at);
        MPI_Request r = MPI_REQUEST_NULL;
        check(MPI_Irecv(a.message.body.data() + at, static_cast<int>(n), MPI_BYTE, status.MPI_SOURCE,
                        static_cast<int>(Kind::piece), comm_, &r),
              "MPI_Irecv");
        a.requests.push_back(r);
      }
    }
  }

  MPI_Comm comm_;
  std::deque<Arriving> arriving_;
};

/// Runs a function when it goes out of scope (on every path out of a call).
template <class F>
class ScopeExit {
 public:
  explicit ScopeExit(F f) : f_(std::move(f)) {}
  ScopeExit(const ScopeExit&) = delete;
  ScopeExit& operator=(const ScopeExit&) = delete;
  ~ScopeExit() { f_(); }

 private:
  F f_;
};

/// Small helpers to build and read message bodies.
class Writer {
 public:
  explicit Writer(Buffer& out) : out_(out) {}
  template <class T>
  Writer& put(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    out_.append(&v, sizeof v);
    return *this;
  }
  Writer& bytes(const void* p, std::size_t n) {
    put<std::uint64_t>(n);
    out_.append(p, n);
    return *this;
  }
  Writer& str(const std::string& s) { return bytes(s.data(), s.size()); }

 private:
  Buffer& out_;
};

class Reader {
 public:
  explicit Reader(std::span<const std::byte> in) : in_(in) {}
  template <class T>
  T get() {
    static_assert(std::is_trivially_copyable_v<T>);
    T v;
    std::memcpy(&v, take(sizeof v).data(), sizeof v);
    return v;
  }
  std::span<const std::byte> bytes() { return take(static_cast<std::size_t>(get<std::uint64_t>())); }
  std::string str() {
    const auto b = bytes();
    return {reinterpret_cast<const char*>(b.data()), b.size()};
  }
  std::span<const std::byte> take(std::size_t n) {
    if (n > in_.size() - at_) throw DecodeError("procpool::mpi: a truncated message");
    const auto s = in_.subspan(at_, n);
    at_ += n;
    return s;
  }
  [[nodiscard]] std::span<const std::byte> rest() const { return in_.subspan(at_); }

 private:
  std::span<const std::byte> in_;
  std::size_t at_ = 0;
};

}  // namespace procpool::detail::mpi
