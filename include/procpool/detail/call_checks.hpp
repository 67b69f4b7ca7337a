// procpool::detail: what Pool's calls check of a callable and its items at compile time (each
// call's first error names the call and the fix), and how a callable is placed: travelling as its
// bytes, or called through its address in fresh workers.
#pragma once

#include <concepts>
#include <cstddef>
#include <functional>
#include <iterator>
#include <ranges>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../codec.hpp"
#include "closure_references.hpp"
#include "runner.hpp"

namespace procpool {

class Pool;

namespace detail {

template <class F, class In>
using map_result_t = std::remove_cvref_t<std::invoke_result_t<F&, In&>>;

/// The type an input item travels as: the range's value type (what a worker decodes and passes
/// to the callable as an lvalue).
template <class Range>
using range_item_t = std::ranges::range_value_t<Range&>;

/// A tuple-like item (std::tuple, std::pair, std::array): what starmap spreads into arguments.
template <class T>
concept TupleLike = requires {
  std::tuple_size<std::remove_cvref_t<T>>::value;
};

template <class F, class Tuple, std::size_t... I>
constexpr bool applicable_with(std::index_sequence<I...> /*indices*/) {
  return std::is_invocable_v<F, decltype(std::get<I>(std::declval<Tuple>()))...>;
}

/// std::apply(f, t) is well-formed.
template <class F, class Tuple>
concept Applicable = TupleLike<Tuple> &&
    (applicable_with<F, Tuple>(std::make_index_sequence<std::tuple_size_v<std::remove_cvref_t<Tuple>>>{}));

/// What the runner's call returns for an item (its value type, without references).
template <class F, class In, CallStyle Style>
using item_result_t = std::remove_cvref_t<call_result_t<F, In, Style>>;

/// Why a map-like call cannot compile, found in an order that instantiates nothing that could
/// fail first (no invoke_result of a callable that cannot take the item): the public functions
/// turn it into a static_assert naming themselves, and compile nothing else.
enum class CallProblem {
  none,
  not_a_range,
  single_pass,
  item_not_encodable,
  item_not_default_constructible,
  item_not_tuple,
  not_invocable,
  not_applicable,
  returns_void,
  result_not_encodable,
  result_not_default_constructible,
};

/// `F` applied to the items of `Range` as `Style` says; `multi_pass`: the call iterates the range
/// twice (it counts it first).
template <class F, class Range, CallStyle Style, bool multi_pass>
consteval CallProblem call_problem() {
  using Fn = std::decay_t<F>;
  if constexpr (!std::ranges::input_range<Range&>) {
    return CallProblem::not_a_range;
  } else {
    using In = range_item_t<Range>;
    if constexpr (multi_pass && !std::ranges::forward_range<Range&>) {
      return CallProblem::single_pass;
    } else if constexpr (!Encodable<In>) {
      return CallProblem::item_not_encodable;
    } else if constexpr (!std::default_initializable<In>) {
      return CallProblem::item_not_default_constructible;
    } else if constexpr (Style == CallStyle::apply && !TupleLike<In>) {
      return CallProblem::item_not_tuple;
    } else if constexpr (Style == CallStyle::apply && !Applicable<Fn&, In&>) {
      return CallProblem::not_applicable;
    } else if constexpr (Style == CallStyle::invoke && !std::invocable<Fn&, In&>) {
      return CallProblem::not_invocable;
    } else if constexpr (std::is_void_v<call_result_t<Fn, In, Style>>) {
      return CallProblem::returns_void;
    } else if constexpr (!Encodable<item_result_t<Fn, In, Style>>) {
      return CallProblem::result_not_encodable;
    } else if constexpr (!std::default_initializable<item_result_t<Fn, In, Style>>) {
      return CallProblem::result_not_default_constructible;
    } else {
      return CallProblem::none;
    }
  }
}

// The static_asserts of a map-like call, each naming the public function `NAME` (a string
// literal) and, for a single-pass input, its lazy counterpart `LAZY`. Exactly one fires when
// `problem` is not CallProblem::none: the call's first error says what to change.
#define PROCPOOL_DETAIL_CHECK_CALL(problem, NAME, LAZY)                                                            \
  static_assert((problem) != ::procpool::detail::CallProblem::not_a_range,                                         \
                "procpool::Pool::" NAME ": the inputs must be a range (a container or a view: anything "           \
                "std::ranges::begin and std::ranges::end accept; a std::views::filter must not be const) or a "    \
                "braced list");                                                                                    \
  static_assert((problem) != ::procpool::detail::CallProblem::single_pass,                                         \
                "procpool::Pool::" NAME " needs a multi-pass range; use " LAZY " for a single-pass input");        \
  static_assert((problem) != ::procpool::detail::CallProblem::item_not_encodable,                                  \
                "procpool::Pool::" NAME ": the input items must be encodable (see procpool/codec.hpp)");           \
  static_assert((problem) != ::procpool::detail::CallProblem::item_not_default_constructible,                      \
                "procpool::Pool::" NAME ": the input items must be default-constructible (a worker decodes each "  \
                "item into a default-constructed value)");                                                         \
  static_assert((problem) != ::procpool::detail::CallProblem::item_not_tuple,                                      \
                "procpool::Pool::" NAME ": each input item must be a std::tuple, std::pair or std::array of the "  \
                "callable's arguments (map and imap pass each item as one argument)");                             \
  static_assert((problem) != ::procpool::detail::CallProblem::not_applicable,                                      \
                "procpool::Pool::" NAME ": the callable cannot be called with the elements of an input item "      \
                "(f(std::get<0>(item), std::get<1>(item), ...) with lvalues of the item's element types)");        \
  static_assert((problem) != ::procpool::detail::CallProblem::not_invocable,                                       \
                "procpool::Pool::" NAME ": the callable cannot be called with an input item (an lvalue of the "    \
                "range's value type): change its parameter type, or the inputs");                                  \
  static_assert((problem) != ::procpool::detail::CallProblem::returns_void,                                        \
                "procpool::Pool::" NAME ": the callable returns void; " NAME " needs a result per item (return a " \
                "value, or use submit for side effects)");                                                         \
  static_assert((problem) != ::procpool::detail::CallProblem::result_not_encodable,                                \
                "procpool::Pool::" NAME ": the callable's result must be encodable (see procpool/codec.hpp)");     \
  static_assert((problem) != ::procpool::detail::CallProblem::result_not_default_constructible,                    \
                "procpool::Pool::" NAME ": the callable's result type must be default-constructible (results are " \
                "decoded into default-constructed values): give it a default constructor")

/// Whether a callable that would travel to the workers as its bytes carries a pointer into memory
/// that may have changed since the workers were forked (a `[&]` lambda, a captured `this`): its
/// workers' snapshot would be stale, so it runs in fresh workers forked for the call instead.
template <class F>
[[nodiscard]] bool reads_callers_current_memory(const F& f) noexcept {
  // A function pointer points to code, which the snapshot shares: nothing to check.
  if constexpr (is_use_snapshot_v<F> || !std::is_trivially_copyable_v<F> ||
                (std::is_pointer_v<F> && std::is_function_v<std::remove_pointer_t<F>>) ||
                std::is_member_function_pointer_v<F>)
    return false;
  else
    return callable_may_reference_changing_memory(f);
}

/// Calls a callable that stays in the parent's memory, through its address. Only valid in workers
/// forked after the callable was created: see Pool's "fresh workers".
template <class F>
struct CallThrough {
  F* f;
  template <class... Args>
  decltype(auto) operator()(Args&&... args) const {
    return std::invoke(*f, std::forward<Args>(args)...);
  }
};

}  // namespace detail

}  // namespace procpool
