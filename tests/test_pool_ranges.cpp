// The inputs Pool's calls accept: views (std::views::filter, a take of an unbounded
// std::views::iota), ranges whose sentinel is not their iterator, braced lists, single-pass
// inputs for imap (std::views::istream); and procpool::cpu_count().
//
// map on a single-pass range must not compile: tests/compile_fail/map_single_pass_range.cpp.
#include <sched.h>

#include <catch2/catch.hpp>
#include <cstddef>
#include <iterator>
#include <procpool/pool.hpp>
#include <ranges>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "support.hpp"

using procpool_test::iota_vector;
using procpool_test::two_workers;
using procpool_test::with_chunk;

namespace {

int triple(int x) { return 3 * x; }

/// The integers [first, last) through a counting iterator and a sentinel of another type: a
/// multi-pass range that is neither common nor sized.
class Countdown {
 public:
  class sentinel;
  class iterator {
   public:
    using iterator_concept = std::forward_iterator_tag;
    using iterator_category = std::forward_iterator_tag;
    using value_type = int;
    using difference_type = std::ptrdiff_t;

    iterator() = default;
    explicit iterator(int v) : v_(v) {}
    int operator*() const { return v_; }
    iterator& operator++() {
      --v_;
      return *this;
    }
    iterator operator++(int) {
      iterator old = *this;
      --v_;
      return old;
    }
    bool operator==(const iterator&) const = default;

   private:
    int v_ = 0;
  };
  class sentinel {
   public:
    sentinel() = default;
    explicit sentinel(int stop) : stop_(stop) {}
    friend bool operator==(const iterator& it, const sentinel& s) { return *it == s.stop_; }

   private:
    int stop_ = 0;
  };

  /// from, from - 1, ..., down to but without `to`.
  Countdown(int from, int to) : from_(from), to_(to) {}
  [[nodiscard]] iterator begin() const { return iterator(from_); }
  [[nodiscard]] sentinel end() const { return sentinel(to_); }

 private:
  int from_;
  int to_;
};

static_assert(std::ranges::forward_range<const Countdown&>);
static_assert(!std::ranges::common_range<Countdown>);
static_assert(!std::ranges::sized_range<Countdown>);

}  // namespace

TEST_CASE("map try_map and starmap accept braced lists") {
  procpool::Pool pool{two_workers()};
  CHECK(pool.map(triple, {1, 2, 3}) == std::vector<int>{3, 6, 9});
  const auto outcomes = pool.try_map(triple, {4, 5});
  REQUIRE(outcomes.size() == 2);
  CHECK(outcomes[0].value() == 12);
  CHECK(outcomes[1].value() == 15);
  CHECK(pool.starmap([](int a, long b) { return a * b; }, {std::pair{2, 3L}, std::pair{4, 5L}}) ==
        std::vector<long>{6, 20});
  std::vector<int> out;
  pool.map_into(triple, {7, 8}, out);
  CHECK(out == std::vector<int>{21, 24});
}

TEST_CASE("imap and imap_unordered accept a braced list and keep it alive for the iteration") {
  procpool::Pool pool{two_workers()};
  std::vector<int> ordered;
  for (int r : pool.imap(triple, {1, 2, 3, 4})) ordered.push_back(r);
  CHECK(ordered == std::vector<int>{3, 6, 9, 12});
  int sum = 0;
  for (int r : pool.imap_unordered(triple, {10, 20})) sum += r;
  CHECK(sum == 90);
}

TEST_CASE("map try_map imap and starmap accept a range whose sentinel type differs from its iterator") {
  procpool::Pool pool{two_workers()};
  const Countdown down(100, 0);  // 100, 99, ..., 1
  const auto out = pool.map(triple, down, with_chunk(7));
  REQUIRE(out.size() == 100);
  for (std::size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == 3 * (100 - static_cast<int>(i)));

  const auto outcomes = pool.try_map(triple, Countdown(3, 0));
  REQUIRE(outcomes.size() == 3);
  CHECK(outcomes[2].value() == 3);

  std::vector<int> lazy;
  for (int r : pool.imap(triple, Countdown(5, 2))) lazy.push_back(r);
  CHECK(lazy == std::vector<int>{15, 12, 9});

  std::vector<int> into;
  pool.map_into(triple, Countdown(2, 0), into);
  CHECK(into == std::vector<int>{6, 3});
}

TEST_CASE("cpu_count is the number of CPUs in the affinity mask and Pool() starts that many workers") {
  cpu_set_t set;
  CPU_ZERO(&set);
  REQUIRE(::sched_getaffinity(0, sizeof set, &set) == 0);
  const auto cpus = static_cast<std::size_t>(CPU_COUNT(&set));
  CHECK(procpool::cpu_count() == cpus);
  STATIC_REQUIRE(std::is_same_v<decltype(procpool::cpu_count()), std::size_t>);
  procpool::Pool pool;
  CHECK(pool.size() == procpool::cpu_count());
}

TEST_CASE("cpu_count follows an affinity mask narrowed to one CPU") {
  // In a helper process, so that narrowing the affinity mask does not affect other tests.
  const int status = procpool_test::run_isolated([] {
    if (const int failed = procpool_test::narrow_affinity_to_one_cpu()) return failed;
    if (procpool::cpu_count() != 1) return procpool_test::fail(4, "cpu_count() is not 1");
    procpool::Pool pool;
    if (pool.size() != 1) return procpool_test::fail(5, "Pool() does not have one worker");
    return 0;
  });
  CHECK(status == 0);
}

// clang before 16 cannot compile libstdc++ 12's views (std::views::filter, iota, take, istream):
// it rejects their constraints inside <ranges> itself. The ThreadSanitizer build uses clang 14,
// so the tests that use std::views are compiled by g++ (and newer clangs) only; the library
// accepts views generically and needs none itself.
#if !(defined(__clang__) && __clang_major__ < 16)

TEST_CASE("map and try_map accept a std::views::filter of a vector") {
  procpool::Pool pool{two_workers()};
  const std::vector<int> in = iota_vector(1000);
  auto evens = in | std::views::filter([](int x) { return x % 2 == 0; });
  STATIC_REQUIRE(!std::ranges::sized_range<decltype(evens)>);
  const auto out = pool.map(triple, evens, with_chunk(9));
  REQUIRE(out.size() == 500);
  for (std::size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == 6 * static_cast<int>(i));

  const auto outcomes = pool.try_map(triple, in | std::views::filter([](int x) { return x % 250 == 0; }));
  REQUIRE(outcomes.size() == 4);
  for (std::size_t i = 0; i < outcomes.size(); ++i) CHECK(outcomes[i].value() == 750 * static_cast<int>(i));
}

TEST_CASE("map and imap accept std::views::iota(0) | std::views::take(n), a non-common range") {
  procpool::Pool pool{two_workers()};
  auto first = std::views::iota(0) | std::views::take(2000);
  STATIC_REQUIRE(!std::ranges::common_range<decltype(first)>);
  const auto out = pool.map(triple, first);
  REQUIRE(out.size() == 2000);
  for (std::size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == 3 * static_cast<int>(i));

  // An rvalue view given to imap is kept alive by the results.
  std::size_t n = 0;
  std::size_t misplaced = 0;
  for (int r : pool.imap(triple, std::views::iota(0) | std::views::take(3000), with_chunk(11))) {
    if (r != 3 * static_cast<int>(n)) ++misplaced;
    ++n;
  }
  CHECK(n == 3000);
  CHECK(misplaced == 0);
}

TEST_CASE("imap over an endless std::views::iota stops when the caller stops iterating") {
  procpool::Pool pool{two_workers()};
  int seen = 0;
  for (int r : pool.imap(triple, std::views::iota(0))) {
    REQUIRE(r == 3 * seen);
    if (++seen == 100) break;
  }
  CHECK(seen == 100);
}

TEST_CASE("starmap accepts a std::views::filter of pairs") {
  procpool::Pool pool{two_workers()};
  std::vector<std::pair<int, int>> in;
  for (int i = 0; i < 100; ++i) in.emplace_back(i, 2 * i);
  auto big = in | std::views::filter([](const std::pair<int, int>& p) { return p.first >= 95; });
  CHECK(pool.starmap([](int a, int b) { return a + b; }, big) == std::vector<int>{285, 288, 291, 294, 297});
}

TEST_CASE("imap and imap_unordered read a std::views::istream of a std::istringstream") {
  procpool::Pool pool{two_workers()};
  std::istringstream numbers("1 2 3 4 5 6 7 8 9 10");
  std::vector<int> out;
  for (int r : pool.imap(triple, std::views::istream<int>(numbers), with_chunk(3))) out.push_back(r);
  CHECK(out == std::vector<int>{3, 6, 9, 12, 15, 18, 21, 24, 27, 30});

  std::istringstream words("alpha beta gamma");
  auto view = std::views::istream<std::string>(words);  // an lvalue view: it outlives the iteration
  std::size_t letters = 0;
  std::size_t count = 0;
  for (std::size_t r : pool.imap_unordered([](const std::string& w) { return w.size(); }, view)) {
    letters += r;
    ++count;
  }
  CHECK(count == 3);
  CHECK(letters == 14);
}

TEST_CASE("istarmap reads a single-pass range") {
  procpool::Pool pool{two_workers()};
  std::istringstream numbers("5 6 7");
  auto pairs = std::views::istream<int>(numbers) | std::views::transform([](int x) { return std::pair{x, x}; });
  std::vector<int> out;
  for (int r : pool.istarmap([](int a, int b) { return a * b; }, pairs)) out.push_back(r);
  CHECK(out == std::vector<int>{25, 36, 49});
}

#endif
