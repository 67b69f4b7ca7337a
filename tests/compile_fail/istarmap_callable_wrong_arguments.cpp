// istarmap with a callable of the wrong arity: the first error names istarmap.
// expect: procpool::Pool::istarmap: the callable cannot be called with the elements of an input item
// expect-first: procpool::Pool::istarmap: the callable cannot be called with the elements of an input item
#include <procpool/pool.hpp>
#include <tuple>
#include <vector>

int main() {
  procpool::Pool pool{1};
  const std::vector<std::tuple<int, int, int>> items{{1, 2, 3}};
  for (int r : pool.istarmap([](int a, int b) { return a + b; }, items)) (void)r;
}
