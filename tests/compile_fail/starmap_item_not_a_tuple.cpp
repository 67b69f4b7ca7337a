// starmap over items that are not tuples: the first error says that each item must be one.
// expect: procpool::Pool::starmap: each input item must be a std::tuple, std::pair or std::array
// expect-first: procpool::Pool::starmap: each input item must be a std::tuple, std::pair or std::array
#include <procpool/pool.hpp>
#include <vector>

int main() {
  procpool::Pool pool{1};
  auto squares = pool.starmap([](int x) { return x * x; }, std::vector{1, 2, 3});
  (void)squares;
}
