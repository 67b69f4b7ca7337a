// procpool::mpi's tests: one program, one scenario per run (its first argument), started by ctest
// under `mpirun -n 3` (see CMakeLists.txt). Rank 0 checks what the scenario must show and returns
// non-zero, saying why on stderr, if it does not; the other ranks serve.
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <procpool/mpi.hpp>
#include <ranges>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace {

using namespace std::chrono_literals;

int failures = 0;

#ifdef PROCPOOL_MPI_TEST_OTHER_BUILD
// Makes this build's code, and so its build-id, differ from mpi_scenarios'.
[[maybe_unused]] volatile int other_build = 1;
#endif

void expect(bool ok, const std::string& what) {
  if (ok) return;
  std::fprintf(stderr, "FAILED: %s\n", what.c_str());
  ++failures;
}

bool contains(std::string_view text, std::string_view part) { return text.find(part) != std::string_view::npos; }

// ---- tasks (plain functions: they travel relative to the executable) ----

std::pair<int, long> rank_and_square(long x) { return {procpool::mpi::rank(), x * x}; }

long square(long x) { return x * x; }

int fail_some(int x) {
  if (x == 41) ::raise(SIGSEGV);
  if (x == 42) throw std::out_of_range("item 42 is out of range");
  if (x == 43) std::this_thread::sleep_for(30s);
  return x;
}

std::string big(int mib) { return std::string(static_cast<std::size_t>(mib) << 20, static_cast<char>('a' + mib % 26)); }

// The pid of the rank a worker belongs to, recorded before its pool started (workers inherit it).
pid_t rank_pid = 0;

int kill_my_rank(int x) {
  if (procpool::mpi::rank() == 2 && x >= 100) ::kill(rank_pid, SIGKILL);
  std::this_thread::sleep_for(1ms);
  return x;
}

int nap_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}

int throw_for(int x) {
  if (x < 0) throw std::invalid_argument("negative");
  return x;
}

std::pair<int, long> rank_and_product(long a, long b) { return {procpool::mpi::rank(), a * b}; }

long divide(long a, long b) {
  if (b == 0) throw std::domain_error("division by zero");
  return a / b;
}

std::string text_of(int n) { return std::string(static_cast<std::size_t>(n), 'a'); }

// Every 7th item (from the 4th) throws; the others' texts differ in length, some of 200 KB.
std::string text_or_throw(int x) {
  if (x % 7 == 3) throw std::runtime_error(fmt::format("item {} refused", x));
  const std::size_t n = x % 97 == 0 ? 200'000 + static_cast<std::size_t>(x) : static_cast<std::size_t>(x % 50);
  return std::string(n, static_cast<char>('a' + x % 26));
}

// Every 7th item (from the 4th) throws, and item 501 kills its worker.
long square_or_fail(long x) {
  if (x % 7 == 3) throw std::runtime_error(fmt::format("item {} refused", x));
  if (x == 501) ::raise(SIGSEGV);
  return x * x;
}

// ---- scenarios (run on rank 0) ----

// map: results come back in input order; both serving ranks ran items.
void results_in_order_across_ranks(procpool::mpi::Pool& pool) {
  expect(pool.ranks() == 2, fmt::format("2 serving ranks, got {}", pool.ranks()));
  expect(pool.size() >= 2, fmt::format("at least one worker per serving rank, got {}", pool.size()));
  std::vector<long> in(20000);
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = static_cast<long>(i);
  const auto out = pool.map(rank_and_square, in);
  expect(out.size() == in.size(), "one result per item");
  std::map<int, std::size_t> per_rank;
  bool ordered = true;
  for (std::size_t i = 0; i < out.size(); ++i) {
    ordered = ordered && out[i].second == in[i] * in[i];
    ++per_rank[out[i].first];
  }
  expect(ordered, "results in input order");
  expect(per_rank.count(0) == 0, "rank 0 runs no item");
  expect(per_rank[1] > 0 && per_rank[2] > 0,
         fmt::format("items ran on both serving ranks (rank 1: {}, rank 2: {})", per_rank[1], per_rank[2]));
  // A capture-by-value closure travels; try_map gives every outcome.
  long offset = 7;
  const auto outcomes = pool.try_map([offset](long x) { return x + offset; }, std::vector<long>{1, 2, 3});
  expect(outcomes.size() == 3 && outcomes[2].has_value() && outcomes[2].value() == 10, "a closure's capture travels");
  // A closure holding a reference is refused: it means nothing on another machine.
  long local = 3;
  try {
    (void)pool.map([&local](long x) { return x + local; }, std::vector<long>{1});
    expect(false, "a [&] closure is refused");
  } catch (const procpool::Error& e) {
    expect(contains(e.what(), "pointer or a reference"), std::string("the refusal says why: ") + e.what());
  }
}

// A segfault, an exception and a timeout on remote ranks fail their items only, naming rank and host.
void remote_failures_fail_only_their_items(procpool::mpi::Pool& pool) {
  std::vector<int> in(100);
  for (int i = 0; i < 100; ++i) in[static_cast<std::size_t>(i)] = i;
  const auto out = pool.try_map(fail_some, in, {.chunk_size = 1});
  for (int i = 0; i < 100; ++i) {
    const auto& o = out[static_cast<std::size_t>(i)];
    if (i < 41 || i > 43) expect(o.has_value() && o.value() == i, fmt::format("item {} succeeds", i));
  }
  const auto what = [&](int i) -> std::string {
    try {
      std::rethrow_exception(out[static_cast<std::size_t>(i)].error());
    } catch (const procpool::ProcessError& e) {
      return fmt::format("ProcessError({}, item {}): {}", e.exitcode(), e.item().value_or(999), e.what());
    } catch (const procpool::TimeoutError& e) {
      return fmt::format("TimeoutError(item {}): {}", e.item().value_or(999), e.what());
    } catch (const procpool::RemoteError& e) {
      return fmt::format("RemoteError({}, item {}): {}", e.type_name(), e.item().value_or(999), e.what());
    } catch (const std::exception& e) {
      return fmt::format("other: {}", e.what());
    }
  };
  const std::string segv = what(41);
  const std::string thrown = what(42);
  const std::string slow = what(43);
  std::fprintf(stderr, "%s\n%s\n%s\n", segv.c_str(), thrown.c_str(), slow.c_str());
  expect(contains(segv, "ProcessError(-11, item 41): procpool::mpi::Pool: rank ") && contains(segv, "(host ") &&
             contains(segv, "was killed by signal 11 (SIGSEGV) while running item 41"),
         "a remote segfault is a ProcessError naming rank, host, worker and item: " + segv);
  expect(contains(thrown, "RemoteError(std::out_of_range, item 42)") && contains(thrown, "item 42 is out of range") &&
             contains(thrown, "(host "),
         "a remote exception keeps its type and names rank and host: " + thrown);
  expect(contains(slow, "TimeoutError(item 43): procpool::mpi::Pool: rank ") &&
             contains(slow, "ran longer than the task timeout of 500 ms") && contains(slow, "(host "),
         "a remote timeout is a TimeoutError: " + slow);
  // The pool goes on.
  const auto again = pool.map(square, std::vector<long>{5, 6});
  expect(again == std::vector<long>{25, 36}, "the pool works after the failures");
}

// Chunks of many items with failures among them: a rank answers each chunk with the values of
// the items that succeeded, packed (fixed-size ones closed up, variable-size ones gathered from
// its workers' pieces in item order); rank 0 must pair every value and every failure with its item.
void failures_inside_multi_item_chunks(procpool::mpi::Pool& pool) {
  std::vector<int> in(2000);
  for (int i = 0; i < 2000; ++i) in[static_cast<std::size_t>(i)] = i;
  const auto texts = pool.try_map(text_or_throw, in, {.chunk_size = 50});
  expect(texts.size() == in.size(), "an outcome per item (variable-size results)");
  std::size_t wrong = 0;
  for (int i = 0; i < static_cast<int>(texts.size()); ++i) {
    const auto& o = texts[static_cast<std::size_t>(i)];
    if (i % 7 == 3) {
      try {
        if (o.has_value()) throw std::logic_error("a value");
        std::rethrow_exception(o.error());
      } catch (const procpool::RemoteError& e) {
        if (!contains(e.what(), fmt::format("item {} refused", i)) || e.item() != static_cast<std::size_t>(i)) ++wrong;
      } catch (...) {
        ++wrong;
      }
    } else if (!o.has_value() || o.value() != text_or_throw(i)) {
      ++wrong;
    }
  }
  expect(wrong == 0, fmt::format("every text and every failure belongs to its item ({} wrong)", wrong));

  std::vector<long> numbers(2000);
  for (std::size_t i = 0; i < numbers.size(); ++i) numbers[i] = static_cast<long>(i);
  const auto squares = pool.try_map(square_or_fail, numbers, {.chunk_size = 50});
  wrong = 0;
  std::string crash;
  for (long i = 0; i < static_cast<long>(squares.size()); ++i) {
    const auto& o = squares[static_cast<std::size_t>(i)];
    if (i == 501) {
      try {
        if (o.has_value()) throw std::logic_error("a value");
        std::rethrow_exception(o.error());
      } catch (const procpool::ProcessError& e) {
        crash = e.what();
      } catch (...) {
        crash = "not a ProcessError";
      }
    } else if (i % 7 == 3) {
      if (o.has_value()) ++wrong;
    } else if (!o.has_value() || o.value() != i * i) {
      ++wrong;
    }
  }
  expect(wrong == 0, fmt::format("every square and every failure belongs to its item ({} wrong)", wrong));
  expect(contains(crash, "killed by signal 11 (SIGSEGV) while running item 501") && contains(crash, "(host "),
         "the crash inside a chunk fails its own item only, named: " + crash);
}

// With workers_per_rank = 0, ranks that mpirun left unbound (3 ranks on this machine, none bound,
// as when oversubscribed) split the machine's CPUs: together they run about one worker per CPU,
// not one per CPU each. Rank 0 works out each serving rank's share as that rank did.
void unbound_ranks_share_the_cpus(procpool::mpi::Pool& pool) {
  const std::vector<int> mask = procpool::detail::allowed_cpus();
  const long online = ::sysconf(_SC_NPROCESSORS_ONLN);
  const char* local_size = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  expect(local_size != nullptr && std::atoi(local_size) == 3, "mpirun says 3 ranks run on this machine");
  if (static_cast<long>(mask.size()) < online) {
    std::fprintf(stderr, "rank 0 is bound to %zu of %ld CPUs: the ranks keep their bindings\n", mask.size(), online);
    return;
  }
  std::size_t expected = 0;
  for (int k = 1; k <= 2; ++k) expected += procpool::mpi::detail::share_of_cpus(mask, online, k, 3).size();
  expect(pool.size() == expected,
         fmt::format("the serving ranks run {} workers on {} CPUs (expected {})", pool.size(), mask.size(), expected));
  expect(pool.size() < 2 * mask.size() || mask.size() == 1, "fewer workers than one per CPU on each rank");
  const auto out = pool.map(square, std::vector<long>{1, 2, 3});
  expect(out == std::vector<long>{1, 4, 9}, "and they work");
}

// Results of 64 MiB travel (in pieces below MPI's 2 GiB count limit).
void large_results_travel(procpool::mpi::Pool& pool) {
  const auto out = pool.map(big, std::vector<int>{64, 1, 65});
  expect(out.size() == 3, "three results");
  expect(out[0].size() == (std::size_t{64} << 20) && out[0].front() == 'm' && out[0].back() == 'm',
         "the first 64 MiB result arrived whole");
  expect(out[1] == big(1), "the small one too");
  expect(out[2].size() == (std::size_t{65} << 20) && out[2].back() == 'n', "and the 65 MiB one");
}

// A million items, in order.
void a_million_items(procpool::mpi::Pool& pool) {
  std::vector<long> in(1'000'000);
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = static_cast<long>(i % 1000);
  const auto t0 = std::chrono::steady_clock::now();
  const auto out = pool.map(square, in);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "1e6 items in %.3f s\n", s);
  bool ok = out.size() == in.size();
  for (std::size_t i = 0; ok && i < in.size(); ++i) ok = out[i] == in[i] * in[i];
  expect(ok, "a million results, in order");
}

// submit: Futures from remote ranks get, fail, cancel and call back as local ones do.
void futures_across_ranks(procpool::mpi::Pool& pool) {
  auto f = pool.submit(square, 12L);
  expect(f.get() == 144, "submit + get");
  auto bad = pool.submit(throw_for, -1);
  try {
    (void)bad.get();
    expect(false, "a task that throws makes get() throw");
  } catch (const procpool::RemoteError& e) {
    expect(e.type_name() == "std::invalid_argument" && contains(e.what(), "(host "),
           std::string("RemoteError from another rank: ") + e.what());
  }
  // Many at once, spread over the ranks.
  std::vector<procpool::Future<std::pair<int, long>>> many;
  for (long i = 0; i < 200; ++i) many.push_back(pool.submit(rank_and_square, i));
  std::set<int> ranks;
  bool right = true;
  for (long i = 0; i < 200; ++i) {
    const auto [r, v] = many[static_cast<std::size_t>(i)].get();
    ranks.insert(r);
    right = right && v == i * i;
  }
  expect(right, "200 submits give their results");
  // Cancelled while it runs on a rank: get() throws CancelledError.
  auto slow = pool.submit(nap_ms, 5000);
  std::this_thread::sleep_for(100ms);
  expect(slow.cancel(), "cancel() stops a running task");
  try {
    (void)slow.get();
    expect(false, "a cancelled task's get() throws");
  } catch (const procpool::CancelledError& e) {
    expect(contains(e.what(), "cancelled"), e.what());
  }
  // A done callback runs though rank 0's caller only sleeps.
  std::atomic<int> seen{0};
  auto cb = pool.submit(square, 9L);
  cb.add_done_callback([&](const procpool::Outcome<long>& o) { seen = static_cast<int>(o.value()); });
  for (int i = 0; i < 200 && seen == 0; ++i) std::this_thread::sleep_for(10ms);
  expect(seen == 81, fmt::format("the done callback ran with 81, saw {}", seen.load()));
}

// An endless input that counts the items read from it.
struct Counted {
  long* pulled = nullptr;
  struct iterator {
    using value_type = long;
    using difference_type = std::ptrdiff_t;
    long* pulled = nullptr;
    long next = 0;
    long operator*() const {
      ++*pulled;
      return next;
    }
    iterator& operator++() {
      ++next;
      return *this;
    }
    void operator++(int) { ++next; }
    friend bool operator==(const iterator& /*it*/, std::unreachable_sentinel_t /*end*/) { return false; }
  };
  [[nodiscard]] iterator begin() const { return {pulled, 0}; }
  [[nodiscard]] std::unreachable_sentinel_t end() const { return {}; }
};

// imap over an endless input reads it only as results are consumed; imap_unordered yields all.
void imap_stays_bounded(procpool::mpi::Pool& pool) {
  long pulled = 0;
  Counted counted{&pulled};
  long consumed = 0;
  bool ordered = true;
  {
    auto results = pool.imap(square, counted);
    for (const long v : results) {
      ordered = ordered && v == consumed * consumed;
      if (++consumed == 20000) break;
    }
  }
  std::fprintf(stderr, "imap: %ld consumed, %ld read from the endless input\n", consumed, pulled);
  expect(ordered, "imap yields in input order");
  expect(pulled >= consumed && pulled < consumed + 200000,
         fmt::format("imap reads the endless input only as results are consumed ({} read for {})", pulled, consumed));
  std::vector<long> in(5000);
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = static_cast<long>(i);
  std::set<long> got;
  for (const long v : pool.imap_unordered(square, in)) got.insert(v);
  expect(got.size() == in.size() && got.count(4999L * 4999L) == 1, "imap_unordered yields every result");
}

// starmap: results in input order from both serving ranks; a remote failure names item, rank and
// host. map_into: the caller's vector gets the results, in the memory its elements already own.
void starmap_and_map_into(procpool::mpi::Pool& pool) {
  std::vector<std::pair<long, long>> pairs(4000);
  for (std::size_t i = 0; i < pairs.size(); ++i) pairs[i] = {static_cast<long>(i), static_cast<long>(i) + 1};
  const auto out = pool.starmap(rank_and_product, pairs);
  std::map<int, std::size_t> per_rank;
  bool ordered = out.size() == pairs.size();
  for (std::size_t i = 0; ordered && i < out.size(); ++i) {
    ordered = out[i].second == pairs[i].first * pairs[i].second;
    ++per_rank[out[i].first];
  }
  expect(ordered, "starmap's results in input order");
  expect(per_rank[1] > 0 && per_rank[2] > 0,
         fmt::format("starmap ran items on both serving ranks (rank 1: {}, rank 2: {})", per_rank[1], per_rank[2]));
  expect(pool.starmap(divide, {std::pair{6L, 3L}, std::pair{8L, 2L}}) == std::vector<long>{2, 4},
         "starmap over a braced list");
  try {
    (void)pool.starmap(divide, std::vector<std::tuple<long, long>>{{1, 1}, {2, 0}, {3, 1}});
    expect(false, "a starmap whose item throws on a rank throws");
  } catch (const procpool::RemoteError& e) {
    expect(e.type_name() == "std::domain_error" && e.item() == std::size_t{1} &&
               contains(e.what(), "division by zero") && contains(e.what(), "procpool::mpi::Pool: ") &&
               contains(e.what(), "(host "),
           std::string("a remote failure in a starmap keeps its type and names item, rank and host: ") + e.what());
  }

  std::vector<std::string> texts(3, std::string(4096, 'x'));
  std::vector<const char*> storage;
  for (const std::string& t : texts) storage.push_back(t.data());
  pool.map_into(text_of, std::vector<int>{100, 200, 300}, texts);
  expect(texts.size() == 3 && texts[0] == text_of(100) && texts[1] == text_of(200) && texts[2] == text_of(300),
         "map_into's results in input order");
  bool reused = true;
  for (std::size_t i = 0; i < texts.size(); ++i) reused = reused && texts[i].data() == storage[i];
  expect(reused, "map_into decodes into the strings' own memory");
  std::vector<int> ints(10, 7);
  try {
    pool.map_into(throw_for, {1, -1, 3}, ints);
    expect(false, "map_into throws a remote failure");
  } catch (const procpool::RemoteError& e) {
    expect(e.item() == std::size_t{1} && contains(e.what(), "negative"),
           std::string("map_into's failure names its item: ") + e.what());
  }
  expect(ints == std::vector<int>{1, 0, 3}, "map_into leaves the other results, the failed one value-initialised");
}

// Without mpirun: the function runs on a local pool.
void singleton(procpool::mpi::Pool& pool) {
  expect(pool.ranks() == 0, "no serving rank without mpirun");
  expect(procpool::mpi::rank() == 0, "rank 0 without mpirun");
  expect(pool.map(square, std::vector<long>{1, 2, 3}) == std::vector<long>{1, 4, 9}, "map runs locally");
  const auto ranks = pool.map(rank_and_square, std::vector<long>{4});
  expect(ranks[0].first == 0 && ranks[0].second == 16, "workers say rank 0");
  expect(pool.starmap(divide, {std::pair{6L, 3L}, std::pair{8L, 2L}}) == std::vector<long>{2, 4},
         "starmap runs locally");
  std::vector<std::string> texts;
  pool.map_into(text_of, std::vector<int>{1, 2}, texts);
  expect(texts == std::vector<std::string>{"a", "aa"}, "map_into runs locally");
}

// A rank dies in the middle of a map: the job ends (checked by the ctest script).
void a_rank_dies(procpool::mpi::Pool& pool) {
  std::vector<int> in(100000);
  for (int i = 0; i < 100000; ++i) in[static_cast<std::size_t>(i)] = i;
  (void)pool.map(kill_my_rank, in, {.chunk_size = 1});
  expect(false, "the job should have been aborted by mpirun when rank 2 died");
}

}  // namespace

int main(int argc, char** argv) {
  const std::string scenario = argc > 1 ? argv[1] : "";
  rank_pid = ::getpid();
  procpool::mpi::Options options;
  options.workers_per_rank = scenario == "cpu_share" ? 0 : 2;
  if (scenario == "failures") options.task_timeout = 500ms;
  if (scenario == "rank_dies_explained") options.explain_sigterm = true;
  try {
    const int rc = procpool::mpi::run(argc, argv, options, [&](procpool::mpi::Pool& pool) {
      if (scenario == "order") {
        results_in_order_across_ranks(pool);
      } else if (scenario == "failures") {
        remote_failures_fail_only_their_items(pool);
      } else if (scenario == "cpu_share") {
        unbound_ranks_share_the_cpus(pool);
      } else if (scenario == "chunk_failures") {
        failures_inside_multi_item_chunks(pool);
      } else if (scenario == "large") {
        large_results_travel(pool);
      } else if (scenario == "million") {
        a_million_items(pool);
      } else if (scenario == "futures") {
        futures_across_ranks(pool);
      } else if (scenario == "imap") {
        imap_stays_bounded(pool);
      } else if (scenario == "starmap") {
        starmap_and_map_into(pool);
      } else if (scenario == "singleton") {
        singleton(pool);
      } else if (scenario == "rank_dies" || scenario == "rank_dies_explained") {
        a_rank_dies(pool);
      } else {
        expect(false, "unknown scenario '" + scenario + "'");
      }
      return failures == 0 ? 0 : 1;
    });
    if (procpool::mpi::rank() == 0)
      std::fprintf(stderr, "scenario %s: %s\n", scenario.c_str(), rc == 0 ? "ok" : "FAILED");
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "run threw: %s\n", e.what());
    return scenario == "other_binary" && contains(e.what(), "runs a different executable than rank 0") ? 0 : 1;
  }
}
