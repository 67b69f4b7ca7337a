// procpool::detail::may_reference_changing_memory: which trivially copyable callables hold
// addresses of memory that can change after a pool started (fork pitfall 14), and
// procpool::use_snapshot, the opt-out that marks a callable as free to use the workers' snapshot.
#include <dlfcn.h>
#include <sys/mman.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <memory>
#include <procpool/detail/closure_references.hpp>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

using procpool::detail::callable_may_reference_changing_memory;
using procpool::detail::may_reference_changing_memory;

namespace {

int some_function(int x) { return x + 1; }

int g_writable_global = 5;                       // .data: a writable segment of the test executable
const int kConstTable[] = {2, 3, 5, 7, 11, 13};  // .rodata: no relocations, read-only

enum class Colour : std::int64_t { red = 1, green = 2, blue = 3 };
enum PlainEnum { kFirst, kSecond = 40000 };
struct IntPair {
  int first;
  int second;
};

/// The judgement on a closure's raw bytes, as the pool sees them.
template <class F>
bool bytes_judged(const F& f) {
  return may_reference_changing_memory(std::addressof(f), sizeof(F));
}

/// Both entry points: the typed one must agree with the byte scan whenever the type can hold a
/// pointer at all.
template <class F>
bool judged(const F& f) {
  const bool typed = callable_may_reference_changing_memory(f);
  if constexpr (!std::is_empty_v<F> && sizeof(F) >= sizeof(void*) && alignof(F) >= alignof(void*)) {
    CHECK(typed == bytes_judged(f));
  }
  return typed;
}

struct StackObject {
  int value = 3;
  auto closure() {
    return [this](int x) { return x * value; };
  }
};

/// A fresh page of anonymous memory, unmapped on destruction.
struct AnonymousPage {
  std::size_t size = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  void* address = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  AnonymousPage() { REQUIRE(address != MAP_FAILED); }
  ~AnonymousPage() { ::munmap(address, size); }
  AnonymousPage(const AnonymousPage&) = delete;
  AnonymousPage& operator=(const AnonymousPage&) = delete;
};

using IntFunction = int (*)(int);

}  // namespace

TEST_CASE("a capture-less lambda holds no references", "[closure_references]") {
  auto f = [](int x) { return x + 1; };
  STATIC_REQUIRE(std::is_empty_v<decltype(f)>);
  CHECK_FALSE(judged(f));
  CHECK_FALSE(bytes_judged(f));
  CHECK_FALSE(may_reference_changing_memory(nullptr, 0));
}

TEST_CASE("by-value captures of numbers, enums and doubles hold no references", "[closure_references]") {
  int k = 10;
  CHECK_FALSE(judged([k](int x) { return x * k; }));
  double d = 3.14159;
  CHECK_FALSE(judged([d](double x) { return x * d; }));
  double tiny = 1e-3;
  double negative = -2.5;
  double zero = 0.0;
  CHECK_FALSE(judged([tiny, negative, zero](double x) { return x * tiny + negative + zero; }));
  Colour c = Colour::blue;
  CHECK_FALSE(judged([c](int x) { return x + static_cast<int>(c); }));
  PlainEnum e = kSecond;
  CHECK_FALSE(judged([e](int x) { return x + e; }));
  IntPair pair{1, 2};  // not std::pair: its assignment operators make it not trivially copyable
  CHECK_FALSE(judged([pair](int x) { return x + pair.first + pair.second; }));
  int a = 7, b = 100000;
  CHECK_FALSE(judged([a, b](int x) { return x * a + b; }));
  std::int64_t big = 0x7fff0000;
  std::int64_t minus_one = -1;
  std::uint64_t all_ones = ~std::uint64_t{0};
  std::int64_t small = 65535;
  CHECK_FALSE(judged([big, minus_one, all_ones, small](std::int64_t x) {
    return x + big + minus_one + static_cast<std::int64_t>(all_ones) + small;
  }));
}

TEST_CASE("a reference to a stack variable is a reference", "[closure_references]") {
  int k = 10;
  CHECK(judged([&k](int x) { return x * k; }));
  CHECK(judged([&](int x) { return x * k; }));
}

TEST_CASE("a reference to a vector on the stack is a reference", "[closure_references]") {
  std::vector<int> v{1, 2, 3};
  CHECK(judged([&v](std::size_t i) { return v[i]; }));
}

TEST_CASE("a captured heap pointer is a reference", "[closure_references]") {
  auto owner = std::make_unique<int>(4);
  int* p = owner.get();
  CHECK(judged([p](int x) { return x * *p; }));
}

TEST_CASE("a pointer to a writable global variable is a reference", "[closure_references]") {
  int* p = &g_writable_global;
  CHECK(judged([p](int x) { return x * *p; }));
}

TEST_CASE("a pointer to a string literal is not a reference", "[closure_references]") {
  const char* s = "a string literal";
  CHECK_FALSE(judged([s](std::size_t i) { return s[i]; }));
}

TEST_CASE("a captured function pointer is not a reference", "[closure_references]") {
  IntFunction fn = &some_function;
  CHECK_FALSE(judged([fn](int x) { return fn(x); }));
  CHECK_FALSE(judged(fn));
}

TEST_CASE("a captured this pointer to a stack object is a reference", "[closure_references]") {
  StackObject object;
  CHECK(judged(object.closure()));
}

TEST_CASE("a pointer to a static const table of numbers is not a reference", "[closure_references]") {
  const int* table = kConstTable;
  CHECK_FALSE(judged([table](std::size_t i) { return table[i]; }));
  static const double kLocalTable[] = {0.5, 0.25};
  const double* local = kLocalTable;
  CHECK_FALSE(judged([local](std::size_t i) { return local[i]; }));
}

TEST_CASE("a pointer among several numbers is found", "[closure_references]") {
  // Ints in pairs, so that no padding (whose bytes are indeterminate) lies between the members.
  int k = 10;
  int a = 1, b = 2, c = 3, e = 4;
  std::int64_t big = 1'000'000;
  double d = 2.5;
  auto with_reference = [a, b, &k, c, e, big, d](int x) {
    return x * a + b * k + c + e + static_cast<int>(big) + static_cast<int>(d);
  };
  STATIC_REQUIRE(sizeof(with_reference) == 5 * 8);
  CHECK(judged(with_reference));
  auto values_only = [a, b, c, e, big, d](int x) {
    return x * a + b + c + e + static_cast<int>(big) + static_cast<int>(d);
  };
  STATIC_REQUIRE(sizeof(values_only) == 4 * 8);
  CHECK_FALSE(judged(values_only));
}

TEST_CASE("a closure of many words is scanned to its last word", "[closure_references]") {
  // More candidate words than one round of the scan gathers.
  std::array<const void*, 40> words{};
  for (auto& w : words) w = "read-only";
  CHECK_FALSE(judged(words));
  int on_stack = 1;
  words.back() = &on_stack;
  CHECK(judged(words));
}

TEST_CASE("a pointer to freshly mapped anonymous memory is a reference", "[closure_references]") {
  AnonymousPage page;
  auto* p = static_cast<int*>(page.address);
  CHECK(judged([p](int x) { return x + *p; }));
  // Mapped but not writable now still counts: it may become writable (reserve, then commit).
  REQUIRE(::mprotect(page.address, page.size, PROT_NONE) == 0);
  CHECK(judged([p](int x) { return x + *p; }));
}

TEST_CASE("a pointer to an unmapped page is not a reference", "[closure_references]") {
  void* address = nullptr;
  {
    AnonymousPage page;
    address = page.address;
  }
  auto* p = static_cast<int*>(address);
  CHECK_FALSE(judged([p](int x) { return x + *p; }));
}

TEST_CASE("a pointer to a function of a library loaded by dlopen is not a reference", "[closure_references]") {
  void* libm = ::dlopen("libm.so.6", RTLD_NOW | RTLD_LOCAL);
  REQUIRE(libm != nullptr);
  void* symbol = ::dlsym(libm, "cos");
  REQUIRE(symbol != nullptr);
  double (*cosine)(double) = nullptr;
  std::memcpy(&cosine, &symbol, sizeof cosine);
  CHECK_FALSE(judged([cosine](double x) { return cosine(x); }));
  ::dlclose(libm);
}

namespace {

/// A library this process has not loaded yet (zlib, or glibc's libthread_db), and a function in it.
struct FreshLibrary {
  void* handle = nullptr;
  void* function = nullptr;
  FreshLibrary() {
    // Libraries without constructors that change the process (no malloc hooks, no preload helpers).
    const std::pair<const char*, const char*> candidates[] = {{"libz.so.1", "zlibVersion"},
                                                              {"libthread_db.so.1", "td_init"}};
    for (const auto& [name, symbol] : candidates) {
      if (void* loaded = ::dlopen(name, RTLD_NOW | RTLD_NOLOAD)) {
        ::dlclose(loaded);
        continue;
      }
      // Lazily: libthread_db's references to the debugger's ps_* functions are never called here.
      handle = ::dlopen(name, RTLD_LAZY | RTLD_LOCAL);
      if (handle == nullptr) continue;
      function = ::dlsym(handle, symbol);
      if (function != nullptr) return;
      ::dlclose(handle);
      handle = nullptr;
    }
  }
};

}  // namespace

TEST_CASE("a library loaded after the first judgement has its code recognised", "[closure_references]") {
  // The list of read-only segments is built here, before the library is loaded.
  IntFunction fn = &some_function;
  CHECK_FALSE(judged([fn](int x) { return fn(x); }));

  FreshLibrary library;
  if (library.handle == nullptr) {
    WARN("no library left to load that this process has not loaded already");
    return;
  }
  const void* code = library.function;
  // A stale list would take the library's mapped code for unknown memory: a reference.
  CHECK_FALSE(judged([code] { return code != nullptr; }));

  // After dlclose, the same address mapped writable again must count: a stale list would still
  // take it for the library's code.
  ::dlclose(library.handle);
  const auto page_size = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const std::uintptr_t page = reinterpret_cast<std::uintptr_t>(code) & ~(page_size - 1);
  if (procpool::detail::is_mapped(page)) {
    WARN("dlclose left the library mapped");
    return;
  }
  void* remapped = ::mmap(reinterpret_cast<void*>(page), page_size, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (remapped == MAP_FAILED) {
    WARN("could not map a page where the library was");
    return;
  }
  REQUIRE(remapped == reinterpret_cast<void*>(page));
  CHECK(judged([code] { return code != nullptr; }));
  ::munmap(remapped, page_size);
}

TEST_CASE("threads judging while libraries load and unload agree with one judging alone", "[closure_references]") {
  std::atomic<bool> stop{false};
  std::atomic<int> wrong{0};
  auto judge = [&] {
    int on_stack = 1;
    IntFunction fn = &some_function;
    const char* literal = "literal";
    auto reference = [&on_stack] { return on_stack; };
    auto code_and_rodata = [fn, literal] { return fn(literal[0]); };
    while (!stop.load(std::memory_order_relaxed)) {
      if (!bytes_judged(reference) || bytes_judged(code_and_rodata)) wrong.fetch_add(1);
    }
  };
  std::thread first(judge);
  std::thread second(judge);
  for (int i = 0; i < 20; ++i) {
    FreshLibrary library;                                      // loads one (if any is left to load) ...
    if (library.handle != nullptr) ::dlclose(library.handle);  // ... and unloads it again
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  stop = true;
  first.join();
  second.join();
  CHECK(wrong.load() == 0);
}

TEST_CASE("a byte buffer shorter than a word holds no references", "[closure_references]") {
  int k = 0;
  int* p = &k;
  unsigned char bytes[sizeof p];
  std::memcpy(bytes, &p, sizeof p);
  CHECK(may_reference_changing_memory(bytes, sizeof bytes));
  CHECK_FALSE(may_reference_changing_memory(bytes, sizeof bytes - 1));
}

TEST_CASE("use_snapshot's wrapper is callable exactly like the callable it wraps", "[closure_references][use_snapshot]") {
  int k = 3;
  auto by_value = procpool::use_snapshot([k](int x) { return x * k; });
  CHECK(by_value(4) == 12);
  const auto& as_const = by_value;
  CHECK(as_const(5) == 15);
  CHECK(std::move(by_value)(6) == 18);

  // Non-const operator(), arguments forwarded as they came, references returned as references.
  auto counter = procpool::use_snapshot([n = 0]() mutable { return ++n; });
  CHECK(counter() == 1);
  CHECK(counter() == 2);
  auto pick = procpool::use_snapshot([](int& x) -> int& { return x; });
  int target = 1;
  pick(target) = 9;
  CHECK(target == 9);
  STATIC_REQUIRE(std::is_same_v<decltype(pick(target)), int&>);
  auto take = procpool::use_snapshot([](std::unique_ptr<int>&& p) { return *p; });
  CHECK(take(std::make_unique<int>(7)) == 7);
  STATIC_REQUIRE_FALSE(std::is_invocable_v<decltype(pick), int&&>);
  STATIC_REQUIRE_FALSE(std::is_invocable_v<const decltype(counter)&>);

  auto function = procpool::use_snapshot(some_function);
  CHECK(function(1) == 2);
  STATIC_REQUIRE(std::is_same_v<decltype(function), procpool::UseSnapshot<IntFunction>>);
}

TEST_CASE("use_snapshot's wrapper is trivially copyable when the callable is", "[closure_references][use_snapshot]") {
  int k = 3;
  auto wrapped = procpool::use_snapshot([&k](int x) { return x * k; });
  STATIC_REQUIRE(std::is_trivially_copyable_v<decltype(wrapped)>);
  STATIC_REQUIRE(sizeof(wrapped) == sizeof(&k));
  std::string s = "not trivially copyable";
  auto owning = procpool::use_snapshot([s](std::size_t i) { return s[i]; });
  STATIC_REQUIRE_FALSE(std::is_trivially_copyable_v<decltype(owning)>);
  CHECK(owning(0) == 'n');
}

TEST_CASE("is_use_snapshot_v tells wrapped callables from others", "[closure_references][use_snapshot]") {
  int k = 3;
  auto lambda = [&k](int x) { return x * k; };
  auto wrapped = procpool::use_snapshot(lambda);
  STATIC_REQUIRE(procpool::detail::is_use_snapshot_v<decltype(wrapped)>);
  STATIC_REQUIRE(procpool::detail::is_use_snapshot_v<const decltype(wrapped)&>);
  STATIC_REQUIRE_FALSE(procpool::detail::is_use_snapshot_v<decltype(lambda)>);
  STATIC_REQUIRE_FALSE(procpool::detail::is_use_snapshot_v<IntFunction>);
  // The wrapper's bytes are the callable's: the scan would still find the reference.
  CHECK(bytes_judged(wrapped));
}

namespace {

template <class F>
double nanoseconds_per_judgement(const F& f) {
  constexpr int kRounds = 200'000;
  int found = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kRounds; ++i) {
    found += bytes_judged(f) ? 1 : 0;
    asm volatile("" ::: "memory");  // the closure may have changed: judge it again
  }
  const std::chrono::duration<double, std::nano> elapsed = std::chrono::steady_clock::now() - start;
  CHECK((found == 0 || found == kRounds));
  return elapsed.count() / kRounds;
}

}  // namespace

TEST_CASE("the cost of a judgement, printed", "[.benchmark][closure_references]") {
  std::int64_t a = 7, b = 9;
  std::int64_t big_a = 1'000'000, big_b = 2'000'000;
  double x = 1.5, y = 2.5;
  int k = 10;
  int i = 1, j = 2;
  IntFunction fn = &some_function;
  const char* literal = "literal";
  std::cout << "ns per judgement of a closure's bytes:\n"
            << "  two small int64 (16 bytes):        " << nanoseconds_per_judgement([a, b] { return a + b; }) << '\n'
            << "  two ints (8 bytes, one word):      " << nanoseconds_per_judgement([i, j] { return i + j; }) << '\n'
            << "  two doubles (16 bytes):            " << nanoseconds_per_judgement([x, y] { return x + y; }) << '\n'
            << "  two int64 of a million (16 bytes): "
            << nanoseconds_per_judgement([big_a, big_b] { return big_a + big_b; }) << '\n'
            << "  function pointer + literal:        "
            << nanoseconds_per_judgement([fn, literal] { return fn(literal[0]); }) << '\n'
            << "  [&] (one stack reference):         " << nanoseconds_per_judgement([&] { return k; }) << '\n';
}
