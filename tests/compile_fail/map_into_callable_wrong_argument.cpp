// map_into with a callable that cannot take the input items: the first error names map_into.
// expect: procpool::Pool::map_into: the callable cannot be called with an input item
// expect-first: procpool::Pool::map_into: the callable cannot be called with an input item
#include <procpool/pool.hpp>
#include <string>
#include <vector>

int main() {
  procpool::Pool pool{1};
  std::vector<int> out;
  pool.map_into([](int a, int b) { return a + b; }, std::vector{1, 2}, out);
}
