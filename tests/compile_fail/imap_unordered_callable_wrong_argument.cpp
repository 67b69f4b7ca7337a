// imap_unordered with a callable that cannot take the input items: the first error names it.
// expect: procpool::Pool::imap_unordered: the callable cannot be called with an input item
// expect-first: procpool::Pool::imap_unordered: the callable cannot be called with an input item
#include <procpool/pool.hpp>
#include <vector>

struct Point {
  int x = 0;
};

int main() {
  procpool::Pool pool{1};
  auto results = pool.imap_unordered([](Point p) { return p.x; }, std::vector{1, 2, 3});
  (void)results;
}
