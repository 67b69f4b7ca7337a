// procpool::Pool::imap and imap_unordered: order, completeness, owned rvalue ranges, bounded
// memory over lazy inputs, early exit, and failures.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstddef>
#include <iterator>
#include <optional>
#include <procpool/pool.hpp>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "support.hpp"

using namespace std::chrono_literals;
using procpool_test::iota_vector;
using procpool_test::two_workers;
using procpool_test::with_chunk;

namespace {

int square(int x) { return x * x; }

/// Produces 0, 1, 2, ... up to `limit` items, and counts how many were pulled.
struct Generator {
  std::size_t limit = 0;
  std::size_t pulled = 0;  // items produced so far (the iterator was advanced past them)
};

/// A lazy, single-pass range over a Generator: its items exist only as they are pulled.
class LazyInts {
 public:
  class iterator {
   public:
    using iterator_concept = std::input_iterator_tag;
    using iterator_category = std::input_iterator_tag;
    using value_type = int;
    using difference_type = std::ptrdiff_t;

    iterator() = default;
    explicit iterator(Generator* g) : g_(g) {}
    int operator*() const { return static_cast<int>(g_->pulled); }
    iterator& operator++() {
      ++g_->pulled;
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& it, std::default_sentinel_t) { return it.g_->pulled >= it.g_->limit; }

   private:
    Generator* g_ = nullptr;
  };

  explicit LazyInts(Generator& g) : g_(&g) {}
  [[nodiscard]] iterator begin() const { return iterator(g_); }
  [[nodiscard]] std::default_sentinel_t end() const { return {}; }

 private:
  Generator* g_;
};

static_assert(std::input_iterator<LazyInts::iterator>);
static_assert(!std::forward_iterator<LazyInts::iterator>);

}  // namespace

TEST_CASE("imap yields results in input order") {
  procpool::Pool pool{two_workers()};
  const std::vector<int> in = iota_vector(3000);
  // Some items are slower, so chunks finish out of order; imap must still yield in order.
  auto results = pool.imap(
      [](int x) {
        if (x % 97 == 0) std::this_thread::sleep_for(2ms);
        return x * 2 + 1;
      },
      in, with_chunk(5));
  STATIC_REQUIRE(std::is_same_v<decltype(results), procpool::ImapResults<int>>);
  std::vector<int> out;
  for (int r : results) out.push_back(r);
  REQUIRE(out.size() == in.size());
  for (std::size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == static_cast<int>(i) * 2 + 1);
}

TEST_CASE("imap with automatic chunk sizes yields 100k results in input order") {
  procpool::Pool pool{two_workers()};
  const std::vector<int> in = iota_vector(100'000);
  std::size_t n = 0;
  std::size_t misplaced = 0;
  for (int r : pool.imap([](int x) { return x - 1; }, in)) {
    if (r != static_cast<int>(n) - 1) ++misplaced;
    ++n;
  }
  CHECK(n == in.size());
  CHECK(misplaced == 0);
}

TEST_CASE("imap_unordered yields every result exactly once") {
  procpool::Pool pool{two_workers()};
  std::vector<int> in;
  for (int i = 0; i < 2000; ++i) in.push_back(i % 150);  // duplicates: compare as multisets
  std::multiset<int> expected;
  for (int x : in) expected.insert(square(x));
  std::multiset<int> got;
  for (int r : pool.imap_unordered(
           [](int x) {
             if (x % 50 == 0) std::this_thread::sleep_for(1ms);
             return square(x);
           },
           in, with_chunk(3)))
    got.insert(r);
  CHECK(got.size() == in.size());
  CHECK(got == expected);
}

TEST_CASE("imap over an rvalue vector keeps the range alive while iterating") {
  procpool::Pool pool{two_workers()};
  const auto make_words = [] {
    std::vector<std::string> words;
    for (int i = 0; i < 500; ++i) words.push_back("word-number-" + std::to_string(i) + std::string(40, 'x'));
    return words;
  };
  auto results = pool.imap([](const std::string& s) { return s.substr(0, s.find('x')); }, make_words(), with_chunk(4));
  // The temporary vector is gone from the caller's side; the results own it now.
  std::vector<std::string> noise(100, std::string(60, '#'));  // reuse freed memory if it was freed
  std::size_t i = 0;
  for (const std::string& r : results) {
    REQUIRE(r == "word-number-" + std::to_string(i));
    ++i;
  }
  CHECK(i == 500);
  CHECK(noise.size() == 100);
}

TEST_CASE("imap_unordered over an rvalue vector yields every result") {
  procpool::Pool pool{two_workers()};
  std::multiset<long> got;
  for (long r : pool.imap_unordered([](int x) { return long{x} * 1000; }, iota_vector(1000))) got.insert(r);
  std::multiset<long> expected;
  for (int i = 0; i < 1000; ++i) expected.insert(long{i} * 1000);
  CHECK(got == expected);
}

TEST_CASE("imap over a lazy input of a million items pulls only a bounded part before results are consumed") {
  procpool::Pool pool{two_workers()};
  Generator g{1'000'000};
  const LazyInts range(g);
  {
    auto results = pool.imap([](int x) { return x * 2; }, range);
    auto it = results.begin();
    for (int i = 0; i < 10; ++i) {
      REQUIRE(it != results.end());
      REQUIRE(*it == i * 2);
      ++it;
    }
    INFO("items pulled from the input after 10 results: " << g.pulled);
    CHECK(g.pulled >= 10);
    CHECK(g.pulled < 200'000);
  }  // destroyed early: the rest of the input is abandoned
  const std::size_t pulled_at_abandon = g.pulled;
  // The pool finishes what was already dispatched and stays usable; the abandoned input is not
  // pulled any further.
  CHECK(pool.map(square, std::vector{4, 5}) == std::vector<int>{16, 25});
  CHECK(g.pulled == pulled_at_abandon);
}

TEST_CASE("imap over a lazy single-pass input of unknown length yields every result and ends") {
  procpool::Pool pool{two_workers()};
  Generator g{50'000};
  std::size_t n = 0;
  std::size_t misplaced = 0;
  for (int r : pool.imap([](int x) { return x + 3; }, LazyInts(g))) {
    if (r != static_cast<int>(n) + 3) ++misplaced;
    ++n;
  }
  CHECK(n == 50'000);
  CHECK(misplaced == 0);
  CHECK(g.pulled == 50'000);
}

TEST_CASE("imap over a sized input whose chunks are cut by the message byte limit yields every result") {
  // 20k items of 1000 bytes asked for in one chunk: about 20 MB, more than one message may carry
  // (8 MiB), so chunks are cut short. imap must go on with the rest of the input. Run in a helper
  // process with an alarm, so that a hang fails this test instead of blocking the whole run.
  const int status = procpool_test::run_isolated([] {
    ::alarm(20);
    procpool::Pool pool{two_workers()};
    const std::vector<std::string> in(20'000, std::string(1000, 'x'));
    std::size_t n = 0;
    for (std::size_t r : pool.imap([](const std::string& s) { return s.size(); }, in, with_chunk(20'000))) {
      if (r != 1000) return procpool_test::fail(2, "wrong result at position " + std::to_string(n));
      ++n;
    }
    if (n != in.size()) return procpool_test::fail(3, "only " + std::to_string(n) + " results");
    return 0;
  });
  INFO(procpool_test::describe_status(status) << " (killed by signal 14 = SIGALRM means imap hung)");
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("breaking out of an imap loop early does not hang and the pool stays usable") {
  procpool::Pool pool{two_workers()};
  const std::vector<int> in = iota_vector(20'000);
  int seen = 0;
  for (int r : pool.imap(
           [](int x) {
             std::this_thread::sleep_for(50us);
             return x;
           },
           in, with_chunk(10))) {
    REQUIRE(r == seen);
    if (++seen == 25) break;
  }
  CHECK(seen == 25);
  const auto out = pool.map([](int x) { return x * 5; }, iota_vector(1000));
  REQUIRE(out.size() == 1000);
  for (std::size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == static_cast<int>(i) * 5);
  CHECK(pool.submit([](int a) { return a + 1; }, 1).get() == 2);
}

TEST_CASE("destroying imap results early whether started or not leaves the pool usable") {
  procpool::Pool pool{two_workers()};
  const std::vector<int> in = iota_vector(20'000);
  { auto never_started = pool.imap(square, in, with_chunk(7)); }
  {
    auto unordered = pool.imap_unordered(square, in, with_chunk(7));
    auto it = unordered.begin();
    REQUIRE(it != unordered.end());
    (void)*it;
  }
  {
    auto partly = pool.imap(square, in);
    auto first = partly.next_outcome();
    REQUIRE(first.has_value());
    CHECK(first->value() == 0);
  }
  CHECK(pool.map(square, std::vector{6, 7}) == std::vector<int>{36, 49});
  auto pids = pool.worker_pids();
  CHECK(pids.size() == 2);
}

TEST_CASE("dereferencing a failed imap item throws RemoteError and iteration continues") {
  procpool::Pool pool{two_workers()};
  const std::vector<int> in = iota_vector(40);
  auto results = pool.imap(
      [](int x) {
        if (x % 4 == 1) throw std::domain_error("item " + std::to_string(x) + " is bad");
        return x * 10;
      },
      in, with_chunk(3));
  std::size_t i = 0;
  std::size_t failures = 0;
  for (auto it = results.begin(); it != results.end(); ++it, ++i) {
    INFO("position " << i);
    if (i % 4 == 1) {
      try {
        (void)*it;
        FAIL("dereferencing a failed item did not throw");
      } catch (const procpool::RemoteError& e) {
        CHECK(e.item() == std::optional<std::size_t>(i));
        CHECK(e.type_name() == "std::domain_error");
        CHECK(e.remote_what() == "item " + std::to_string(i) + " is bad");
        ++failures;
      }
    } else {
      REQUIRE(*it == static_cast<int>(i) * 10);
    }
  }
  CHECK(i == in.size());
  CHECK(failures == 10);
}

TEST_CASE("next_outcome gives every imap outcome in order without throwing") {
  procpool::Pool pool{two_workers()};
  const std::vector<int> in = iota_vector(40);
  auto results = pool.imap(
      [](int x) {
        if (x % 5 == 2) throw std::runtime_error("no " + std::to_string(x));
        return x + 1;
      },
      in, with_chunk(4));
  std::vector<procpool::Outcome<int>> outcomes;
  REQUIRE_NOTHROW([&] {
    while (auto o = results.next_outcome()) outcomes.push_back(std::move(*o));
  }());
  REQUIRE(outcomes.size() == in.size());
  for (std::size_t i = 0; i < outcomes.size(); ++i) {
    INFO("item " << i);
    if (i % 5 == 2) {
      REQUIRE_FALSE(outcomes[i].has_value());
      REQUIRE_THROWS_AS(outcomes[i].value(), procpool::RemoteError);
    } else {
      REQUIRE(outcomes[i].has_value());
      REQUIRE(outcomes[i].value() == static_cast<int>(i) + 1);
    }
  }
  CHECK_FALSE(results.next_outcome().has_value());  // the end stays the end
}

TEST_CASE("imap_unordered failures arrive as outcomes naming their items") {
  procpool::Pool pool{two_workers()};
  auto results = pool.imap_unordered(
      [](int x) {
        if (x % 10 == 0) throw std::runtime_error("ten");
        return x;
      },
      iota_vector(100), with_chunk(3));
  std::set<std::size_t> failed;
  std::multiset<int> values;
  while (auto o = results.next_outcome()) {
    if (o->has_value()) {
      values.insert(o->value());
    } else {
      try {
        std::rethrow_exception(o->error());
      } catch (const procpool::RemoteError& e) {
        REQUIRE(e.item().has_value());
        failed.insert(*e.item());
      }
    }
  }
  CHECK(failed == std::set<std::size_t>{0, 10, 20, 30, 40, 50, 60, 70, 80, 90});
  CHECK(values.size() == 90);
  for (int v : values) CHECK(v % 10 != 0);
}
