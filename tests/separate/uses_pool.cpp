// A user's file in separate-compilation mode: it calls every kind of pool operation, and must not
// compile procpool's non-template core (check_headers.cmake lists what it must not include).
#include <procpool/procpool.hpp>

#include <vector>

int square(int x) { return x * x; }

int main() {
  procpool::Pool pool(procpool::PoolOptions{});
  const std::vector<int> squares = pool.map(square, std::vector{1, 2, 3});
  auto outcomes = pool.try_map([](int x) { return x + 1; }, std::vector{1, 2, 3});
  auto future = pool.submit(square, 4);
  int sum = future.get();
  for (const int v : pool.imap(square, std::vector{5, 6})) sum += v;
  procpool::Process process{square, 7};
  process.start();
  sum += process.get();
  return sum + squares[0] + static_cast<int>(outcomes.size()) > 0 ? 0 : 1;
}
