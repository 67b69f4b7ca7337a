// procpool::detail: a non-owning reference to a callable, so that a non-template function can take
// the caller's lambda without a template (compiled once) and without std::function's allocation.
#pragma once

#include <memory>
#include <type_traits>
#include <utility>

namespace procpool::detail {

template <class Signature>
class FunctionRef;

template <class R, class... Args>
class FunctionRef<R(Args...)> {
 public:
  /// Refers to `f`, which must outlive every call through this reference.
  // clang-format 14 misreads a requires-clause before a constructor (reworked in clang-format 15)
  // clang-format off
  template <class F>
    requires(!std::is_same_v<std::remove_cvref_t<F>, FunctionRef> && std::is_invocable_r_v<R, F&, Args...>)
  FunctionRef(F& f) noexcept  // NOLINT(google-explicit-constructor): a reference, converted where passed
      : object_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* object, Args... args) -> R {
          return (*static_cast<F*>(object))(std::forward<Args>(args)...);
        }) {}
  // clang-format on

  R operator()(Args... args) const { return call_(object_, std::forward<Args>(args)...); }

 private:
  void* object_;
  R (*call_)(void*, Args...);
};

}  // namespace procpool::detail
