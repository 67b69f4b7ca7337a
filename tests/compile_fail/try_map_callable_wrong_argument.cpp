// try_map with a callable that cannot take the input items: the first error names try_map.
// expect: procpool::Pool::try_map: the callable cannot be called with an input item
// expect-first: procpool::Pool::try_map: the callable cannot be called with an input item
#include <procpool/pool.hpp>
#include <string>
#include <vector>

int main() {
  procpool::Pool pool{1};
  auto outcomes = pool.try_map([](const std::string& s) { return s.size(); }, std::vector{1, 2});
  (void)outcomes;
}
