// map needs to count and then iterate its input: a single-pass (input) range is refused with a
// pointer to imap, which accepts one. (A hand-written input range rather than std::views::istream,
// which clang 14 cannot compile with libstdc++ 12.)
// expect: procpool::Pool::map needs a multi-pass range
// expect-first: procpool::Pool::map needs a multi-pass range; use imap for a single-pass input
#include <cstddef>
#include <iterator>
#include <procpool/pool.hpp>

struct Numbers {
  struct iterator {
    using iterator_concept = std::input_iterator_tag;
    using value_type = int;
    using difference_type = std::ptrdiff_t;
    int* next = nullptr;
    int operator*() const { return *next; }
    iterator& operator++() {
      ++*next;
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& it, std::default_sentinel_t) { return *it.next >= 10; }
  };
  int next = 0;
  iterator begin() { return iterator{&next}; }
  std::default_sentinel_t end() { return {}; }
};

int main() {
  procpool::Pool pool{1};
  Numbers numbers;
  auto doubled = pool.map([](int x) { return 2 * x; }, numbers);
  (void)doubled;
}
