// Python's pool that squares numbers:
//   def square(x): return x * x
//   with multiprocessing.Pool(processes=4) as pool:
//       print(pool.map(square, [1, 2, 3, 4, 5]))        # [1, 4, 9, 16, 25]
#include <fmt/ranges.h>

#include <procpool/procpool.hpp>
#include <vector>

int square(int x) { return x * x; }

int main() {
  procpool::Pool pool{4};
  const std::vector<int> squares = pool.map(square, std::vector{1, 2, 3, 4, 5});
  fmt::print("{}\n", squares);  // [1, 4, 9, 16, 25]
}
