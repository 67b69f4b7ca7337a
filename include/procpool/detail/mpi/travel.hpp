// procpool::detail::mpi: how a call's callable and its item types travel to another rank.
//
// A job sent to a rank names three things: the runner factory (as on the local pool), the
// callable's bytes, and a "shape" function: a type-aware helper, templated on the call's argument
// and result types and holding no state, that measures one encoded argument or one encoded result.
// The serving rank, which knows no types, uses it to split a chunk's items among its local workers
// and to gather their results back into one reply. Both addresses travel relative to their module.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/core.h>

#include "../../codec.hpp"
#include "../../error.hpp"
#include "../closure_references.hpp"
#include "../runner.hpp"
#include "modules.hpp"

namespace procpool::detail::mpi {

/// What a shape function is asked.
enum class ShapeQuery : int {
  item_fixed_size,    // the size every encoded argument has, or 0 if it varies
  item_size,          // the size of the encoded argument at the start of the bytes
  result_fixed_size,  // the size every encoded result has, or 0 if it varies (or is empty)
  result_size,        // the size of the encoded result at the start of the bytes
};

/// Measures encoded arguments (In) and results (Out) of a call; see ShapeQuery.
using ShapeFn = std::size_t (*)(ShapeQuery, std::span<const std::byte>);

/// The element type of a string or vector whose elements are bitwise (encoded as a count, then
/// the elements' bytes), or void.
template <class T>
struct contiguous_bitwise {
  using type = void;
};
template <class C, class Tr, class A>
  requires is_bitwise_codec_v<C>
struct contiguous_bitwise<std::basic_string<C, Tr, A>> {
  using type = C;
};
template <class E, class A>
  requires(is_bitwise_codec_v<E> && !std::is_same_v<E, bool>)
struct contiguous_bitwise<std::vector<E, A>> {
  using type = E;
};

template <class T>
std::size_t measure_one(std::span<const std::byte> bytes) {
  using Element = typename contiguous_bitwise<T>::type;
  if constexpr (std::is_void_v<T>) {
    return 0;
  } else if constexpr (is_bitwise_codec_v<T>) {
    if (bytes.size() < sizeof(T)) throw DecodeError("procpool::mpi: a truncated value");
    return sizeof(T);
  } else if constexpr (!std::is_void_v<Element>) {
    // A string or a vector of bitwise elements: its count, then its bytes, skipped unread.
    Decoder d(bytes);
    const std::size_t n = d.read_count(sizeof(Element));
    (void)d.take(n * sizeof(Element));
    return d.position();
  } else {
    Decoder d(bytes);
    T v{};
    decode(d, v);
    return d.position();
  }
}

template <class T>
constexpr std::size_t fixed_size() {
  if constexpr (!std::is_void_v<T> && is_bitwise_codec_v<T>) {
    return sizeof(T);
  } else {
    return 0;
  }
}

/// The shape function of a call whose items are In and results Out.
template <class In, class Out>
std::size_t shape(ShapeQuery q, std::span<const std::byte> bytes) {
  switch (q) {
    case ShapeQuery::item_fixed_size: return fixed_size<In>();
    case ShapeQuery::item_size: return measure_one<In>(bytes);
    case ShapeQuery::result_fixed_size: return fixed_size<Out>();
    case ShapeQuery::result_size: return measure_one<Out>(bytes);
  }
  return 0;
}

/// A plain function called through a pointer: the pointer travels relative to its module, and is
/// the same function's address on the rank (and in the worker) that decodes it.
template <class Fp>
struct RelocatedFunction {
  Fp f = nullptr;

  RelocatedFunction() = default;
  explicit RelocatedFunction(Fp fn) noexcept : f(fn) {}
  // Not trivially copyable on purpose: the pool would otherwise send its raw bytes (this rank's
  // address) instead of its encoding.
  RelocatedFunction(const RelocatedFunction& other) noexcept : f(other.f) {}
  RelocatedFunction& operator=(const RelocatedFunction& other) noexcept {
    f = other.f;
    return *this;
  }
  ~RelocatedFunction() = default;

  template <class... Args>
  decltype(auto) operator()(Args&&... args) const {
    return std::invoke(f, std::forward<Args>(args)...);
  }

  template <class Archive>
  void serialize(Archive& ar) {
    if constexpr (Archive::is_encoder) {
      RelativeAddress r = AddressMap::instance().relative(reinterpret_cast<std::uintptr_t>(f));
      ar(r);
    } else {
      RelativeAddress r;
      ar(r);
      f = reinterpret_cast<Fp>(AddressMap::instance().absolute(r));
    }
  }
};

template <class F>
inline constexpr bool is_function_pointer_v = std::is_pointer_v<F>&& std::is_function_v<std::remove_pointer_t<F>>;

template <class F>
struct strip_snapshot {
  using type = F;
};
template <class F>
struct strip_snapshot<UseSnapshot<F>> {
  using type = F;
};

/// The type a callable F travels as to another rank: a plain function through RelocatedFunction,
/// anything else as itself (a use_snapshot marking means nothing on another machine).
template <class F>
using travelling_t =
    std::conditional_t<is_function_pointer_v<typename strip_snapshot<F>::type>,
                       RelocatedFunction<typename strip_snapshot<F>::type>, typename strip_snapshot<F>::type>;

/// Whether F can travel to another rank at all: a plain function, or an object that travels as its
/// bytes or through the codec. (Not: member pointers, closures holding references or pointers in
/// members the codec cannot encode.)
template <class F>
concept RemoteCallable = is_function_pointer_v<typename strip_snapshot<F>::type> ||
    (!std::is_member_pointer_v<F> && TravellingCallable<typename strip_snapshot<F>::type>);

template <class F>
[[nodiscard]] travelling_t<F> to_travelling(const F& f) {
  if constexpr (is_use_snapshot_v<F>) {
    return to_travelling(f.f);
  } else if constexpr (is_function_pointer_v<F>) {
    return RelocatedFunction<F>(f);
  } else {
    return f;
  }
}

/// A plain function holds no data: nothing to refuse.
template <class F>
  requires std::is_function_v<F>
void refuse_addresses(const F& /*f*/, const char* /*call*/) {}

/// Throws procpool::Error if a callable that travels as its raw bytes holds what looks like an
/// address: a pointer or reference into the caller's memory (stack, heap, data) or into code,
/// which means nothing on another machine. `call` names the call for the message.
template <class F>
  requires(!std::is_function_v<F>)
void refuse_addresses(const F& f, const char* call) {
  if constexpr (is_use_snapshot_v<F>) {
    refuse_addresses(f.f, call);
  } else if constexpr (std::is_trivially_copyable_v<F> && !std::is_empty_v<F> &&
                       // NOLINTNEXTLINE(misc-redundant-expression): the two sizes are equal only for some F
                       sizeof(F) >= sizeof(void*) && alignof(F) >= alignof(void*) && !is_function_pointer_v<F>) {
    bool found = callable_may_reference_changing_memory(f);
    const auto* bytes = reinterpret_cast<const unsigned char*>(std::addressof(f));
    for (std::size_t at = 0; !found && at + sizeof(std::uintptr_t) <= sizeof(F); at += sizeof(std::uintptr_t)) {
      std::uintptr_t word;
      std::memcpy(&word, bytes + at, sizeof word);
      found = could_be_user_address(word) && AddressMap::instance().in_a_module(word);
    }
    if (found)
      throw Error(fmt::format(
          "procpool::mpi::Pool::{}: the callable holds a pointer or a reference (a [&] or [this] capture, a "
          "captured pointer or function pointer), which means nothing on another machine; capture values "
          "instead ([=], or [x = value]), or pass the data as the items",
          call));
  } else {
    (void)f;
    (void)call;
  }
}

}  // namespace procpool::detail::mpi
