// procpool::mpi: the same Pool across the machines of a cluster, on MPI.
//
//   int main(int argc, char** argv) {
//     return procpool::mpi::run(argc, argv, [](procpool::mpi::Pool& pool) {
//       std::vector<int> squares = pool.map(square, std::vector{1, 2, 3, 4, 5});
//       return 0;
//     });
//   }
//
// Under `mpirun -n N ./app`, rank 0 runs the function and every other rank serves its tasks on a
// local procpool::Pool of its own cores; without mpirun, the function runs on a local pool of this
// machine's cores. See docs/mpi.md.
#pragma once

// The C API only: Open MPI's and MPICH's deprecated C++ bindings are not used (nor warnings-clean).
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <ranges>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/core.h>

#include "detail/batches.hpp"
#include "detail/call_checks.hpp"
#include "detail/mpi/comm.hpp"
#include "detail/mpi/modules.hpp"
#include "detail/mpi/mpi_driver.hpp"
#include "detail/mpi/server.hpp"
#include "detail/mpi/travel.hpp"
#include "detail/pool_core.hpp"
#include "detail/runner.hpp"
#include "detail/settings.hpp"
#include "error.hpp"
#include "future.hpp"
#include "imap_results.hpp"
#include "options.hpp"
#include "outcome.hpp"
#include "pool.hpp"

namespace procpool::mpi {

/// How `run` sets up the pool of every rank. Fields keep this order.
struct Options {
  /// Worker processes on each serving rank; 0: one per CPU of that rank's affinity mask. Ranks the
  /// launcher left unbound on one machine (each mask holds every CPU online) share that machine's
  /// CPUs out by local rank instead of each taking all of them (see docs/mpi.md, Binding).
  std::size_t workers_per_rank = 0;
  /// Pin each rank's worker i to the i-th CPU of that rank's affinity mask (or share of it).
  bool pin_cpus = true;
  /// Items per message to a local worker; 0 sizes chunks automatically. A rank is sent chunks of
  /// this size for each of its workers.
  std::size_t chunk_size = 0;
  /// Replace a worker after it ran this many items; 0: never.
  std::size_t max_tasks_per_worker = 0;
  /// An item running longer than this fails with TimeoutError, and its worker is replaced; 0: no limit.
  std::chrono::nanoseconds task_timeout{0};
  /// Runs once in each worker process of every rank before its first task.
  std::function<void()> initializer{};
  /// If a serving rank dies, Open MPI 4 ends the whole job, and mpirun stops rank 0 with SIGTERM;
  /// mpirun's own message names the dead rank, and mpirun exits non-zero. With this set, run also
  /// installs a SIGTERM handler on rank 0, only where SIGTERM has its default action, that writes one
  /// line to stderr ("procpool::mpi: rank 0 (host ...) was told to stop (SIGTERM): another rank ended
  /// ...") and then ends the process by SIGTERM as before. It is installed once the ranks are known
  /// (before fn runs) and the previous action is restored when run returns or throws. Off by
  /// default: procpool does not change a process-wide signal disposition behind the program's back.
  bool explain_sigterm = false;
};

namespace detail {

/// The rank of this process, recorded before any worker is forked (workers inherit it).
[[nodiscard]] inline int& rank_slot() noexcept {
  static int rank = 0;
  return rank;
}

/// Where the launcher put this process, read from its environment (before MPI starts).
struct Launch {
  int rank = 0;
  int size = 1;
  int local_rank = 0;  // among the job's processes on this machine; unknown: 0 of 1
  int local_size = 1;
};

[[nodiscard]] inline std::optional<Launch> launched() {
  // The first pair of variables of `names` that are both set (and, if `in_range`, hold an index
  // below a count): (index, count).
  const auto pair_of = [](std::initializer_list<std::pair<const char*, const char*>> names,
                          bool in_range) -> std::optional<std::pair<int, int>> {
    for (const auto& [index, count] : names) {
      const char* i = std::getenv(index);
      const char* c = std::getenv(count);
      if (i == nullptr || *i == '\0' || c == nullptr || *c == '\0') continue;
      const int value = std::atoi(i);
      const int total = std::atoi(c);
      if (!in_range || (value >= 0 && value < total)) return std::pair{value, total};
    }
    return std::nullopt;
  };
  const auto world = pair_of(
      {{"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"}, {"PMIX_RANK", "PMIX_SIZE"}, {"PMI_RANK", "PMI_SIZE"}}, false);
  if (!world) return std::nullopt;
  Launch launch{world->first, world->second};
  if (const auto local = pair_of({{"OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"},
                                  {"PMIX_LOCAL_RANK", "PMIX_LOCAL_SIZE"},
                                  {"MPI_LOCALRANKID", "MPI_LOCALNRANKS"}},
                                 true)) {
    launch.local_rank = local->first;
    launch.local_size = local->second;
  }
  return launch;
}

/// The CPUs a serving rank's pool uses, from its affinity mask `mask`, the CPUs online on its
/// machine, and its place among the job's `local_size` processes there. A rank bound by its
/// launcher (a mask of fewer CPUs than are online) keeps its mask. Unbound ranks would each start a
/// worker per CPU of the machine, local_size times too many: they share the CPUs out instead,
/// local rank k taking the k-th of local_size equal parts (at least one CPU; rank 0, when it is
/// there, keeps its part for driving).
[[nodiscard]] inline std::vector<int> share_of_cpus(std::vector<int> mask, long online, int local_rank,
                                                    int local_size) {
  if (local_size <= 1 || mask.empty() || static_cast<long>(mask.size()) < online) return mask;
  const std::size_t n = mask.size();
  const auto parts = static_cast<std::size_t>(local_size);
  const auto k = static_cast<std::size_t>(local_rank);
  if (n < parts) return {mask[k % n]};
  return std::vector<int>(mask.begin() + static_cast<std::ptrdiff_t>(k * n / parts),
                          mask.begin() + static_cast<std::ptrdiff_t>((k + 1) * n / parts));
}

[[nodiscard]] inline PoolOptions pool_options(const Options& o) {
  PoolOptions p;
  p.workers = o.workers_per_rank;
  p.pin_cpus = o.pin_cpus;
  p.chunk_size = o.chunk_size;
  p.max_tasks_per_worker = o.max_tasks_per_worker;
  p.task_timeout = o.task_timeout;
  p.initializer = o.initializer;
  return p;
}

[[nodiscard]] inline std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0) return "unknown";
  return name;
}

// The compile-time checks of a call on procpool::mpi::Pool, each naming the call.
// LAZY: what to use instead for a single-pass input.
#define PROCPOOL_MPI_CHECK_CALL(problem, F, NAME, LAZY)                                                                \
  static_assert((problem) != ::procpool::detail::CallProblem::not_a_range,                                             \
                "procpool::mpi::Pool::" NAME ": the inputs must be a range (a container or a view) or a braced list"); \
  static_assert((problem) != ::procpool::detail::CallProblem::single_pass,                                             \
                "procpool::mpi::Pool::" NAME " needs a multi-pass range; use " LAZY " for a single-pass input");       \
  static_assert((problem) != ::procpool::detail::CallProblem::item_not_encodable,                                      \
                "procpool::mpi::Pool::" NAME ": the input items must be encodable (see procpool/codec.hpp)");          \
  static_assert((problem) != ::procpool::detail::CallProblem::item_not_default_constructible,                          \
                "procpool::mpi::Pool::" NAME ": the input items must be default-constructible");                       \
  static_assert((problem) != ::procpool::detail::CallProblem::item_not_tuple,                                          \
                "procpool::mpi::Pool::" NAME ": each input item must be a std::tuple, std::pair or std::array of the " \
                "callable's arguments (map and imap pass each item as one argument)");                                 \
  static_assert((problem) != ::procpool::detail::CallProblem::not_applicable,                                          \
                "procpool::mpi::Pool::" NAME ": the callable cannot be called with the elements of an input item "     \
                "(f(std::get<0>(item), std::get<1>(item), ...) with lvalues of the item's element types)");            \
  static_assert((problem) != ::procpool::detail::CallProblem::not_invocable,                                           \
                "procpool::mpi::Pool::" NAME ": the callable cannot be called with an input item");                    \
  static_assert((problem) != ::procpool::detail::CallProblem::returns_void,                                            \
                "procpool::mpi::Pool::" NAME ": the callable returns void; it needs a result per item");               \
  static_assert((problem) != ::procpool::detail::CallProblem::result_not_encodable,                                    \
                "procpool::mpi::Pool::" NAME ": the callable's result must be encodable (see procpool/codec.hpp)");    \
  static_assert((problem) != ::procpool::detail::CallProblem::result_not_default_constructible,                        \
                "procpool::mpi::Pool::" NAME ": the callable's result type must be default-constructible");            \
  static_assert(::procpool::detail::mpi::RemoteCallable<std::decay_t<F>>, /* NOLINT(bugprone-macro-parentheses) */     \
                "procpool::mpi::Pool::" NAME ": this callable cannot travel to another machine: it is neither a "      \
                "plain function nor an object that travels as its bytes or through the codec (a closure capturing "    \
                "a non-encodable object or a reference wrapper, a member pointer). Capture encodable values only, "    \
                "or pass the data as the items")

}  // namespace detail

/// The MPI rank of the calling process: 0 outside mpirun; also right inside a worker process forked
/// by a rank (workers never call MPI themselves).
[[nodiscard]] inline int rank() noexcept { return detail::rank_slot(); }

class Pool;

template <class F>
int run(int argc, char** argv, const Options& options, F&& fn);

/// The pool `run` hands its function: the workers of every serving rank (or, without mpirun, of
/// this machine). Calls have the semantics and error types of procpool::Pool's; a failed item's
/// message names the rank and host it ran on. Callables travel to other machines: plain functions,
/// closures capturing values, objects the codec encodes; a closure holding pointers or references
/// is refused (at compile time where the type says so, else with procpool::Error).
class Pool {
 public:
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  /// Worker processes across all serving ranks (or of the local pool).
  [[nodiscard]] std::size_t size() const { return local_ != nullptr ? local_->size() : driver_->size(); }
  /// Ranks serving tasks (0 without mpirun: the local pool serves them).
  [[nodiscard]] std::size_t ranks() const noexcept { return driver_ ? driver_->ranks().size() : 0; }

  /// Applies `f` to every input on the workers of all ranks; the results in input order. Throws
  /// the failure of the lowest-numbered failed item (RemoteError, ProcessError, TimeoutError).
  template <class F, class Range>
  [[nodiscard]] auto map(F&& f, Range&& inputs, MapOptions options = {}) {
    constexpr auto problem = ::procpool::detail::call_problem<F, Range, ::procpool::detail::CallStyle::invoke, true>();
    PROCPOOL_MPI_CHECK_CALL(problem, F, "map", "imap");
    if constexpr (problem == ::procpool::detail::CallProblem::none &&
                  ::procpool::detail::mpi::RemoteCallable<std::decay_t<F>>) {
      ::procpool::detail::mpi::refuse_addresses(f, "map");
      if (local_ != nullptr) return local_->map(std::forward<F>(f), std::forward<Range>(inputs), std::move(options));
      auto batch = run_dense<::procpool::detail::CallStyle::invoke>(f, inputs, std::move(options), "map");
      std::lock_guard lock(driver_->mutex());
      return batch->take_values();
    }
  }
  /// map over a braced list.
  template <class F, class T>
  [[nodiscard]] auto map(F&& f, std::initializer_list<T> inputs, MapOptions options = {}) {
    return map(std::forward<F>(f), std::vector<T>(inputs), std::move(options));
  }

  /// Like map, but never throws for an item: every item's value or error, in input order.
  template <class F, class Range>
  [[nodiscard]] auto try_map(F&& f, Range&& inputs, MapOptions options = {}) {
    constexpr auto problem = ::procpool::detail::call_problem<F, Range, ::procpool::detail::CallStyle::invoke, true>();
    PROCPOOL_MPI_CHECK_CALL(problem, F, "try_map", "imap");
    if constexpr (problem == ::procpool::detail::CallProblem::none &&
                  ::procpool::detail::mpi::RemoteCallable<std::decay_t<F>>) {
      ::procpool::detail::mpi::refuse_addresses(f, "try_map");
      if (local_ != nullptr)
        return local_->try_map(std::forward<F>(f), std::forward<Range>(inputs), std::move(options));
      auto batch = run_dense<::procpool::detail::CallStyle::invoke>(f, inputs, std::move(options), "try_map");
      std::lock_guard lock(driver_->mutex());
      return batch->take_outcomes();
    }
  }
  /// try_map over a braced list.
  template <class F, class T>
  [[nodiscard]] auto try_map(F&& f, std::initializer_list<T> inputs, MapOptions options = {}) {
    return try_map(std::forward<F>(f), std::vector<T>(inputs), std::move(options));
  }

  /// Like map, but decodes the results into `out` (resized to the number of inputs), into the
  /// elements it already holds, reusing the memory they own, as procpool::Pool::map_into does. If
  /// items failed, throws like map; `out` then holds every other result, and value-initialised
  /// elements where items failed. If the call fails as a whole, `out` is left empty.
  template <class F, class Range, class Out>
  void map_into(F&& f, Range&& inputs, std::vector<Out>& out, MapOptions options = {}) {
    namespace d = ::procpool::detail;
    constexpr auto problem = d::call_problem<F, Range, d::CallStyle::invoke, true>();
    PROCPOOL_MPI_CHECK_CALL(problem, F, "map_into", "imap");
    if constexpr (problem == d::CallProblem::none && d::mpi::RemoteCallable<std::decay_t<F>>) {
      using In = d::range_item_t<std::remove_reference_t<Range>>;
      static_assert(std::is_same_v<Out, d::map_result_t<std::decay_t<F>, In>>,
                    "procpool::mpi::Pool::map_into: `out` must be a std::vector of the callable's result type");
      d::mpi::refuse_addresses(f, "map_into");
      if (local_ != nullptr) {
        local_->map_into(std::forward<F>(f), std::forward<Range>(inputs), out, std::move(options));
        return;
      }
      auto batch = [&] {
        try {
          return run_dense<d::CallStyle::invoke>(f, inputs, std::move(options), "map_into", std::move(out));
        } catch (...) {
          out.clear();
          throw;
        }
      }();
      std::lock_guard lock(driver_->mutex());
      batch->take_values_into(out);
    }
  }
  /// map_into over a braced list.
  template <class F, class T, class Out>
  void map_into(F&& f, std::initializer_list<T> inputs, std::vector<Out>& out, MapOptions options = {}) {
    map_into(std::forward<F>(f), std::vector<T>(inputs), out, std::move(options));
  }

  /// Python's Pool.starmap, as procpool::Pool::starmap: each item is a std::tuple, std::pair or
  /// std::array of `f`'s arguments, and `f(std::get<0>(item), std::get<1>(item), ...)` runs for it on
  /// a worker of some rank. Results in input order; failures are thrown as by map.
  template <class F, class Range>
  [[nodiscard]] auto starmap(F&& f, Range&& items, MapOptions options = {}) {
    namespace d = ::procpool::detail;
    constexpr auto problem = d::call_problem<F, Range, d::CallStyle::apply, true>();
    PROCPOOL_MPI_CHECK_CALL(problem, F, "starmap", "imap (with a callable taking the whole tuple)");
    if constexpr (problem == d::CallProblem::none && d::mpi::RemoteCallable<std::decay_t<F>>) {
      d::mpi::refuse_addresses(f, "starmap");
      if (local_ != nullptr) return local_->starmap(std::forward<F>(f), std::forward<Range>(items), std::move(options));
      auto batch = run_dense<d::CallStyle::apply>(f, items, std::move(options), "starmap");
      std::lock_guard lock(driver_->mutex());
      return batch->take_values();
    }
  }
  /// starmap over a braced list: `pool.starmap(add, {std::pair{1, 2}, std::pair{3, 4}})`.
  template <class F, class T>
  [[nodiscard]] auto starmap(F&& f, std::initializer_list<T> items, MapOptions options = {}) {
    return starmap(std::forward<F>(f), std::vector<T>(items), std::move(options));
  }

  /// Lazily maps `f` over `inputs` on all ranks: results in input order as they arrive. Items are
  /// dispatched as results are consumed, so memory stays bounded however long (or endless) the
  /// input is. An lvalue range must outlive the iteration; an rvalue range is kept by the result.
  template <class F, class Range>
  [[nodiscard]] auto imap(F&& f, Range&& inputs, MapOptions options = {}) {
    constexpr auto problem = ::procpool::detail::call_problem<F, Range, ::procpool::detail::CallStyle::invoke, false>();
    PROCPOOL_MPI_CHECK_CALL(problem, F, "imap", "imap");
    if constexpr (problem == ::procpool::detail::CallProblem::none &&
                  ::procpool::detail::mpi::RemoteCallable<std::decay_t<F>>) {
      ::procpool::detail::mpi::refuse_addresses(f, "imap");
      if (local_ != nullptr) return local_->imap(std::forward<F>(f), std::forward<Range>(inputs), std::move(options));
      return make_stream(f, std::forward<Range>(inputs), std::move(options), /*ordered=*/true);
    }
  }
  /// imap over a braced list (copied into the result).
  template <class F, class T>
  [[nodiscard]] auto imap(F&& f, std::initializer_list<T> inputs, MapOptions options = {}) {
    return imap(std::forward<F>(f), std::vector<T>(inputs), std::move(options));
  }

  /// Like imap, but yields results as they complete, whatever their input order.
  template <class F, class Range>
  [[nodiscard]] auto imap_unordered(F&& f, Range&& inputs, MapOptions options = {}) {
    constexpr auto problem = ::procpool::detail::call_problem<F, Range, ::procpool::detail::CallStyle::invoke, false>();
    PROCPOOL_MPI_CHECK_CALL(problem, F, "imap_unordered", "imap_unordered");
    if constexpr (problem == ::procpool::detail::CallProblem::none &&
                  ::procpool::detail::mpi::RemoteCallable<std::decay_t<F>>) {
      ::procpool::detail::mpi::refuse_addresses(f, "imap_unordered");
      if (local_ != nullptr)
        return local_->imap_unordered(std::forward<F>(f), std::forward<Range>(inputs), std::move(options));
      return make_stream(f, std::forward<Range>(inputs), std::move(options), /*ordered=*/false);
    }
  }
  /// imap_unordered over a braced list (copied into the result).
  template <class F, class T>
  [[nodiscard]] auto imap_unordered(F&& f, std::initializer_list<T> inputs, MapOptions options = {}) {
    return imap_unordered(std::forward<F>(f), std::vector<T>(inputs), std::move(options));
  }

  /// Runs `f(args...)` on a worker of some rank; the Future gives its result (or failure), and can
  /// be cancelled or given done callbacks as procpool::Pool's can.
  template <class F, class... Args>
  [[nodiscard]] auto submit(F&& f, Args&&... args) {
    namespace d = ::procpool::detail;
    using Fn = std::decay_t<F>;
    using Tuple = std::tuple<std::decay_t<Args>...>;
    static_assert(std::invocable<Fn&, std::decay_t<Args>&...>,
                  "procpool::mpi::Pool::submit: the callable cannot be called with these arguments");
    static_assert(Encodable<Tuple>,
                  "procpool::mpi::Pool::submit: every argument must be encodable (see procpool/codec.hpp)");
    static_assert(d::mpi::RemoteCallable<Fn>,
                  "procpool::mpi::Pool::submit: this callable cannot travel to another machine (see map)");
    using R = std::remove_cvref_t<std::invoke_result_t<Fn&, std::decay_t<Args>&...>>;
    static_assert(std::is_void_v<R> || Encodable<R>,
                  "procpool::mpi::Pool::submit: the result type must be encodable (see procpool/codec.hpp)");
    d::mpi::refuse_addresses(f, "submit");
    if (local_ != nullptr) return local_->submit(std::forward<F>(f), std::forward<Args>(args)...);
    const std::uint64_t job = register_job<Tuple, R, d::CallStyle::apply>(f);
    auto batch = std::make_shared<d::SubmitBatch<Tuple, R>>(Tuple(std::forward<Args>(args)...),
                                                            std::chrono::nanoseconds{0}, std::chrono::nanoseconds{0});
    driver_->add_batch(batch, job);
    return Future<R>(driver_, std::move(batch));
  }

 private:
  template <class F>
  friend int run(int argc, char** argv, const Options& options, F&& fn);

  explicit Pool(procpool::Pool& local) : local_(&local) {}
  explicit Pool(std::shared_ptr<::procpool::detail::mpi::MpiDriver> driver) : driver_(std::move(driver)) {}

  /// Registers `f` for items In and results Out with the driver.
  template <class In, class Out, ::procpool::detail::CallStyle Style, class F>
  std::uint64_t register_job(const F& f) {
    namespace d = ::procpool::detail;
    using Fn = std::decay_t<F>;
    using T = d::mpi::travelling_t<Fn>;
    d::Buffer bytes;
    d::encode_callable(d::mpi::to_travelling<Fn>(f), bytes);
    return driver_->register_job(reinterpret_cast<std::uintptr_t>(&d::Runner<T, In, Style>::make),
                                 &d::mpi::shape<In, Out>, bytes.view());
  }

  /// Runs a map-like call on the ranks to completion. `call`: its name, for messages; `storage`: the
  /// vector to decode the results into (map_into).
  template <::procpool::detail::CallStyle Style, class F, class Range, class... Storage>
  auto run_dense(F& f, Range& inputs, MapOptions options, const char* call, Storage&&... storage) {
    namespace d = ::procpool::detail;
    check_options(options, call);
    using Fn = std::decay_t<F>;
    using In = d::range_item_t<Range>;
    using Out = d::item_result_t<Fn, In, Style>;
    using Dense = d::DenseBatch<std::ranges::iterator_t<Range>, std::ranges::sentinel_t<Range>, In, Out>;
    const auto size = static_cast<std::size_t>(std::ranges::distance(inputs));
    const std::uint64_t job = register_job<In, Out, Style>(f);
    auto batch = std::make_shared<Dense>(std::ranges::begin(inputs), std::ranges::end(inputs), size, std::move(options),
                                         std::forward<Storage>(storage)...);
    driver_->add_batch(batch, job);
    const d::mpi::ScopeExit forget([&] { driver_->forget(*batch); });
    driver_->wait_until([&] { return batch->settled(); });
    if (batch->caller_error()) std::rethrow_exception(batch->caller_error());
    return batch;
  }

  /// A per-call task timeout needs rank 0 to see each item start on a remote worker, which it does
  /// not: refused, rather than ignored. (Options::task_timeout applies on every rank.)
  static void check_options(const MapOptions& options, const char* call) {
    if (options.task_timeout.count() != 0)
      throw Error(fmt::format("procpool::mpi::Pool::{}: MapOptions::task_timeout is not supported across ranks; set "
                              "procpool::mpi::Options::task_timeout for run() instead",
                              call));
  }

  template <class F, class Range>
  auto make_stream(F& f, Range&& inputs, MapOptions options, bool ordered) {
    namespace d = ::procpool::detail;
    check_options(options, ordered ? "imap" : "imap_unordered");
    using Fn = std::decay_t<F>;
    using Stored = std::remove_cvref_t<Range>;
    using Inputs = std::remove_reference_t<Range>;
    std::shared_ptr<Stored> owned;
    Inputs* range = &inputs;
    if constexpr (!std::is_lvalue_reference_v<Range>) {
      owned = std::make_shared<Stored>(std::forward<Range>(inputs));
      range = owned.get();
    }
    using In = d::range_item_t<Inputs>;
    using Out = d::item_result_t<Fn, In, d::CallStyle::invoke>;
    using Stream = d::StreamRangeBatch<std::ranges::iterator_t<Inputs>, std::ranges::sentinel_t<Inputs>, In, Out>;
    std::optional<std::size_t> size;
    if constexpr (std::ranges::sized_range<Inputs&>) size = static_cast<std::size_t>(std::ranges::size(*range));
    const std::uint64_t job = register_job<In, Out, d::CallStyle::invoke>(f);
    auto batch = std::make_shared<Stream>(std::move(owned), std::ranges::begin(*range), std::ranges::end(*range), size,
                                          std::move(options), ordered, driver_->size());
    driver_->add_batch(batch, job);
    return ImapResults<Out>(driver_, std::move(batch));
  }

  procpool::Pool* local_ = nullptr;
  std::shared_ptr<::procpool::detail::mpi::MpiDriver> driver_;
};

namespace detail {

/// Calls fn(pool) and makes an int of what it returns (void: 0).
template <class F>
int call_user(F& fn, Pool& pool) {
  if constexpr (std::is_void_v<std::invoke_result_t<F&, Pool&>>) {
    std::invoke(fn, pool);
    return 0;
  } else {
    return static_cast<int>(std::invoke(fn, pool));
  }
}

/// Ends MPI on every path out of run().
struct MpiSession {
  MPI_Comm comm = MPI_COMM_NULL;
  /// Whether any thread may call MPI, one at a time (rank 0's driver may be driven by any thread
  /// that waits on the pool, and by its progress thread).
  bool serialized = false;
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  MpiSession(int& argc, char**& argv) {
    int provided = 0;
    ::procpool::detail::mpi::check(MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
    serialized = provided >= MPI_THREAD_SERIALIZED;
    MPI_Comm_dup(MPI_COMM_WORLD, &comm);
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  }
  ~MpiSession() {
    if (comm != MPI_COMM_NULL) MPI_Comm_free(&comm);
    MPI_Finalize();
  }
};

/// While it lives on rank 0, SIGTERM (how mpirun ends the job when another rank died) first writes a
/// line saying so on stderr, then ends the process as it would have. Only with
/// Options::explain_sigterm, and only where SIGTERM has its default action; the previous action
/// comes back with the destructor.
class TermNotice {
 public:
  explicit TermNotice(const std::string& host) {
    struct sigaction current {};
    if (::sigaction(SIGTERM, nullptr, &current) != 0 || current.sa_handler != SIG_DFL) return;
    const int n = std::snprintf(text(), kTextBytes,
                                "procpool::mpi: rank 0 (host %s) was told to stop (SIGTERM): another rank ended "
                                "before the job did, and under Open MPI 4 that ends the whole job (mpirun says which "
                                "rank and how)\n",
                                host.c_str());
    length() = n > 0 ? std::min<std::size_t>(static_cast<std::size_t>(n), kTextBytes - 1) : 0;
    struct sigaction notice {};
    notice.sa_handler = &TermNotice::on_term;
    sigemptyset(&notice.sa_mask);
    installed_ = ::sigaction(SIGTERM, &notice, &previous_) == 0;
  }
  TermNotice(const TermNotice&) = delete;
  TermNotice& operator=(const TermNotice&) = delete;
  ~TermNotice() {
    if (installed_) ::sigaction(SIGTERM, &previous_, nullptr);
  }

 private:
  static constexpr std::size_t kTextBytes = 512;
  static char* text() noexcept {
    static char buffer[kTextBytes];
    return buffer;
  }
  static std::size_t& length() noexcept {
    static std::size_t n = 0;
    return n;
  }
  // Async-signal-safe: write, signal, raise.
  static void on_term(int /*sig*/) {
    [[maybe_unused]] const ssize_t w = ::write(STDERR_FILENO, text(), length());
    ::signal(SIGTERM, SIG_DFL);
    ::raise(SIGTERM);
  }

  struct sigaction previous_ {};
  bool installed_ = false;
};

/// A serving rank's fatal error: said on stderr, and the whole job ends (rank 0 cannot go on without
/// this rank under Open MPI 4).
[[noreturn]] inline void abort_job(MPI_Comm comm, const std::string& where, const std::string& why) {
  std::fprintf(stderr, "procpool::mpi: %s: %s; aborting the MPI job\n", where.c_str(), why.c_str());
  std::fflush(stderr);
  MPI_Abort(comm, 70);
  std::_Exit(70);
}

}  // namespace detail

/// Runs `fn(pool)` on rank 0 with the workers of every other rank as `pool`, while the other ranks
/// serve its tasks; then every rank finishes MPI. Returns fn's result (an int, or 0 for void) on
/// rank 0 and 0 on the others. Without mpirun (or with one rank), runs fn on a local pool of this
/// machine's cores and never starts MPI. Throws procpool::Error on rank 0 if a rank runs a
/// different executable (its ELF build-id differs), naming the rank and its host; an exception
/// from fn is rethrown on rank 0 once the other ranks have stopped.
template <class F>
int run(int argc, char** argv, const Options& options, F&& fn) {
  namespace d = ::procpool::detail;
  namespace dm = ::procpool::detail::mpi;
  static_assert(std::is_invocable_v<F&, Pool&>, "procpool::mpi::run: the function must take a procpool::mpi::Pool&");
  const std::optional<detail::Launch> launch = detail::launched();
  if (!launch || launch->size <= 1) {
    procpool::Pool local(detail::pool_options(options));
    Pool pool(local);
    return detail::call_user(fn, pool);
  }
  detail::rank_slot() = launch->rank;
  // A serving rank's pool (its zygote) starts before MPI does: its workers are forks of a process
  // that never saw MPI (see docs/mpi.md).
  std::shared_ptr<d::PoolCore> local;
  if (launch->rank != 0) {
    d::Settings settings = d::Settings::from(detail::pool_options(options));
    const std::vector<int> cpus = detail::share_of_cpus(d::allowed_cpus(), ::sysconf(_SC_NPROCESSORS_ONLN),
                                                        launch->local_rank, launch->local_size);
    if (options.workers_per_rank == 0) settings.workers = std::max<std::size_t>(1, cpus.size());
    if (options.pin_cpus) settings.cpus = cpus;
    settings.worker_spin = std::chrono::nanoseconds{0};
    local = std::make_shared<d::PoolCore>(std::move(settings));
  }
  detail::MpiSession session(argc, argv);
  MPI_Comm comm = session.comm;
  int me = 0;
  int size = 0;
  MPI_Comm_rank(comm, &me);
  MPI_Comm_size(comm, &size);
  const std::string host = detail::host_name();
  const std::string where = fmt::format("rank {} (host {})", me, host);
  // One inbox and one outbox per rank for the whole run: a message taken in early is never lost.
  dm::Outbox out(comm);
  dm::Inbox in(comm);
  if (me != 0) {
    try {
      d::Buffer hello;
      dm::Writer(hello).str(dm::executable_id()).str(host).put<std::uint64_t>(local->size());
      out.send(0, dm::Kind::hello, std::move(hello));
      std::optional<dm::Message> verdict;
      dm::Backoff backoff;
      while (!(verdict = in.poll(0))) backoff.idle();
      if (verdict->kind != dm::Kind::verdict || !verdict->body.view().empty()) {
        // Rank 0 refused this rank: it throws the reason from run; this rank says it too, and ends
        // like the others (its exit status is rank 0's to decide).
        const auto why = verdict->body.view();
        std::fprintf(stderr, "procpool::mpi: %s does not serve: %.*s\n", where.c_str(), static_cast<int>(why.size()),
                     reinterpret_cast<const char*>(why.data()));
        local->shutdown(/*graceful=*/false);
        return 0;
      }
      dm::Server server(std::move(out), std::move(in), local, where);
      server.serve();
      local.reset();
    } catch (const std::exception& e) {
      detail::abort_job(comm, where, e.what());
    }
    return 0;
  }
  // Rank 0: who serves, and do they run this very executable?
  std::vector<dm::RankInfo> ranks;
  std::map<int, std::string> ids;  // each rank's executable
  {
    dm::Backoff backoff;
    while (ranks.size() < static_cast<std::size_t>(size - 1)) {
      std::optional<dm::Message> m = in.poll();
      if (!m) {
        backoff.idle();
        continue;
      }
      dm::Reader r(m->body.view());
      dm::RankInfo info;
      info.rank = m->source;
      const std::string id = r.str();
      info.host = r.str();
      info.workers = static_cast<std::size_t>(r.get<std::uint64_t>());
      ids.emplace(info.rank, id);
      ranks.push_back(std::move(info));
    }
  }
  std::sort(ranks.begin(), ranks.end(), [](const dm::RankInfo& a, const dm::RankInfo& b) { return a.rank < b.rank; });
  // The lowest-numbered rank that runs another executable is named.
  std::string mismatch;
  const std::string mine = dm::executable_id();
  for (const dm::RankInfo& info : ranks) {
    const std::string& id = ids[info.rank];
    if (id == mine) continue;
    mismatch = fmt::format(
        "procpool::mpi::run: rank {} (host {}) runs a different executable than rank 0 (its {} differs from rank 0's "
        "{}); every rank must run the same binary (the same build), since code travels between them as addresses",
        info.rank, info.host, id, mine);
    break;
  }
  for (const dm::RankInfo& r : ranks) {
    d::Buffer body;
    if (!mismatch.empty()) body.append(mismatch.data(), mismatch.size());
    out.send(r.rank, dm::Kind::verdict, std::move(body));
  }
  out.drain();
  if (!mismatch.empty()) throw Error(mismatch);
  d::Settings settings;
  std::size_t slots = 0;
  for (dm::RankInfo& r : ranks) {
    r.first_slot = slots;
    slots += r.workers;
  }
  settings.workers = std::max<std::size_t>(1, slots);
  settings.chunk_size = options.chunk_size;
  // If a serving rank dies, Open MPI 4 ends the job: mpirun sends rank 0 SIGTERM. If asked to, rank 0
  // then says why it stops (unless the program handles SIGTERM itself); removed when run returns.
  std::optional<detail::TermNotice> notice;
  if (options.explain_sigterm) notice.emplace(host);
  auto driver = std::make_shared<dm::MpiDriver>(std::move(out), std::move(in), std::move(ranks), std::move(settings),
                                                session.serialized);
  std::exception_ptr error;
  int result = 0;
  {
    Pool pool(driver);
    try {
      result = detail::call_user(fn, pool);
    } catch (...) {
      error = std::current_exception();
    }
  }
  driver->shutdown();
  driver.reset();
  if (error) std::rethrow_exception(error);
  return result;
}

/// run with default Options: one worker per CPU on every serving rank.
template <class F>
int run(int argc, char** argv, F&& fn) {
  return run(argc, argv, Options{}, std::forward<F>(fn));
}

}  // namespace procpool::mpi

#undef PROCPOOL_MPI_CHECK_CALL
