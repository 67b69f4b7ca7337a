// map whose callable returns a type without a default constructor: results are decoded into
// default-constructed values, and procpool's static_assert says so first (not libstdc++'s
// construct_at failure).
// expect: procpool::Pool::map: the callable's result type must be default-constructible
// expect-first: procpool::Pool::map: the callable's result type must be default-constructible
#include <procpool/pool.hpp>
#include <vector>

struct Celsius {
  explicit Celsius(double v) : value(v) {}
  double value;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value);
  }
};

int main() {
  procpool::Pool pool{1};
  auto temperatures = pool.map([](int x) { return Celsius{x * 1.5}; }, std::vector{1, 2});
  (void)temperatures;
}
