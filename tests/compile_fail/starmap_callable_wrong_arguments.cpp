// starmap with a callable that cannot take an item's elements: the first error names starmap.
// expect: procpool::Pool::starmap: the callable cannot be called with the elements of an input item
// expect-first: procpool::Pool::starmap: the callable cannot be called with the elements of an input item
#include <procpool/pool.hpp>
#include <string>
#include <utility>
#include <vector>

int main() {
  procpool::Pool pool{1};
  const std::vector<std::pair<int, std::string>> items{{1, "a"}};
  auto sums = pool.starmap([](int a, int b) { return a + b; }, items);
  (void)sums;
}
