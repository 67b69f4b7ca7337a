// map with a callable that cannot take the input items: procpool's static_assert is the first error
// (not "no type named 'type' in std::invoke_result" from inside the standard library).
// expect: procpool::Pool::map: the callable cannot be called with an input item
// expect-first: procpool::Pool::map: the callable cannot be called with an input item
#include <procpool/pool.hpp>
#include <string>
#include <vector>

int main() {
  procpool::Pool pool{1};
  const std::vector<std::string> words{"a", "b"};
  auto lengths = pool.map([](int x) { return x; }, words);
  (void)lengths;
}
