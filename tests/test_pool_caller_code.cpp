// procpool::Pool and the caller's own code: exceptions from the caller's input ranges, callbacks
// and serialize hooks fail exactly the call (or item) they belong to; everyday idioms ([&]
// lambdas, dropped futures, polling, children the caller forks) give right answers.
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <optional>
#include <procpool/pool.hpp>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

using namespace std::chrono_literals;
using Catch::Matchers::Contains;
using procpool_test::iota_vector;
using procpool_test::square;
using procpool_test::squares;
using procpool_test::two_workers;
using procpool_test::with_chunk;
using procpool_test::with_workers;

namespace procpool_caller_code {

struct Refused : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// A result whose decoding (in the parent) validates and throws for the value 3.
struct PickyResult {
  int value = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value);
    if constexpr (Archive::is_decoder) {
      if (value == 3) throw std::invalid_argument("PickyResult: 3 is not allowed");
    }
  }
};

/// A result whose encoding (in the worker) throws part-way, after writing some of its bytes.
struct HalfWritten {
  int a = 0;
  int b = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(a);
    if constexpr (Archive::is_encoder) {
      if (a == 3) throw Refused("HalfWritten: cannot encode 3");
    }
    ar(b);
  }
};

/// An argument whose encoding (in the parent) throws for the value 7.
struct Unsendable {
  int value = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    if constexpr (Archive::is_encoder) {
      if (value == 7) throw Refused("Unsendable: 7 cannot be sent");
    }
    ar(value);
  }
};

/// An argument whose decoding (in the worker) throws for the value 5.
struct Unreadable {
  int value = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value);
    if constexpr (Archive::is_decoder) {
      if (value == 5) throw Refused("Unreadable: 5 cannot be read");
    }
  }
};

}  // namespace procpool_caller_code

using namespace procpool_caller_code;

namespace {

/// An int in memory shared with the workers (mapped before the pool, so every fork shares it).
struct SharedCounter {
  std::atomic<int>* value;
  SharedCounter() {
    void* p = ::mmap(nullptr, sizeof(std::atomic<int>), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    value = new (p) std::atomic<int>(0);
  }
  ~SharedCounter() { ::munmap(value, sizeof(std::atomic<int>)); }
  SharedCounter(const SharedCounter&) = delete;
  SharedCounter& operator=(const SharedCounter&) = delete;
};

int sleepy_pid(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds{ms});
  return static_cast<int>(::getpid());
}

PickyResult picky(int x) { return PickyResult{x}; }
HalfWritten half_written(int x) { return HalfWritten{x, x * 100}; }
int unsendable(Unsendable u) { return u.value * 2; }
int unreadable(Unreadable u) { return u.value * 2; }

/// How many children the parent of the calling process has (in a fresh worker: its pool's workers).
int siblings(int) {
  std::ifstream children("/proc/" + std::to_string(::getppid()) + "/task/" + std::to_string(::getppid()) + "/children");
  int n = 0;
  for (long pid; children >> pid;) ++n;
  return n;
}

}  // namespace

// ---- exceptions from the caller's code in the parent --------------------------------------------

TEST_CASE("a progress callback that throws fails its own map with that exception and the next map works") {
  procpool::Pool pool{two_workers()};
  procpool::MapOptions options = with_chunk(1);
  options.on_progress = [](std::size_t done, std::size_t) {
    if (done >= 10) throw Refused("stop at ten");
  };
  CHECK_THROWS_MATCHES(pool.map(square, iota_vector(200), options), Refused, Catch::Matchers::Message("stop at ten"));
  // The next, unrelated call neither rethrows it nor waits for the failed batch's items.
  CHECK(pool.map(square, iota_vector(50)) == squares(50));
  CHECK(pool.submit(square, 9).get() == 81);
}

TEST_CASE("a progress callback that throws fails only its own call when another thread drives the pool") {
  procpool::Pool pool{two_workers()};
  std::atomic<bool> other_ok{false};
  std::thread other([&] {
    for (int round = 0; round < 5; ++round)
      if (pool.map(square, iota_vector(2000)) != squares(2000)) return;
    other_ok = true;
  });
  procpool::MapOptions options = with_chunk(1);
  options.on_progress = [](std::size_t done, std::size_t) {
    if (done >= 5) throw Refused("callback refused");
  };
  for (int round = 0; round < 5; ++round)
    CHECK_THROWS_AS(pool.map([](int x) { return x + 1; }, iota_vector(300), options), Refused);
  other.join();
  CHECK(other_ok);
}

TEST_CASE("a pool whose progress callback threw is destroyed without terminating or hanging") {
  const int status = procpool_test::run_isolated([] {
    procpool::Pool pool{two_workers()};
    procpool::MapOptions options = with_chunk(1);
    options.on_progress = [](std::size_t, std::size_t) { throw Refused("at once"); };
    try {
      (void)pool.map(square, iota_vector(1000), options);
      return procpool_test::fail(2, "map did not throw");
    } catch (const Refused&) {
    }
    return 0;  // ~Pool runs here
  });
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("an input range that throws while it is read fails the map, and the pool never reads it again") {
  procpool::Pool pool{two_workers()};
  std::atomic<int> reads{0};
  {
    // A forward range whose reading throws at element 500 (as a views::transform would; written
    // out because clang 14 cannot compile libstdc++ 12's views).
    struct ThrowingRange {
      const std::vector<int>* storage;
      std::atomic<int>* reads;
      struct iterator {
        using iterator_category = std::forward_iterator_tag;
        using value_type = int;
        using difference_type = std::ptrdiff_t;
        using pointer = const int*;
        using reference = int;
        const ThrowingRange* range = nullptr;
        std::size_t at = 0;
        int operator*() const {
          ++*range->reads;
          const int x = (*range->storage)[at];
          if (x == 500) throw Refused("element 500 is bad");
          return x;
        }
        iterator& operator++() {
          ++at;
          return *this;
        }
        iterator operator++(int) {
          iterator old = *this;
          ++at;
          return old;
        }
        bool operator==(const iterator& other) const { return at == other.at; }
      };
      iterator begin() const { return {this, 0}; }
      iterator end() const { return {this, storage->size()}; }
    };
    const std::vector<int> storage = iota_vector(5000);
    const ThrowingRange throwing{&storage, &reads};
    CHECK_THROWS_MATCHES(pool.map(square, throwing), Refused, Catch::Matchers::Message("element 500 is bad"));
  }  // the range's storage is gone
  const int reads_after_call = reads.load();
  CHECK(pool.map(square, iota_vector(3000)) == squares(3000));
  CHECK(reads.load() == reads_after_call);
}

TEST_CASE("an argument whose encoding throws fails the call with that exception, in map, submit and imap") {
  procpool::Pool pool{two_workers()};
  std::vector<Unsendable> items;
  for (int i = 0; i < 20; ++i) items.push_back(Unsendable{i});
  CHECK_THROWS_MATCHES(pool.map(unsendable, items), Refused, Catch::Matchers::Message("Unsendable: 7 cannot be sent"));
  auto future = pool.submit(unsendable, Unsendable{7});
  CHECK_THROWS_AS(future.get(), Refused);
  std::vector<int> streamed;
  CHECK_THROWS_AS(
      [&] {
        for (int v : pool.imap(unsendable, items, with_chunk(1))) streamed.push_back(v);
      }(),
      Refused);
  for (std::size_t i = 0; i < streamed.size(); ++i) CHECK(streamed[i] == static_cast<int>(i) * 2);
  CHECK(pool.map(square, iota_vector(10)) == squares(10));
}

TEST_CASE("a result whose decoding throws fails exactly that item in try_map and the others keep their values") {
  procpool::Pool pool{two_workers()};
  for (const std::size_t chunk : {std::size_t{1}, std::size_t{8}, std::size_t{0}}) {
    const auto outcomes = pool.try_map(picky, iota_vector(40), with_chunk(chunk));
    REQUIRE(outcomes.size() == 40);
    for (int i = 0; i < 40; ++i) {
      if (i == 3) {
        CHECK_THROWS_MATCHES(outcomes[3].value(), std::invalid_argument,
                             Catch::Matchers::Message("PickyResult: 3 is not allowed"));
      } else {
        REQUIRE(outcomes[static_cast<std::size_t>(i)].has_value());
        CHECK(outcomes[static_cast<std::size_t>(i)].value().value == i);
      }
    }
  }
  CHECK_THROWS_AS(pool.map(picky, iota_vector(10)), std::invalid_argument);
  // The workers are still trusted: their next results are not called malformed.
  CHECK(pool.map(square, iota_vector(100)) == squares(100));
}

TEST_CASE("a result whose encoding throws part-way fails that item and its neighbours keep their own values") {
  procpool::Pool pool{two_workers()};
  const auto outcomes = pool.try_map(half_written, iota_vector(10), with_chunk(10));
  REQUIRE(outcomes.size() == 10);
  for (int i = 0; i < 10; ++i) {
    if (i == 3) {
      REQUIRE_FALSE(outcomes[3].has_value());
      CHECK_THROWS_WITH(outcomes[3].value(), Contains("HalfWritten: cannot encode 3"));
    } else {
      REQUIRE(outcomes[static_cast<std::size_t>(i)].has_value());
      CHECK(outcomes[static_cast<std::size_t>(i)].value().a == i);
      CHECK(outcomes[static_cast<std::size_t>(i)].value().b == i * 100);
    }
  }
}

TEST_CASE("an argument whose decoding throws in the worker fails that item with a RemoteError naming it") {
  procpool::Pool pool{two_workers()};
  std::vector<Unreadable> items;
  for (int i = 0; i < 10; ++i) items.push_back(Unreadable{i});
  // One item per chunk: only the item itself fails.
  const auto alone = pool.try_map(unreadable, items, with_chunk(1));
  for (int i = 0; i < 10; ++i) {
    if (i == 5) {
      CHECK_THROWS_WITH(alone[5].value(), Contains("Unreadable: 5 cannot be read"));
    } else {
      CHECK(alone[static_cast<std::size_t>(i)].value() == i * 2);
    }
  }
  // In a shared chunk the items after it cannot be found in the stream: they fail saying so.
  const auto shared = pool.try_map(unreadable, items, with_chunk(10));
  for (int i = 0; i < 5; ++i) CHECK(shared[static_cast<std::size_t>(i)].value() == i * 2);
  CHECK_THROWS_WITH(shared[5].value(), Contains("Unreadable: 5 cannot be read"));
  for (int i = 6; i < 10; ++i) CHECK_THROWS_WITH(shared[static_cast<std::size_t>(i)].value(), Contains("not run"));
  CHECK(pool.map(square, iota_vector(20)) == squares(20));
}

TEST_CASE("an initializer that never returns fails the call with an error naming the initializer once task_timeout passes") {
  procpool::PoolOptions options = two_workers();
  options.task_timeout = 300ms;
  options.initializer = [] {
    for (;;) ::pause();
  };
  procpool::Pool pool{options};
  CHECK_THROWS_WITH(pool.map(square, iota_vector(4)), Contains("initializer") && Contains("task timeout"));
  CHECK_THROWS_WITH(pool.submit(square, 1).get(), Contains("initializer"));
}

// ---- callables that carry references --------------------------------------------------------

TEST_CASE("a [&] lambda sees the caller's variables as they are at the call, not at pool start") {
  procpool::Pool pool{two_workers()};
  int k = 10;  // set after the pool started
  CHECK(pool.map([&](int x) { return x * k; }, std::vector{1, 2, 3}) == std::vector<int>{10, 20, 30});
  k = 7;
  CHECK(pool.submit([&](int x) { return x * k; }, 3).get() == 21);
  std::vector<int> seen;
  for (int v : pool.imap([&](int x) { return x * k; }, std::vector{1, 2})) seen.push_back(v);
  CHECK(seen == std::vector<int>{7, 14});
}

TEST_CASE("a lambda capturing a vector by reference or by pointer sees the elements added after the pool started") {
  procpool::Pool pool{two_workers()};
  std::vector<int> table;
  for (int i = 0; i < 100; ++i) table.push_back(i * 3);
  CHECK(pool.map([&table](int i) { return table.at(static_cast<std::size_t>(i)); }, std::vector{0, 50, 99}) ==
        std::vector<int>{0, 150, 297});
  const std::vector<int>* p = &table;
  CHECK(pool.map([p](int) { return static_cast<int>(p->size()); }, std::vector{0}) == std::vector<int>{100});
}

TEST_CASE("a member function's [this] lambda sees the object's current state") {
  struct Scaler {
    int factor = 1;
    std::vector<int> run(procpool::Pool& pool, const std::vector<int>& xs) {
      return pool.map([this](int x) { return x * factor; }, xs);
    }
  };
  procpool::Pool pool{two_workers()};
  Scaler s;
  s.factor = 5;
  CHECK(s.run(pool, {1, 2}) == std::vector<int>{5, 10});
}

TEST_CASE("a lambda capturing only plain values runs in the persistent workers") {
  procpool::Pool pool{two_workers()};
  const auto pids = pool.worker_pids();
  // Two full words, no padding: padding bytes may hold leftover stack addresses, which count.
  std::int64_t k = 4;  // not const: a constant would need no capture
  double scale = 2.5;
  const auto ran_in = pool.map(
      [k, scale](int x) { return static_cast<int>(x * k) * static_cast<int>(scale) + static_cast<int>(::getpid()); },
      std::vector{0, 0, 0});
  for (int pid : ran_in) CHECK(std::find(pids.begin(), pids.end(), pid) != pids.end());
}

// ---- fresh workers belong to the pool --------------------------------------------------------

TEST_CASE("a fresh-worker task whose Future is dropped still runs to completion before ~Pool returns") {
  SharedCounter done;
  {
    procpool::Pool pool{two_workers()};
    const std::string label = "a string capture, so the callable cannot travel as bytes";
    std::atomic<int>* counter = done.value;
    (void)pool.submit([label, counter] {
      std::this_thread::sleep_for(200ms);
      counter->fetch_add(static_cast<int>(label.size() > 0));
    });
  }
  CHECK(done.value->load() == 1);
}

TEST_CASE("terminate() stops a fresh-worker task, and its Future reports it") {
  procpool::Pool pool{two_workers()};
  const std::string label = "cannot travel";
  auto future = pool.submit([label] {
    std::this_thread::sleep_for(30s);
    return static_cast<int>(label.size());
  });
  std::this_thread::sleep_for(100ms);
  const auto before = std::chrono::steady_clock::now();
  pool.terminate();
  CHECK(std::chrono::steady_clock::now() - before < 10s);
  CHECK_THROWS_AS(future.get(), procpool::Error);
}

TEST_CASE("a fresh-worker call forks no more workers than it has items") {
  procpool::Pool pool{with_workers(4)};
  const std::string label = "cannot travel";
  CHECK(pool.submit([label](int x) { return siblings(x) + static_cast<int>(label.size()) * 0; }, 0).get() == 1);
  CHECK(pool.map([label](int x) { return siblings(x) + static_cast<int>(label.size()) * 0; }, std::vector{0, 0}) ==
        std::vector<int>{2, 2});
}

// ---- polling, re-entry, shutdown ------------------------------------------------------------

TEST_CASE("Future::ready turns true by polling alone, without get or any other call") {
  procpool::Pool pool{two_workers()};
  auto future = pool.submit(sleepy_pid, 50);
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (!future.ready() && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
  CHECK(future.ready());
  auto second = pool.submit(square, 12);
  while (!second.wait_for(0ms) && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
  CHECK(second.get() == 144);
}

TEST_CASE("a progress callback that calls into its own pool fails its call with a clear error and the pool goes on") {
  procpool::Pool pool{two_workers()};
  procpool::MapOptions options;
  options.on_progress = [&pool](std::size_t, std::size_t) { (void)pool.map(square, std::vector{1}); };
  CHECK_THROWS_WITH(pool.map(square, iota_vector(10), options),
                    Contains("callbacks must not call into their own pool"));
  options.on_progress = [&pool](std::size_t, std::size_t) { (void)pool.submit(square, 1); };
  CHECK_THROWS_WITH(pool.map(square, iota_vector(10), options),
                    Contains("callbacks must not call into their own pool"));
  CHECK(pool.map(square, iota_vector(10)) == squares(10));
}

TEST_CASE("a task that uses the pool that runs it gets an error saying so, not 'moved from'") {
  procpool::Pool pool{two_workers()};
  procpool::Pool* self = &pool;
  const auto said = pool.map(
      [self](int) -> std::string {
        try {
          (void)self->map(square, std::vector{1});
          return "no error";
        } catch (const procpool::Error& e) {
          return e.what();
        }
      },
      std::vector{0});
  CHECK_THAT(said.at(0), Contains("worker processes") && !Contains("moved from"));
}

TEST_CASE("a child the caller forked and left running does not delay ~Pool") {
  std::optional<procpool::Pool> pool;
  pool.emplace(two_workers());
  CHECK(pool->map(square, iota_vector(10)) == squares(10));
  const pid_t child = ::fork();
  if (child == 0) {
    ::sleep(30);  // holds copies of every descriptor the pool had
    ::_exit(0);
  }
  REQUIRE(child > 0);
  const auto before = std::chrono::steady_clock::now();
  pool.reset();
  const auto took = std::chrono::steady_clock::now() - before;
  ::kill(child, SIGKILL);
  int status = 0;
  procpool_test::waitpid_all(child, &status);
  CHECK(took < 10s);
}

// ---- few long tasks -------------------------------------------------------------------------

TEST_CASE("two long items on two workers run side by side, through map, submit and imap") {
  procpool::Pool pool{two_workers()};
  const auto by_map = pool.map(sleepy_pid, std::vector{150, 150});
  CHECK(by_map[0] != by_map[1]);
  auto a = pool.submit(sleepy_pid, 150);
  auto b = pool.submit(sleepy_pid, 150);
  CHECK(a.get() != b.get());
  std::vector<int> by_imap;
  for (int pid : pool.imap(sleepy_pid, std::vector{150, 150})) by_imap.push_back(pid);
  CHECK(by_imap.at(0) != by_imap.at(1));
}

TEST_CASE("four long items on four workers each run on a worker of their own") {
  procpool::Pool pool{with_workers(4)};
  const auto pids = pool.map(sleepy_pid, std::vector{150, 150, 150, 150});
  CHECK(std::set<int>(pids.begin(), pids.end()).size() == 4);
}

// ---- imap's memory and lifetime -----------------------------------------------------------

TEST_CASE("ordered imap behind a slow first item holds a bounded number of large results") {
  SharedCounter started;
  procpool::Pool pool{two_workers()};
  std::atomic<int>* counter = started.value;
  const auto task = procpool::use_snapshot([counter](int i) {
    counter->fetch_add(1);
    if (i == 0) std::this_thread::sleep_for(1500ms);
    return std::vector<unsigned char>(std::size_t{1} << 20, static_cast<unsigned char>(i));
  });
  int seen_started = -1;
  int next = 0;
  for (const auto& v : pool.imap(task, iota_vector(2000))) {
    if (next == 0) seen_started = counter->load();
    CHECK(v.size() == (std::size_t{1} << 20));
    CHECK(v[0] == static_cast<unsigned char>(next));
    if (++next == 100) break;
  }
  // 64 MiB of outstanding 1 MiB results is 64 items, plus what was in flight when that was known.
  CHECK(seen_started > 0);
  CHECK(seen_started < 200);
}

TEST_CASE("an imap that outlives its Pool yields what was dispatched, then says the rest did not run") {
  auto make = [] {
    procpool::Pool pool{two_workers()};
    return pool.imap(square, iota_vector(1'000'000));
  };
  auto results = make();  // ~Pool has run: it must not wait for the whole input to be consumed
  std::size_t got = 0;
  try {
    for (long v : results) {
      CHECK(v == square(static_cast<int>(got)));
      ++got;
    }
    FAIL("iteration ended silently short");
  } catch (const procpool::Error& e) {
    CHECK_THAT(std::string(e.what()), Contains("did not run") && Contains("Keep the Pool alive"));
  }
  CHECK(got < 1'000'000);
}
