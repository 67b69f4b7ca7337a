// procpool::Outcome: the value of one item, or the exception that replaced it.
#pragma once

#include <exception>
#include <utility>
#include <variant>

namespace procpool {

/// The outcome of one item: its value, or the exception that replaced it.
template <class R>
class Outcome {
 public:
  /// A successful outcome.
  Outcome(R value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  /// A failed outcome.
  Outcome(std::exception_ptr error) : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT

  /// True if the item produced a value.
  [[nodiscard]] bool has_value() const noexcept { return v_.index() == 0; }
  /// has_value(), for `if (outcome)`.
  explicit operator bool() const noexcept { return has_value(); }

  /// The value; rethrows the item's exception if it failed.
  [[nodiscard]] R& value() & {
    rethrow_if_failed();
    return std::get<0>(v_);
  }
  /// The value, read-only; rethrows the item's exception if it failed.
  [[nodiscard]] const R& value() const& {
    rethrow_if_failed();
    return std::get<0>(v_);
  }
  /// The value, moved out of a temporary Outcome; rethrows the item's exception if it failed.
  [[nodiscard]] R&& value() && {
    rethrow_if_failed();
    return std::get<0>(std::move(v_));
  }
  /// The exception of a failed item, or null.
  [[nodiscard]] std::exception_ptr error() const noexcept { return has_value() ? nullptr : std::get<1>(v_); }

 private:
  void rethrow_if_failed() const {
    if (!has_value()) std::rethrow_exception(std::get<1>(v_));
  }
  std::variant<R, std::exception_ptr> v_;
};

/// The outcome of a task that returns nothing: success, or the exception that ended it.
template <>
class Outcome<void> {
 public:
  /// A successful outcome.
  Outcome() = default;
  /// A failed outcome (a null pointer means success).
  Outcome(std::exception_ptr error) : error_(std::move(error)) {}  // NOLINT: implicit, like Outcome<R>'s

  /// True if the task succeeded.
  [[nodiscard]] bool has_value() const noexcept { return error_ == nullptr; }
  /// has_value(), for `if (outcome)`.
  explicit operator bool() const noexcept { return has_value(); }
  /// Returns if the task succeeded; rethrows its exception if it failed.
  void value() const {
    if (error_) std::rethrow_exception(error_);
  }
  /// The exception of a failed task, or null.
  [[nodiscard]] std::exception_ptr error() const noexcept { return error_; }

 private:
  std::exception_ptr error_;
};

}  // namespace procpool
