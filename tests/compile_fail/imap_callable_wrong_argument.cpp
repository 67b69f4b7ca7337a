// imap with a callable that cannot take the input items: the first error names imap (not map).
// expect: procpool::Pool::imap: the callable cannot be called with an input item
// expect-first: procpool::Pool::imap: the callable cannot be called with an input item
#include <procpool/pool.hpp>
#include <string>
#include <vector>

int main() {
  procpool::Pool pool{1};
  const std::vector<std::string> words{"a", "b"};
  for (int r : pool.imap([](int x) { return x; }, words)) (void)r;
}
