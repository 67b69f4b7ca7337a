// procpool::detail: the job runners: how a pool's callable travels to a worker, is rebuilt there
// and applied to a chunk's items (templates on the user's callable and item types, so every file
// that calls a pool compiles them), and the worker's slot in shared memory they write to. The
// worker's main loop, which drives them, is in worker.hpp.
#pragma once

#include <time.h>

#include <atomic>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <span>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../codec.hpp"
#include "buffer.hpp"
#include "chunk_flags.hpp"
#include "remote_exception.hpp"

namespace procpool::detail {

/// What a worker publishes about itself in memory shared with the parent, so that when it dies the
/// parent knows which item it was running, and can see how long the current item has been running.
/// Written without any system call: a relaxed store per item.
struct alignas(64) WorkerSlot {
  std::atomic<std::uint64_t> chunk_id{0};        // 0 while not running items
  std::atomic<std::uint32_t> item{0};            // local index in that chunk
  std::atomic<std::int64_t> item_started_ns{0};  // CLOCK_MONOTONIC, written only when timeouts are on
  std::atomic<std::uint32_t> initialized{0};     // 1 once the initializer returned (the timeout covers it)
  // A withdrawal: the worker starts no item at or after local index withdraw_from of chunk
  // withdraw_chunk (the parent writes withdraw_from first), and answers the chunk with what it ran.
  std::atomic<std::uint64_t> withdraw_chunk{0};
  std::atomic<std::uint32_t> withdraw_from{0};
  // Bumped after every write on the worker's socket, by the parent (to_worker) and by the worker
  // (to_parent). The waiting side spins on these loads, which cost nothing, instead of on system
  // calls, and only then reads the socket.
  alignas(64) std::atomic<std::uint64_t> to_worker{0};
  alignas(64) std::atomic<std::uint64_t> to_parent{0};

  // The mailbox: one small frame the parent hands to an idle worker in shared memory, sparing both
  // the parent's send and the worker's read. Used only when the worker has answered every chunk
  // it was sent and nothing is queued on its socket, so the frame is never older than a socket
  // frame the worker has yet to read; the worker looks here before each socket frame, so it is
  // never run after a newer one either.
  static constexpr std::size_t kMailboxBytes = 4096;
  alignas(64) std::atomic<std::uint32_t> worker_asleep{0};  // 1 while the worker blocks in poll
  std::atomic<std::uint32_t> mailbox_full{0};               // 1 from the parent's store to the worker's take
  std::uint32_t mailbox_length = 0;
  alignas(64) std::byte mailbox[kMailboxBytes];
};

static_assert(std::atomic<std::uint64_t>::is_always_lock_free, "the worker slot must be lock-free across processes");

[[nodiscard]] inline std::int64_t monotonic_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

/// True in a pool's worker process: a task that reaches for a Pool there gets a clear error.
[[nodiscard]] inline bool& inside_pool_worker() noexcept {
  static bool inside = false;
  return inside;
}

/// Everything a worker needs to run one chunk.
struct ChunkWork {
  std::span<const std::byte> items;
  std::uint32_t count = 0;
  /// Ascending local indices, each < count, decoded but not run: u32s as they lie in the chunk
  /// frame (wire.hpp's SkipIndices::bytes()), which need not be aligned.
  std::span<const std::byte> skip;
  WorkerSlot* slot = nullptr;
  std::uint64_t chunk_id = 0;
  std::uint32_t flags = 0;  // ChunkFlags

  [[nodiscard]] bool timed() const noexcept { return (flags & kChunkTimed) != 0; }

  [[nodiscard]] std::size_t skip_count() const noexcept { return skip.size() / sizeof(std::uint32_t); }
  [[nodiscard]] std::uint32_t skip_at(std::size_t k) const noexcept {
    std::uint32_t v;
    std::memcpy(&v, skip.data() + k * sizeof v, sizeof v);
    return v;
  }
};

/// Where a chunk's outcome goes.
struct ChunkOutput {
  Buffer& values;
  Buffer& failures;
  std::uint32_t failed_count = 0;
  std::uint32_t answered = 0;  // items [0, answered) ran (or failed); the rest were withdrawn
};

/// A job as the worker holds it: the callable, rebuilt from its bytes, and how to apply it to items.
class JobRunner {
 public:
  virtual ~JobRunner() = default;
  virtual void run_chunk(const ChunkWork& work, ChunkOutput& out) = 0;
};

/// Rebuilds a JobRunner from the callable's bytes. Its address travels in the job frame: workers are
/// forks of the parent, so the same address is the same function in every worker.
using RunnerFactory = std::unique_ptr<JobRunner> (*)(std::span<const std::byte> callable);

/// Callables that can travel to a persistent worker: trivially copyable ones travel as raw bytes
/// (their pointers, if any, refer to the worker's snapshot of memory), others through the codec.
template <class F>
concept TravellingCallable = std::is_trivially_copyable_v<F> ||(Encodable<F>&& std::default_initializable<F>);

/// The bytes a trivially copyable callable travels as: none for an empty one (a capture-less
/// lambda's single byte has no value, and reading it would read uninitialised memory).
template <class F>
inline constexpr std::size_t callable_bytes_v = std::is_empty_v<F> ? 0 : sizeof(F);

template <class F>
void encode_callable(const F& f, Buffer& out) {
  if constexpr (std::is_trivially_copyable_v<F>) {
    if constexpr (callable_bytes_v<F> != 0) out.append(std::addressof(f), callable_bytes_v<F>);
  } else {
    Encoder e(out);
    encode(e, f);
  }
}

/// Holds a callable rebuilt in the worker.
template <class F>
class RebuiltCallable {
 public:
  explicit RebuiltCallable(std::span<const std::byte> bytes) {
    if constexpr (std::is_trivially_copyable_v<F>) {
      if (bytes.size() != callable_bytes_v<F>) throw DecodeError("procpool: callable bytes of the wrong size");
      // The bytes were made from a live F by the same binary; copying them into suitably aligned
      // storage creates an F (trivially copyable types have implicit-lifetime semantics).
      storage_ = std::make_unique<Storage>();
      if constexpr (callable_bytes_v<F> != 0) std::memcpy(storage_->bytes, bytes.data(), callable_bytes_v<F>);
      f_ = std::launder(reinterpret_cast<F*>(storage_->bytes));
    } else {
      owned_ = std::make_unique<F>(from_bytes<F>(bytes));
      f_ = owned_.get();
    }
  }
  F& get() noexcept { return *f_; }

 private:
  struct Storage {
    alignas(F) std::byte bytes[sizeof(F)];
  };
  std::unique_ptr<Storage> storage_;
  std::unique_ptr<F> owned_;
  F* f_ = nullptr;
};

/// How a job applies its callable to one decoded item.
enum class CallStyle { invoke, apply };

template <class F, class In, CallStyle Style>
struct call_result {
  using type = std::invoke_result_t<F&, In&>;
};
template <class F, class In>
struct call_result<F, In, CallStyle::apply> {
  using type = decltype(std::apply(std::declval<F&>(), std::declval<In&>()));
};
template <class F, class In, CallStyle Style>
using call_result_t = typename call_result<F, In, Style>::type;

template <class F, class In, CallStyle Style>
class Runner final : public JobRunner {
 public:
  using Out = std::remove_cvref_t<call_result_t<F, In, Style>>;

  explicit Runner(std::span<const std::byte> callable) : f_(callable) {}

  static std::unique_ptr<JobRunner> make(std::span<const std::byte> callable) {
    return std::make_unique<Runner>(callable);
  }

  void run_chunk(const ChunkWork& work, ChunkOutput& out) override {
    Decoder items(work.items);
    Encoder values(out.values);
    Encoder failures(out.failures);
    std::size_t next_skip = 0;
    const std::size_t skip_count = work.skip_count();
    In item{};
    out.answered = work.count;
    const auto fail = [&](std::uint32_t index, const RemoteException& why) {
      failures.write_bytes(&index, sizeof index);
      encode(failures, why);
      ++out.failed_count;
    };
    for (std::uint32_t i = 0; i < work.count; ++i) {
      try {
        decode(items, item);
      } catch (...) {
        // An argument whose decoding throws (a serialize that validates): it fails. The items
        // after it cannot be found in the stream, so they fail too, saying why.
        fail(i, describe_current_exception());
        const RemoteException rest{"procpool::Error",
                                   "not run: the argument of an earlier item in its chunk could not be decoded in the "
                                   "worker, so where this item's argument starts is unknown"};
        for (std::uint32_t j = i + 1; j < work.count; ++j) {
          while (next_skip < skip_count && work.skip_at(next_skip) < j) ++next_skip;
          if (next_skip < skip_count && work.skip_at(next_skip) == j) continue;
          fail(j, rest);
        }
        return;
      }
      if (next_skip < skip_count && work.skip_at(next_skip) == i) {
        ++next_skip;
        continue;
      }
      // The parent may withdraw the rest of the chunk (a cancelled task, a call past its deadline).
      // For a chunk holding a task that may be cancelled, the item is published and the withdrawal
      // read in sequential consistency, as the parent writes the withdrawal and then reads the item:
      // either this worker sees the withdrawal and does not start the item, or the parent sees the
      // item started and kills the worker. Elsewhere a late withdrawal only costs a run whose
      // outcome is discarded, and the cheaper relaxed store keeps map's per-item cost down.
      if ((work.flags & kChunkExactStop) != 0)
        work.slot->item.store(i, std::memory_order_seq_cst);
      else
        work.slot->item.store(i, std::memory_order_relaxed);
      if (work.slot->withdraw_chunk.load(std::memory_order_seq_cst) == work.chunk_id &&
          i >= work.slot->withdraw_from.load(std::memory_order_relaxed)) {
        out.answered = i;
        return;
      }
      if (work.timed()) work.slot->item_started_ns.store(monotonic_ns(), std::memory_order_release);
      // A result whose encoding throws part-way leaves no bytes behind: the next item's value
      // must start where this one's would have.
      const std::size_t mark = out.values.size();
      try {
        if constexpr (std::is_void_v<Out>) {
          call(item);
        } else {
          encode(values, call(item));
        }
      } catch (...) {
        out.values.resize(mark);
        fail(i, describe_current_exception());
      }
    }
  }

 private:
  decltype(auto) call(In& item) {
    if constexpr (Style == CallStyle::apply)
      return std::apply(f_.get(), item);
    else
      return std::invoke(f_.get(), item);
  }

  RebuiltCallable<F> f_;
};

}  // namespace procpool::detail
