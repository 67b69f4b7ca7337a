// The kinds of callables a procpool::Pool accepts, each through map and through submit: function
// pointers, lambdas with and without captures, functors (trivially copyable or encodable), a
// lambda carrying a pointer into pre-pool data, and a mutable lambda.
#include <catch2/catch.hpp>
#include <cstddef>
#include <procpool/pool.hpp>
#include <string>
#include <type_traits>
#include <vector>

#include "support.hpp"

using procpool_test::iota_vector;
using procpool_test::two_workers;

namespace {

int triple(int x) { return 3 * x; }

/// A functor whose members are all trivially copyable: it travels as its bytes.
struct Affine {
  int a = 0;
  long b = 0;
  double unused_padding_check = 0.0;
  long operator()(int x) const { return a * long{x} + b; }
};
static_assert(std::is_trivially_copyable_v<Affine>);

/// A functor with an owning member: it travels through its serialize member.
struct Labeller {
  std::string prefix;
  std::vector<int> weights;

  template <class A>
  void serialize(A& a) {
    a(prefix, weights);
  }
  std::string operator()(int x) const {
    int w = 0;
    for (int v : weights) w += v;
    return prefix + std::to_string(x * w);
  }
};
static_assert(!std::is_trivially_copyable_v<Labeller>);

// Data that exists before any pool starts, reached through pointers that tasks carry.
int g_offset = 10;
const std::vector<std::string> g_names{"zero", "one", "two", "three"};

}  // namespace

TEST_CASE("a function pointer works through map and submit") {
  procpool::Pool pool{two_workers()};
  int (*fp)(int) = &triple;
  CHECK(pool.map(fp, std::vector{1, 2, 3}) == std::vector<int>{3, 6, 9});
  CHECK(pool.map(triple, std::vector{4}) == std::vector<int>{12});
  CHECK(pool.submit(fp, 7).get() == 21);
  CHECK(pool.submit(triple, -2).get() == -6);
}

TEST_CASE("a capture-less lambda works through map and submit") {
  procpool::Pool pool{two_workers()};
  const auto negate = [](int x) { return -x; };
  CHECK(pool.map(negate, std::vector{1, -2, 0}) == std::vector<int>{-1, 2, 0});
  CHECK(pool.submit(negate, 5).get() == -5);
  CHECK(pool.submit([](int a, int b, int c) { return a * 100 + b * 10 + c; }, 1, 2, 3).get() == 123);
}

TEST_CASE("a lambda capturing ints and doubles by value sees the captured values") {
  procpool::Pool pool{two_workers()};
  // Not const: the values must really be captured (a const int would be a constant expression).
  int k = 7;
  double scale = 0.5;
  long big = 1L << 40;
  const auto f = [k, scale, big](int x) { return static_cast<double>(x + k) * scale + static_cast<double>(big); };
  STATIC_REQUIRE(sizeof(f) >= sizeof(int) + sizeof(double) + sizeof(long));
  k = 0;  // later changes of the caller's variables do not affect the copies in the closure
  scale = 0;
  const auto out = pool.map(f, std::vector{1, 3, 5});
  const double b = static_cast<double>(big);
  CHECK(out == std::vector<double>{4.0 + b, 5.0 + b, 6.0 + b});
  CHECK(pool.submit(f, 9).get() == 8.0 + b);
}

TEST_CASE("lambdas of one type capturing different values give each its own results in one pool") {
  procpool::Pool pool{two_workers()};
  const auto make = [](int k) { return [k](int x) { return x * 1000 + k; }; };
  const std::vector<int> in = iota_vector(200);
  for (int k = 0; k < 5; ++k) {
    const auto out = pool.map(make(k), in);
    REQUIRE(out.size() == in.size());
    for (std::size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == static_cast<int>(i) * 1000 + k);
  }
}

TEST_CASE("a functor struct with trivially copyable members works through map and submit") {
  procpool::Pool pool{two_workers()};
  const Affine f{3, -4, 1.5};
  CHECK(pool.map(f, std::vector{0, 1, 10}) == std::vector<long>{-4, -1, 26});
  CHECK(pool.submit(Affine{2, 1000, 0.0}, 21).get() == 1042);
}

TEST_CASE("a functor with a std::string member and a serialize member travels by its encoding") {
  procpool::Pool pool{two_workers()};
  const Labeller f{"item-with-a-prefix-longer-than-sso-", {1, 2, 3}};
  const auto out = pool.map(f, std::vector{1, 2, 7});
  CHECK(out == std::vector<std::string>{"item-with-a-prefix-longer-than-sso-6", "item-with-a-prefix-longer-than-sso-12",
                                        "item-with-a-prefix-longer-than-sso-42"});
  CHECK(pool.submit(Labeller{"n=", {10}}, 4).get() == "n=40");
  // Two functors that differ only in their encoded state are different jobs.
  CHECK(pool.map(Labeller{"a", {1}}, std::vector{5}) == std::vector<std::string>{"a5"});
  CHECK(pool.map(Labeller{"b", {2}}, std::vector{5}) == std::vector<std::string>{"b10"});
}

TEST_CASE("a lambda capturing pointers to globals changed after the pool started sees today's values") {
  // The pointers refer to writable memory, which may have changed since the workers were forked:
  // the call runs in workers forked for it, whose memory is the caller's as it is now.
  const int saved = g_offset;
  g_offset = 10;
  procpool::Pool pool{two_workers()};
  g_offset = 1000;  // after the pool started

  const int* offset = &g_offset;
  const std::vector<std::string>* names = &g_names;
  const auto f = [offset, names](int i) {
    return (*names)[static_cast<std::size_t>(i)] + "+" + std::to_string(*offset);
  };
  const auto out = pool.map(f, std::vector{0, 3, 1});
  CHECK(out == std::vector<std::string>{"zero+1000", "three+1000", "one+1000"});
  CHECK(pool.submit(f, 2).get() == "two+1000");
  CHECK(f(2) == "two+1000");

  g_offset = saved;
}

TEST_CASE("use_snapshot runs a lambda with pointers in the persistent workers, against the pool-start snapshot") {
  // The caller's explicit promise that the pointed-to data existed before the pool started: the
  // callable travels as its bytes, and its pointers are dereferenced in the workers' snapshot.
  const int saved = g_offset;
  g_offset = 10;
  procpool::Pool pool{two_workers()};
  g_offset = 1000;  // invisible to the persistent workers

  const int* offset = &g_offset;
  const std::vector<std::string>* names = &g_names;
  const auto f = procpool::use_snapshot(
      [offset, names](int i) { return (*names)[static_cast<std::size_t>(i)] + "+" + std::to_string(*offset); });
  const auto pids = pool.worker_pids();
  CHECK(pool.map(f, std::vector{0, 3, 1}) == std::vector<std::string>{"zero+10", "three+10", "one+10"});
  CHECK(pool.submit(f, 2).get() == "two+10");
  CHECK(pool.worker_pids() == pids);

  g_offset = saved;
}

TEST_CASE("a mutable lambda works through map and submit") {
  procpool::Pool pool{two_workers()};
  // Its call operator is non-const: it updates its own copy of the captured state on every call.
  const auto f = [last = 0, calls = 0](int x) mutable {
    ++calls;
    last = x * 2;
    return last + (calls > 0 ? 1 : 0);
  };
  const auto out = pool.map(f, iota_vector(100));
  REQUIRE(out.size() == 100);
  for (std::size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == static_cast<int>(i) * 2 + 1);
  CHECK(pool.submit(f, 50).get() == 101);
}

TEST_CASE("a lambda capturing a std::string works through map and submit and imap") {
  // Not trivially copyable and not encodable: it cannot travel to the persistent workers, so the
  // pool runs it in workers forked for the call, which hold the callable itself.
  procpool::Pool pool{two_workers()};
  const std::string prefix = "a prefix longer than the small-string buffer: ";
  const auto f = [prefix](int x) { return prefix + std::to_string(x); };
  STATIC_REQUIRE_FALSE(std::is_trivially_copyable_v<decltype(f)>);
  CHECK(pool.map(f, std::vector{1, 2}) == std::vector<std::string>{prefix + "1", prefix + "2"});
  CHECK(pool.submit(f, 3).get() == prefix + "3");
  std::vector<std::string> streamed;
  for (const std::string& s : pool.imap(f, std::vector{4, 5, 6})) streamed.push_back(s);
  CHECK(streamed == std::vector<std::string>{prefix + "4", prefix + "5", prefix + "6"});
  // The persistent workers are still there and still work.
  CHECK(pool.worker_pids().size() == 2);
  CHECK(pool.map(triple, std::vector{2}) == std::vector<int>{6});
}
