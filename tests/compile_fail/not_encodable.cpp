// Must FAIL to compile: a type with no serialize hook that is not trivially copyable is not encodable,
// and procpool::encode's static_assert names the type and says how to fix it.
// expect: is not encodable
#include <procpool/codec.hpp>

#include <memory>

namespace {
struct Holder {
  std::unique_ptr<int> value;
};
}  // namespace

int main() {
  const Holder h;
  const auto bytes = procpool::to_bytes(h);
  return static_cast<int>(bytes.size());
}
