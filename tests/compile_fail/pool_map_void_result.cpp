// Must FAIL to compile: map needs a result per item, so a callable returning void is refused
// with procpool's own message (submit is the way to run side effects).
// expect: returns void
#include <procpool/pool.hpp>

#include <vector>

int main() {
  procpool::Pool pool{1};
  const auto out = pool.map([](int) {}, std::vector{1, 2, 3});
  return static_cast<int>(out.size());
}
