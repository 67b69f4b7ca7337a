// Must FAIL to compile: map's input items travel to the workers, so they must be encodable; the
// error says so instead of a wall of template errors.
// expect: the input items must be encodable
#include <procpool/pool.hpp>

#include <memory>
#include <vector>

int main() {
  procpool::Pool pool{1};
  std::vector<std::unique_ptr<int>> inputs;
  const auto out = pool.map([](const std::unique_ptr<int>& p) { return *p; }, inputs);
  return static_cast<int>(out.size());
}
