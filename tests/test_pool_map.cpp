// procpool::Pool::map and try_map: results in input order, chunk sizes, many types, failures,
// progress, and how many workers a pool has.
#include <sched.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <list>
#include <map>
#include <optional>
#include <procpool/pool.hpp>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "support.hpp"

using namespace std::chrono_literals;
using procpool_test::iota_vector;
using procpool_test::two_workers;
using procpool_test::with_chunk;

namespace procpool_test_types {

/// A user-defined type with a serialize member, as input and as result.
struct Reading {
  int sensor = 0;
  std::string unit;
  std::vector<double> samples;

  template <class Archive>
  void serialize(Archive& ar) {
    ar(sensor, unit, samples);
  }
  bool operator==(const Reading&) const = default;
};

}  // namespace procpool_test_types

namespace {

using procpool_test_types::Reading;

int square(int x) { return x * x; }

std::int64_t odd_of(int x) { return std::int64_t{x} * 2 + 1; }

/// Maps odd_of over 0..n-1 and checks every result sits at its input's index.
void check_in_order(procpool::Pool& pool, int n, procpool::MapOptions options) {
  const std::vector<int> inputs = iota_vector(n);
  const std::vector<std::int64_t> out = pool.map(odd_of, inputs, std::move(options));
  REQUIRE(out.size() == inputs.size());
  std::size_t wrong = 0;
  std::size_t first_wrong = out.size();
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (out[i] != static_cast<std::int64_t>(i) * 2 + 1) {
      if (wrong == 0) first_wrong = i;
      ++wrong;
    }
  }
  INFO("first misplaced result at index " << first_wrong);
  CHECK(wrong == 0);
}

}  // namespace

TEST_CASE("map of the README example returns the squares in order") {
  // The spelling of the options, designated initializers without `initializer`: this must
  // build warning-free under -Wall -Wextra -Werror (PROCPOOL_WARNINGS_AS_ERRORS).
  procpool::Pool pool{procpool::PoolOptions{.workers = 2,
                                            .pin_cpus = true,
                                            .chunk_size = 0,
                                            .max_tasks_per_worker = 0,
                                            .task_timeout = std::chrono::milliseconds{0}}};
  const std::vector<int> sq = pool.map(square, std::vector{1, 2, 3, 4, 5});
  CHECK(sq == std::vector<int>{1, 4, 9, 16, 25});
}

TEST_CASE("map keeps input order for 100k items with automatic chunk sizes") {
  procpool::Pool pool{two_workers()};
  check_in_order(pool, 100'000, {});
}

TEST_CASE("map keeps input order for 20k items with one item per chunk") {
  // 20k rather than 100k: one item per message costs a cross-core round trip per couple of items
  // (about 50 us here), and the test must stay under 2 s on the shared 2-core machine.
  procpool::Pool pool{two_workers()};
  check_in_order(pool, 20'000, with_chunk(1));
}

TEST_CASE("map keeps input order for 100k items with chunks of 7 and of 1000") {
  procpool::Pool pool{two_workers()};
  check_in_order(pool, 100'000, with_chunk(7));
  check_in_order(pool, 100'000, with_chunk(1000));
}

TEST_CASE("map keeps input order when the chunk size is larger than the input") {
  procpool::Pool pool{two_workers()};
  check_in_order(pool, 100'000, with_chunk(250'000));
}

TEST_CASE("map keeps input order with a chunk size set in PoolOptions") {
  procpool::PoolOptions o = two_workers();
  o.chunk_size = 7;
  procpool::Pool pool{o};
  check_in_order(pool, 100'000, {});
  // The per-call setting overrides the pool's.
  check_in_order(pool, 10'000, with_chunk(1000));
}

TEST_CASE("map computes every item when a chunk is cut short by the message byte limit") {
  // 1.5M 8-byte items asked for in one chunk: 12 MiB, more than one message may carry (8 MiB), so
  // the chunk is cut short. The rest of the input must still be sent, not treated as the end.
  procpool::Pool pool{two_workers()};
  const std::vector<std::int64_t> in(1'500'000, 41);
  const auto out = pool.map([](std::int64_t x) { return x + 1; }, in, with_chunk(2'000'000));
  REQUIRE(out.size() == in.size());
  const auto never_computed = static_cast<std::size_t>(std::count(out.begin(), out.end(), std::int64_t{0}));
  const auto right = static_cast<std::size_t>(std::count(out.begin(), out.end(), std::int64_t{42}));
  INFO(never_computed << " results were left default-constructed");
  CHECK(right == in.size());
}

TEST_CASE("map of an empty input returns an empty output") {
  procpool::Pool pool{two_workers()};
  const std::vector<int> none;
  const auto out = pool.map(square, none);
  STATIC_REQUIRE(std::is_same_v<std::remove_cvref_t<decltype(out)>, std::vector<int>>);
  CHECK(out.empty());
  const auto outcomes = pool.try_map(square, none);
  CHECK(outcomes.empty());
  // The pool still works afterwards.
  CHECK(pool.map(square, std::vector{3}) == std::vector<int>{9});
}

TEST_CASE("one pool runs 50 maps in sequence with the same workers") {
  procpool::Pool pool{two_workers()};
  auto before = pool.worker_pids();
  std::sort(before.begin(), before.end());
  for (int round = 0; round < 50; ++round) {
    std::vector<int> inputs(static_cast<std::size_t>(100 + round));
    for (std::size_t i = 0; i < inputs.size(); ++i) inputs[i] = static_cast<int>(i) + round * 1000;
    const auto out = pool.map([](int x) { return x - 7; }, inputs);
    REQUIRE(out.size() == inputs.size());
    for (std::size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == inputs[i] - 7);
  }
  auto after = pool.worker_pids();
  std::sort(after.begin(), after.end());
  CHECK(after == before);
}

TEST_CASE("map carries strings in and out") {
  procpool::Pool pool{two_workers()};
  const std::vector<std::string> in{"", "a", "hello", std::string(1000, 'z'), std::string("nul\0inside", 10)};
  const auto out = pool.map([](const std::string& s) { return s + "!" + std::to_string(s.size()); }, in);
  STATIC_REQUIRE(std::is_same_v<std::remove_cvref_t<decltype(out)>, std::vector<std::string>>);
  REQUIRE(out.size() == in.size());
  for (std::size_t i = 0; i < in.size(); ++i) CHECK(out[i] == in[i] + "!" + std::to_string(in[i].size()));
}

TEST_CASE("map carries vectors of doubles in and numbers out") {
  procpool::Pool pool{two_workers()};
  const std::vector<std::vector<double>> in{{}, {1.5}, {1.0, 2.0, 3.25}, std::vector<double>(500, 0.5)};
  const auto sums = pool.map(
      [](const std::vector<double>& v) {
        double s = 0;
        for (double d : v) s += d;
        return s;
      },
      in);
  CHECK(sums == std::vector<double>{0.0, 1.5, 6.25, 250.0});
  const auto doubled = pool.map(
      [](const std::vector<double>& v) {
        std::vector<double> r(v);
        for (double& d : r) d *= 2;
        return r;
      },
      in);
  REQUIRE(doubled.size() == in.size());
  CHECK(doubled[2] == std::vector<double>{2.0, 4.0, 6.5});
  CHECK(doubled[3] == std::vector<double>(500, 1.0));
  CHECK(doubled[0].empty());
}

TEST_CASE("map carries std::map values in and out") {
  procpool::Pool pool{two_workers()};
  const std::vector<std::map<std::string, int>> in{{}, {{"one", 1}}, {{"a", 10}, {"b", 20}, {"c", 30}}};
  const auto out = pool.map(
      [](const std::map<std::string, int>& m) {
        std::map<int, std::string> inverse;
        for (const auto& [k, v] : m) inverse.emplace(v, k);
        return inverse;
      },
      in);
  REQUIRE(out.size() == 3);
  CHECK(out[0].empty());
  CHECK(out[1] == std::map<int, std::string>{{1, "one"}});
  CHECK(out[2] == std::map<int, std::string>{{10, "a"}, {20, "b"}, {30, "c"}});
}

TEST_CASE("map carries a struct with a serialize member in and out") {
  procpool::Pool pool{two_workers()};
  const std::vector<Reading> in{{1, "C", {20.5, 21.0}}, {2, "K", {}}, {3, "F", {98.6}}};
  const auto out = pool.map(
      [](const Reading& r) {
        Reading t = r;
        t.sensor += 100;
        t.unit = "[" + r.unit + "]";
        t.samples.push_back(static_cast<double>(r.samples.size()));
        return t;
      },
      in);
  REQUIRE(out.size() == 3);
  CHECK(out[0] == Reading{101, "[C]", {20.5, 21.0, 2.0}});
  CHECK(out[1] == Reading{102, "[K]", {0.0}});
  CHECK(out[2] == Reading{103, "[F]", {98.6, 1.0}});
}

TEST_CASE("map carries pairs in and tuples out") {
  procpool::Pool pool{two_workers()};
  const std::vector<std::pair<int, std::string>> in{{1, "x"}, {-2, ""}, {30, "long text"}};
  const auto out = pool.map(
      [](const std::pair<int, std::string>& p) { return std::make_tuple(p.second, p.first * 10, p.first > 0); }, in);
  STATIC_REQUIRE(std::is_same_v<std::remove_cvref_t<decltype(out)>, std::vector<std::tuple<std::string, int, bool>>>);
  REQUIRE(out.size() == 3);
  CHECK(out[0] == std::make_tuple(std::string("x"), 10, true));
  CHECK(out[1] == std::make_tuple(std::string(""), -20, false));
  CHECK(out[2] == std::make_tuple(std::string("long text"), 300, true));
}

TEST_CASE("map with bool results returns a std::vector<bool> with every value right") {
  procpool::Pool pool{two_workers()};
  const std::vector<int> in = iota_vector(10'000);
  const auto out = pool.map([](int x) { return x % 3 == 0; }, in);
  STATIC_REQUIRE(std::is_same_v<std::remove_cvref_t<decltype(out)>, std::vector<bool>>);
  REQUIRE(out.size() == in.size());
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < out.size(); ++i)
    if (out[i] != (i % 3 == 0)) ++wrong;
  CHECK(wrong == 0);
}

TEST_CASE("map carries optionals in and out including empty ones") {
  procpool::Pool pool{two_workers()};
  const std::vector<std::optional<int>> in{std::nullopt, 4, std::nullopt, -1};
  const auto out = pool.map(
      [](const std::optional<int>& v) -> std::optional<std::string> {
        if (!v) return std::nullopt;
        return std::to_string(*v * 2);
      },
      in);
  REQUIRE(out.size() == 4);
  CHECK_FALSE(out[0].has_value());
  CHECK(out[1] == std::optional<std::string>("8"));
  CHECK_FALSE(out[2].has_value());
  CHECK(out[3] == std::optional<std::string>("-2"));
}

TEST_CASE("map accepts a braced list of inputs") {
  procpool::Pool pool{two_workers()};
  const auto out = pool.map([](int x) { return x + 100; }, {1, 2, 3});
  CHECK(out == std::vector<int>{101, 102, 103});
}

TEST_CASE("map accepts non-contiguous inputs such as std::list and std::deque and std::set") {
  procpool::Pool pool{two_workers()};
  std::list<std::string> words;
  for (int i = 0; i < 500; ++i) words.push_back(std::string(i % 7 + 1, 'w') += std::to_string(i));
  const auto lengths = pool.map([](const std::string& s) { return static_cast<int>(s.size()); }, words);
  REQUIRE(lengths.size() == words.size());
  {
    auto it = words.begin();
    for (std::size_t i = 0; i < lengths.size(); ++i, ++it) REQUIRE(lengths[i] == static_cast<int>(it->size()));
  }

  std::deque<int> dq;
  for (int i = 0; i < 5000; ++i) dq.push_front(i);  // 4999, 4998, ..., 0
  const auto from_deque = pool.map(square, dq);
  REQUIRE(from_deque.size() == dq.size());
  for (std::size_t i = 0; i < dq.size(); ++i) REQUIRE(from_deque[i] == dq[i] * dq[i]);

  const std::set<int> s{42, -5, 7, 1000, 0};  // iterates as -5, 0, 7, 42, 1000
  const auto from_set = pool.map([](int x) { return x * 2; }, s);
  CHECK(from_set == std::vector<int>{-10, 0, 14, 84, 2000});
}

TEST_CASE("map moves 32 items of 1 MiB in and 1 MiB out without deadlock") {
  // 32 MiB each way through 1 MiB pipes, in chunks of 8 MiB (16 items asked for, capped by the
  // chunk byte limit): both workers have whole chunks outstanding in both directions at once, the
  // situation where blocking writes on both sides would deadlock. (32 rather than 64 items keeps
  // the test under 2 s in sanitizer builds.)
  procpool::Pool pool{two_workers()};
  constexpr std::size_t kMiB = std::size_t{1} << 20;
  std::vector<std::string> in;
  in.reserve(32);
  for (std::size_t i = 0; i < 32; ++i) {
    std::string s(kMiB, static_cast<char>('a' + i % 26));
    s.replace(0, 8, "item" + std::to_string(1000 + i));  // 8 characters naming the item
    s.back() = static_cast<char>('A' + i % 26);
    in.push_back(std::move(s));
  }
  // A fresh 1 MiB result per item (copied, with its ends swapped, so it differs from the input).
  const auto swap_ends = [](const std::string& s) {
    std::string r = s;
    std::swap(r.front(), r.back());
    return r;
  };
  const auto out = pool.map(swap_ends, in, with_chunk(16));
  REQUIRE(out.size() == in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    INFO("item " << i);
    REQUIRE(out[i].size() == kMiB);
    REQUIRE(out[i].front() == static_cast<char>('A' + i % 26));
    REQUIRE(out[i].compare(1, 7, in[i], 1, 7) == 0);  // "tem10NN": the item's own name
    REQUIRE(out[i] == swap_ends(in[i]));
  }
}

TEST_CASE("map of a skewed workload with one slow item among 2000 fast ones returns every result right") {
  procpool::Pool pool{two_workers()};
  const std::vector<int> in = iota_vector(2000);
  const auto out = pool.map(
      [](int x) {
        if (x == 1234) std::this_thread::sleep_for(300ms);
        return x * 3;
      },
      in);
  REQUIRE(out.size() == in.size());
  for (std::size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == static_cast<int>(i) * 3);
}

TEST_CASE("try_map returns each item's value or error in input order without throwing") {
  procpool::Pool pool{two_workers()};
  const std::vector<int> in = iota_vector(300);
  const auto f = [](int x) {
    if (x % 7 == 3) throw std::invalid_argument("bad item " + std::to_string(x));
    return x * 10;
  };
  std::vector<procpool::Outcome<int>> outcomes;
  REQUIRE_NOTHROW(outcomes = pool.try_map(f, in, with_chunk(5)));
  REQUIRE(outcomes.size() == in.size());
  for (std::size_t i = 0; i < outcomes.size(); ++i) {
    INFO("item " << i);
    const auto& o = outcomes[i];
    if (i % 7 == 3) {
      REQUIRE_FALSE(o.has_value());
      REQUIRE_FALSE(static_cast<bool>(o));
      REQUIRE(o.error() != nullptr);
      try {
        (void)o.value();
        FAIL("value() of a failed item did not throw");
      } catch (const procpool::RemoteError& e) {
        CHECK(e.item() == std::optional<std::size_t>(i));
        CHECK(e.type_name() == "std::invalid_argument");
        CHECK(e.remote_what() == "bad item " + std::to_string(i));
      }
    } else {
      REQUIRE(o.has_value());
      REQUIRE(o.error() == nullptr);
      REQUIRE(o.value() == static_cast<int>(i) * 10);
    }
  }
}

TEST_CASE("map throws the lowest-index failure as a RemoteError naming the item") {
  procpool::Pool pool{two_workers()};
  const std::vector<int> in = iota_vector(100);
  // Item 5 fails last in time (it sleeps first), items 17 and 60 fail earlier: the one reported
  // must still be item 5, and only after all items ran.
  const auto f = [](int x) {
    if (x == 5) {
      std::this_thread::sleep_for(100ms);
      throw std::out_of_range("five is out");
    }
    if (x == 17 || x == 60) throw std::runtime_error("other " + std::to_string(x));
    return x;
  };
  try {
    (void)pool.map(f, in, with_chunk(1));
    FAIL("map did not throw");
  } catch (const procpool::RemoteError& e) {
    CHECK(e.item() == std::optional<std::size_t>(5));
    CHECK(e.type_name() == "std::out_of_range");
    CHECK(e.remote_what() == "five is out");
    CHECK_THAT(std::string(e.what()), Catch::Matchers::Contains("item 5"));
    CHECK_THAT(std::string(e.what()), Catch::Matchers::Contains("five is out"));
  }
  // The pool stays usable.
  CHECK(pool.map(square, std::vector{2, 3}) == std::vector<int>{4, 9});
}

TEST_CASE("on_progress is called with increasing counts of done items and ends at N of N") {
  procpool::Pool pool{two_workers()};
  constexpr std::size_t kN = 1000;
  std::vector<std::pair<std::size_t, std::size_t>> calls;
  procpool::MapOptions options;
  options.chunk_size = 10;
  options.on_progress = [&calls](std::size_t done, std::size_t total) { calls.emplace_back(done, total); };
  const auto out = pool.map(square, iota_vector(static_cast<int>(kN)), std::move(options));
  REQUIRE(out.size() == kN);
  REQUIRE(calls.size() > 1);  // 100 chunks: progress is reported along the way, not only at the end
  for (std::size_t k = 0; k < calls.size(); ++k) {
    INFO("call " << k << ": (" << calls[k].first << ", " << calls[k].second << ")");
    CHECK(calls[k].second == kN);
    CHECK(calls[k].first <= kN);
    if (k > 0) CHECK(calls[k].first >= calls[k - 1].first);
  }
  CHECK(calls.back() == std::make_pair(kN, kN));
}

TEST_CASE("on_progress of try_map also ends at N of N when items fail") {
  procpool::Pool pool{two_workers()};
  constexpr std::size_t kN = 200;
  std::vector<std::pair<std::size_t, std::size_t>> calls;
  procpool::MapOptions options;
  options.chunk_size = 3;
  options.on_progress = [&calls](std::size_t done, std::size_t total) { calls.emplace_back(done, total); };
  const auto outcomes = pool.try_map(
      [](int x) {
        if (x % 2 == 0) throw std::runtime_error("even");
        return x;
      },
      iota_vector(static_cast<int>(kN)), std::move(options));
  REQUIRE(outcomes.size() == kN);
  REQUIRE_FALSE(calls.empty());
  for (std::size_t k = 1; k < calls.size(); ++k) CHECK(calls[k].first >= calls[k - 1].first);
  CHECK(calls.back() == std::make_pair(kN, kN));
}

TEST_CASE("pool.size() is the number of workers asked for") {
  {
    procpool::Pool pool{3};
    CHECK(pool.size() == 3);
    CHECK(pool.worker_pids().size() == 3);
  }
  {
    procpool::Pool pool{two_workers()};
    CHECK(pool.size() == 2);
    CHECK(pool.worker_pids().size() == 2);
  }
  {
    procpool::PoolOptions o;
    o.workers = 1;
    o.pin_cpus = false;
    procpool::Pool pool{o};
    CHECK(pool.size() == 1);
    CHECK(pool.map(square, std::vector{7}) == std::vector<int>{49});
  }
}

TEST_CASE("Pool() has one worker per CPU in the caller's affinity mask") {
  cpu_set_t set;
  CPU_ZERO(&set);
  REQUIRE(::sched_getaffinity(0, sizeof set, &set) == 0);
  const auto cpus = static_cast<std::size_t>(CPU_COUNT(&set));
  procpool::Pool pool;
  CHECK(pool.size() == cpus);
  CHECK(pool.worker_pids().size() == cpus);
  CHECK(pool.map(square, std::vector{1, 2, 3}) == std::vector<int>{1, 4, 9});
}

TEST_CASE("Pool() in a process narrowed to one CPU has exactly one worker") {
  // In a helper process, so that narrowing the affinity mask does not affect other tests.
  const int status = procpool_test::run_isolated([] {
    if (const int failed = procpool_test::narrow_affinity_to_one_cpu()) return failed;
    procpool::Pool pool;
    if (pool.size() != 1) return procpool_test::fail(4, "size() is " + std::to_string(pool.size()));
    if (pool.map(square, std::vector{5}) != std::vector<int>{25}) return procpool_test::fail(5, "wrong result");
    return 0;
  });
  INFO(procpool_test::describe_status(status));
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}
