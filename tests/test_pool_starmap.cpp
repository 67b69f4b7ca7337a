// procpool::Pool::starmap, try_starmap and istarmap: each item a tuple, pair or array of the
// callable's arguments (Python's Pool.starmap), results in input order, failures as in map.
#include <algorithm>
#include <array>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <list>
#include <optional>
#include <procpool/pool.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "support.hpp"

using namespace std::chrono_literals;
using procpool_test::two_workers;
using procpool_test::with_chunk;

namespace {

int add(int a, int b) { return a + b; }

std::string repeat(const std::string& s, int times, char separator) {
  std::string out;
  for (int i = 0; i < times; ++i) {
    if (i > 0) out += separator;
    out += s;
  }
  return out;
}

/// (i, i + 1) for i in 0..n-1.
std::vector<std::pair<int, int>> pairs(int n) {
  std::vector<std::pair<int, int>> v;
  for (int i = 0; i < n; ++i) v.emplace_back(i, i + 1);
  return v;
}

}  // namespace

TEST_CASE("starmap calls the callable with the two elements of each pair, in input order") {
  procpool::Pool pool{two_workers()};
  const auto out = pool.starmap(add, pairs(1000));
  STATIC_REQUIRE(std::is_same_v<decltype(out), const std::vector<int>>);
  REQUIRE(out.size() == 1000);
  for (std::size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == static_cast<int>(2 * i + 1));
}

TEST_CASE("starmap spreads tuples of several argument types into the callable's parameters") {
  procpool::Pool pool{two_workers()};
  const std::vector<std::tuple<std::string, int, char>> in{{"ab", 3, '-'}, {"x", 1, '+'}, {"", 2, ','}, {"q", 0, ' '}};
  CHECK(pool.starmap(repeat, in) == std::vector<std::string>{"ab-ab-ab", "x", ",", ""});

  const std::vector<std::tuple<double, std::vector<int>, std::optional<long>>> mixed{
      {0.5, {1, 2, 3}, 10L}, {2.0, {}, std::nullopt}, {-1.0, {4}, 0L}};
  const auto weighted = pool.starmap(
      [](double w, const std::vector<int>& xs, std::optional<long> extra) {
        double sum = static_cast<double>(extra.value_or(100));
        for (int x : xs) sum += w * x;
        return sum;
      },
      mixed);
  CHECK(weighted == std::vector<double>{13.0, 100.0, -4.0});
}

TEST_CASE("starmap accepts a callable of no arguments for empty tuples and of one for one-element tuples") {
  procpool::Pool pool{two_workers()};
  const std::vector<std::tuple<>> empties(5);
  CHECK(pool.starmap([] { return 7; }, empties) == std::vector<int>(5, 7));
  const std::vector<std::tuple<std::string>> ones{{"a"}, {"bcd"}};
  CHECK(pool.starmap([](const std::string& s) { return s.size(); }, ones) == std::vector<std::size_t>{1, 3});
}

TEST_CASE("starmap spreads std::array items as arguments") {
  procpool::Pool pool{two_workers()};
  const std::vector<std::array<int, 3>> in{{1, 2, 3}, {4, 5, 6}};
  CHECK(pool.starmap([](int a, int b, int c) { return a * b * c; }, in) == std::vector<int>{6, 120});
}

TEST_CASE("starmap accepts a braced list of typed pairs and tuples") {
  procpool::Pool pool{two_workers()};
  CHECK(pool.starmap(add, {std::pair{1, 2}, std::pair{30, 40}}) == std::vector<int>{3, 70});
  CHECK(pool.starmap(repeat, {std::tuple{std::string("ho"), 2, ' '}}) == std::vector<std::string>{"ho ho"});
  const auto outcomes = pool.try_starmap(add, {std::pair{5, 6}});
  REQUIRE(outcomes.size() == 1);
  CHECK(outcomes[0].value() == 11);
}

TEST_CASE("starmap accepts a non-contiguous range of tuples") {
  procpool::Pool pool{two_workers()};
  const std::list<std::pair<int, int>> in{{1, 1}, {2, 3}, {5, 8}};
  CHECK(pool.starmap(add, in) == std::vector<int>{2, 5, 13});
}

TEST_CASE("starmap with MapOptions chunk_size keeps input order and reports progress to N of N") {
  procpool::Pool pool{two_workers()};
  for (std::size_t chunk : {std::size_t{1}, std::size_t{7}, std::size_t{5000}}) {
    INFO("chunk_size " << chunk);
    CHECK(pool.starmap(add, pairs(2000), with_chunk(chunk)) == [] {
      std::vector<int> v;
      for (int i = 0; i < 2000; ++i) v.push_back(2 * i + 1);
      return v;
    }());
  }
  std::size_t last_done = 0;
  std::size_t last_total = 0;
  procpool::MapOptions options;
  options.chunk_size = 3;
  options.on_progress = [&](std::size_t done, std::size_t total) {
    last_done = done;
    last_total = total;
  };
  (void)pool.starmap(add, pairs(100), std::move(options));
  CHECK(last_done == 100);
  CHECK(last_total == 100);
}

TEST_CASE("starmap of an empty input returns an empty output") {
  procpool::Pool pool{two_workers()};
  CHECK(pool.starmap(add, std::vector<std::pair<int, int>>{}).empty());
}

TEST_CASE("starmap throws the lowest-numbered failure as a RemoteError with its item") {
  procpool::Pool pool{two_workers()};
  const auto divide = [](int a, int b) {
    if (b == 0) throw std::domain_error("division of " + std::to_string(a) + " by zero");
    return a / b;
  };
  std::vector<std::pair<int, int>> in;
  for (int i = 0; i < 50; ++i) in.emplace_back(i, (i == 12 || i == 30) ? 0 : 1);
  try {
    (void)pool.starmap(divide, in, with_chunk(4));
    FAIL("starmap did not throw");
  } catch (const procpool::RemoteError& e) {
    CHECK(e.item() == std::optional<std::size_t>(12));
    CHECK(e.type_name() == "std::domain_error");
    CHECK(e.remote_what() == "division of 12 by zero");
  }
  // The pool stays usable.
  CHECK(pool.starmap(divide, {std::pair{9, 3}}) == std::vector<int>{3});
}

TEST_CASE("starmap reports an item whose worker exits as a ProcessError with its item") {
  procpool::Pool pool{two_workers()};
  const auto exit_on = [](int x, int bad) {
    if (x == bad) std::_Exit(3);
    return x;
  };
  std::vector<std::pair<int, int>> in;
  for (int i = 0; i < 20; ++i) in.emplace_back(i, 6);
  try {
    (void)pool.starmap(exit_on, in, with_chunk(2));
    FAIL("starmap did not throw");
  } catch (const procpool::ProcessError& e) {
    CHECK(e.item() == std::optional<std::size_t>(6));
    CHECK(e.exitcode() == 3);
  }
}

TEST_CASE("try_starmap returns each item's value or error in input order") {
  procpool::Pool pool{two_workers()};
  const auto outcomes = pool.try_starmap(
      [](int a, int b) {
        if ((a + b) % 3 == 0) throw std::runtime_error("multiple of three");
        return a * b;
      },
      pairs(30), with_chunk(4));
  REQUIRE(outcomes.size() == 30);
  for (std::size_t i = 0; i < outcomes.size(); ++i) {
    INFO("item " << i);
    const int a = static_cast<int>(i);
    if ((2 * a + 1) % 3 == 0) {
      REQUIRE_FALSE(outcomes[i].has_value());
      try {
        std::rethrow_exception(outcomes[i].error());
      } catch (const procpool::RemoteError& e) {
        CHECK(e.item() == std::optional<std::size_t>(i));
        CHECK(e.remote_what() == "multiple of three");
      }
    } else {
      REQUIRE(outcomes[i].has_value());
      CHECK(outcomes[i].value() == a * (a + 1));
    }
  }
}

TEST_CASE("istarmap yields results in input order while later items are still running") {
  procpool::Pool pool{two_workers()};
  // Some items are slow, so chunks finish out of order; istarmap must still yield in order.
  auto results = pool.istarmap(
      [](int a, int b) {
        if (a % 41 == 0) std::this_thread::sleep_for(2ms);
        return a * 10 + b;
      },
      pairs(500), with_chunk(3));
  STATIC_REQUIRE(std::is_same_v<decltype(results), procpool::ImapResults<int>>);
  std::vector<int> out;
  for (int r : results) out.push_back(r);
  REQUIRE(out.size() == 500);
  for (std::size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == static_cast<int>(i) * 11 + 1);
}

TEST_CASE("istarmap over a braced list keeps the items alive for the iteration") {
  procpool::Pool pool{two_workers()};
  std::vector<std::string> out;
  for (const std::string& s :
       pool.istarmap(repeat, {std::tuple{std::string("a"), 3, '.'}, std::tuple{std::string("bc"), 2, '/'}}))
    out.push_back(s);
  CHECK(out == std::vector<std::string>{"a.a.a", "bc/bc"});
}

TEST_CASE("istarmap yields a failure in its place through next_outcome") {
  procpool::Pool pool{two_workers()};
  auto results = pool.istarmap(
      [](int a, int b) {
        if (a == 3) throw std::invalid_argument("three");
        return a + b;
      },
      pairs(6), with_chunk(1));
  std::vector<std::optional<int>> seen;
  while (auto o = results.next_outcome()) {
    if (o->has_value()) {
      seen.emplace_back(o->value());
    } else {
      try {
        std::rethrow_exception(o->error());
      } catch (const procpool::RemoteError& e) {
        CHECK(e.item() == std::optional<std::size_t>(3));
      }
      seen.emplace_back(std::nullopt);
    }
  }
  CHECK(seen == std::vector<std::optional<int>>{1, 3, 5, std::nullopt, 9, 11});
}
