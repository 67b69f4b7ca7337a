// procpool: fmt support for procpool::Outcome, so `fmt::print("{}", outcome)` works.
//
//   procpool::Outcome<int> ok = 42;                 fmt::format("{}", ok)    == "42"
//                                                   fmt::format("{:>5}", ok) == "   42"
//   a failed outcome (what() "boom")                fmt::format("{}", bad)   == "error(\"boom\")"
//   with <fmt/ranges.h>, a std::vector of them      fmt::format("{}", v)     == "[42, error(\"boom\")]"
//
// A successful outcome prints its value through T's own formatter, format spec included (so T must
// be formattable). A failed one prints `error("<what()>")`, the text quoted and escaped as fmt's
// "{:?}" does; an exception not derived from std::exception has no what() and prints
// `error(<an exception not derived from std::exception>)`. The format spec applies to values only.
#pragma once

#include <fmt/core.h>

#include <exception>
#include <string>

#include "outcome.hpp"

namespace procpool::detail {

/// The text a failed Outcome prints inside `error(...)`: what() quoted and escaped, or a fixed
/// text in angle brackets for an exception without what().
[[nodiscard]] inline std::string outcome_error_text(const std::exception_ptr& error) {
  if (!error) return "<no exception>";
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    return fmt::format("{:?}", e.what());
  } catch (...) {
    return "<an exception not derived from std::exception>";
  }
}

}  // namespace procpool::detail

namespace fmt {

/// fmt::formatter for procpool::Outcome<T>: the value through fmt::formatter<T> (whose parse, and
/// so whose format spec, it inherits), or `error("<what()>")` for a failed outcome.
template <class T>
struct formatter<procpool::Outcome<T>> : formatter<T> {
  /// Writes the value as fmt::formatter<T> does, or `error(...)` for a failed outcome.
  template <class FormatContext>
  auto format(const procpool::Outcome<T>& outcome, FormatContext& ctx) const -> decltype(ctx.out()) {
    if (outcome.has_value()) return fmt::formatter<T>::format(outcome.value(), ctx);
    return fmt::format_to(ctx.out(), "error({})", procpool::detail::outcome_error_text(outcome.error()));
  }
};

}  // namespace fmt
