// procpool::detail: tells a trivially copyable callable whose bytes may point into memory that
// changes after a pool started (a `[&]` lambda, a captured `this` or heap pointer) from one that holds
// plain values, code addresses or read-only data only; and procpool::use_snapshot, the explicit
// opt-out for callables whose pointers may use the workers' snapshot of memory (fork pitfall 14).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>

#include "config.hpp"

namespace procpool::detail {

/// Whether a word could hold the address of something in this process, by its value alone: no
/// system call. Below 64 KiB lies nothing (vm.mmap_min_addr's default); at or above 2^56 lies no user
/// address on any 64-bit Linux (x86-64 with 5-level paging ends just below it), and the bit patterns
/// of most doubles and of every negative number land there.
[[nodiscard]] constexpr bool could_be_user_address(std::uintptr_t word) noexcept {
  if (word < (std::uintptr_t{1} << 16)) return false;
  if constexpr (sizeof(std::uintptr_t) == 8) {
#if defined(__aarch64__)
    // The top byte is a tag the hardware ignores (TBI, MTE, HWASan): judge the address under it.
    // User addresses end at 52 bits there.
    word &= (std::uintptr_t{1} << 56) - 1;
    if (word < (std::uintptr_t{1} << 16) || word >= (std::uintptr_t{1} << 52)) return false;
#else
    if (word >= (std::uintptr_t{1} << 56)) return false;
#endif
  }
  return true;
}

/// Whether the bytes of a trivially copyable callable may hold a pointer into memory that can change
/// after a pool started, so that a worker forked earlier would read a stale snapshot through it.
///
/// Judged as a conservative garbage collector judges roots: every pointer-aligned word (offsets 0, 8,
/// ... from `bytes`, which is where a closure's pointer members lie) that holds the address of a
/// mapped page outside the loaded modules' read-only segments counts as a reference: stacks, heap,
/// anonymous and file mappings, modules' data and bss. Not references: values that cannot be user
/// addresses (below 64 KiB, at or above 2^56: small integers, enums, negative numbers, most doubles),
/// addresses in code or read-only data (function pointers, string literals, const tables of plain
/// values), and addresses no mapping holds now. Errs towards true: a number that happens to equal a
/// mapped address, or a pointer to a read-only mapping outside any module, counts as a reference
/// (costing only speed); padding bytes are read too and may do the same.
///
/// Cost: no system call for words filtered by value; a locked lookup (and, rarely, a rebuild after a
/// dlopen or dlclose) for the rest; one mincore call per remaining word on a new page, stopping at
/// the first mapped one. Thread-safe. Not for a forked child of a multithreaded parent (it locks).
[[nodiscard]] PROCPOOL_DECL bool may_reference_changing_memory(const void* bytes, std::size_t size) noexcept;

/// The same judgement for a callable object: no scan at all (false at compile time) for a type that
/// is empty or cannot hold an aligned pointer member (smaller than a pointer, or less aligned).
template <class F>
  requires std::is_trivially_copyable_v<F>
[[nodiscard]] bool callable_may_reference_changing_memory(const F& f) noexcept {
  // NOLINTNEXTLINE(misc-redundant-expression): the two sizes are equal only for some F
  if constexpr (std::is_empty_v<F> || sizeof(F) < sizeof(void*) || alignof(F) < alignof(void*)) {
    return false;
  } else {
    return may_reference_changing_memory(std::addressof(f), sizeof(F));
  }
}

}  // namespace procpool::detail

namespace procpool {

/// A callable marked by procpool::use_snapshot: f's pointers and references refer to data that
/// existed before the pool started and has not changed since (or need not be current), so the pool
/// runs f in its persistent workers as its bytes, without checking them for references. Callable
/// exactly as F is; trivially copyable when F is.
template <class F>
struct UseSnapshot {
  F f;

  template <class... Args>
  constexpr std::invoke_result_t<F&, Args...> operator()(Args&&... args) & noexcept(
      std::is_nothrow_invocable_v<F&, Args...>) {
    return std::invoke(f, std::forward<Args>(args)...);
  }
  template <class... Args>
  constexpr std::invoke_result_t<const F&, Args...> operator()(Args&&... args) const& noexcept(
      std::is_nothrow_invocable_v<const F&, Args...>) {
    return std::invoke(f, std::forward<Args>(args)...);
  }
  template <class... Args>
  constexpr std::invoke_result_t<F&&, Args...> operator()(Args&&... args) && noexcept(
      std::is_nothrow_invocable_v<F&&, Args...>) {
    return std::invoke(std::move(f), std::forward<Args>(args)...);
  }
  template <class... Args>
  constexpr std::invoke_result_t<const F&&, Args...> operator()(Args&&... args) const&& noexcept(
      std::is_nothrow_invocable_v<const F&&, Args...>) {
    return std::invoke(std::move(f), std::forward<Args>(args)...);
  }
};

/// Marks `f` as free to use the workers' snapshot of memory: f's pointers and references refer to
/// data that existed before the pool started and has not changed since (or need not be current), so
/// run f in the persistent workers as its bytes, without the check for references. Without it, a
/// trivially copyable callable whose bytes hold addresses of writable memory runs in freshly forked
/// workers, which see memory as it is now. Only meaningful for trivially copyable callables (others
/// travel as encoded values, never as addresses).
template <class F>
[[nodiscard]] constexpr UseSnapshot<std::decay_t<F>> use_snapshot(F&& f) noexcept(
    std::is_nothrow_constructible_v<std::decay_t<F>, F&&>) {
  return UseSnapshot<std::decay_t<F>>{std::forward<F>(f)};
}

}  // namespace procpool

namespace procpool::detail {

template <class F>
struct is_use_snapshot : std::false_type {};
template <class F>
struct is_use_snapshot<UseSnapshot<F>> : std::true_type {};

/// Whether F (cv- and reference-qualifiers ignored) was marked by procpool::use_snapshot: the pool
/// skips the scan for references for it.
template <class F>
inline constexpr bool is_use_snapshot_v = is_use_snapshot<std::remove_cvref_t<F>>::value;

}  // namespace procpool::detail

#ifndef PROCPOOL_SEPARATE_COMPILATION
#include "closure_references_impl.hpp"
#endif
