// Must FAIL to compile: map_into decodes into the caller's vector, which must hold exactly the
// callable's result type (a vector of another type would need a conversion per item).
// expect: `out` must be a std::vector of the callable's result type
#include <procpool/pool.hpp>

#include <vector>

int main() {
  procpool::Pool pool{1};
  std::vector<double> out;
  pool.map_into([](int x) { return x * 2; }, std::vector{1, 2, 3}, out);
  return static_cast<int>(out.size());
}
