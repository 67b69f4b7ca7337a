// A translation unit for clang-tidy (.ci/lint): it instantiates the main templates of the public
// API, so that the checks see their bodies (an uninstantiated template is barely checked). It is
// only analysed, never linked or run.
#include <procpool/procpool.hpp>

#include <cstddef>
#include <cstdio>
#include <deque>
#include <exception>
#include <list>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

namespace {

struct Point {
  int x = 0;
  double y = 0;
  std::string label;

  template <class Archive>
  void serialize(Archive& ar) {
    ar(x, y, label);
  }
};

int square(int x) { return x * x; }

int run() {
  procpool::Pool pool{procpool::PoolOptions{.workers = 2}};

  // map: a function, a capturing lambda, an initializer list, a progress callback, map_into, try_map.
  const std::vector<int> squares = pool.map(square, std::vector{1, 2, 3});
  const int offset = 7;
  const std::vector<std::string> texts = pool.map([offset](int x) { return std::to_string(x + offset); }, squares);
  const auto halves = pool.map([](int x) { return x / 2.0; }, {1, 2, 3});
  procpool::MapOptions options;
  options.chunk_size = 2;
  options.on_progress = [](std::size_t, std::size_t) {};
  const auto points = pool.map(
      [](const Point& p) {
        return Point{p.x + 1, p.y * 2, p.label};
      },
      std::vector<Point>{{1, 2.0, "a"}}, std::move(options));
  std::vector<long> longs;
  pool.map_into([](int x) { return long{x} * 3; }, std::list<int>{1, 2}, longs);
  const std::vector<procpool::Outcome<int>> outcomes = pool.try_map(square, std::deque<int>{4, 5});
  const auto tuples = pool.map([](const std::tuple<int, std::string>& t) { return std::get<1>(t).size(); },
                               std::vector<std::tuple<int, std::string>>{{1, "one"}});
  const auto maps = pool.map([](const std::map<std::string, std::optional<int>>& m) { return m.size(); },
                             std::vector<std::map<std::string, std::optional<int>>>{{{"k", 1}}});
  const auto variants = pool.map([](const std::variant<int, std::string>& v) { return v.index(); },
                                 std::vector<std::variant<int, std::string>>{1, "two"});

  // imap and imap_unordered: ordered and unordered streams.
  long total = 0;
  for (const int v : pool.imap(square, std::vector{1, 2, 3})) total += v;
  for (const auto& v :
       pool.imap_unordered([](int x) { return std::vector<int>(static_cast<std::size_t>(x), x); }, std::vector{1, 2}))
    total += static_cast<long>(v.size());

  // submit: a value, void, several arguments.
  procpool::Future<int> f = pool.submit(square, 6);
  procpool::Future<void> g = pool.submit([](int) {}, 1);
  procpool::Future<std::string> h =
      pool.submit([](int a, const std::string& s) { return s + std::to_string(a); }, 1, std::string("x"));
  // Per-task limits, a done callback, cancel, as_completed.
  procpool::Future<int> limited =
      pool.submit(procpool::TaskOptions{.task_timeout = std::chrono::seconds{1}}, square, 7);
  limited.add_done_callback([&total](const procpool::Outcome<int>& o) { total += o.has_value() ? 1 : 0; });
  g.add_done_callback([](const procpool::Outcome<void>& o) { o.value(); });
  std::vector<procpool::Future<int>> several;
  several.push_back(pool.submit(square, 8));
  several.push_back(pool.submit(square, 9));
  (void)several.back().cancel();
  for (procpool::Future<int>& done : procpool::as_completed(several)) total += done.valid() ? 1 : 0;
  total += f.get();
  total += limited.get();
  g.get();
  total += static_cast<long>(h.get().size());
  pool.close();
  pool.join();

  // Process: a value and void.
  procpool::Process<int> sum{[](int a, int b) { return a + b; }, 2, 3};
  sum.start();
  total += sum.get();
  procpool::Process<void> nothing{[] {}};
  nothing.start();
  nothing.join();

  // fmt: an Outcome through its formatter.
  const std::string shown = fmt::format("{} {}", outcomes.front(), procpool::Outcome<int>{3});

  return static_cast<int>(total + static_cast<long>(texts.size() + halves.size() + points.size() + longs.size() +
                                                    tuples.size() + maps.size() + variants.size() + shown.size())) &
         1;
}

}  // namespace

int main() {
  try {
    return run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
