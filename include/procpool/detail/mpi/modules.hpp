// procpool::detail::mpi: code addresses that mean the same on every rank. Ranks run the same
// executable at different load addresses (ASLR), so an address travels as (the identity of the
// module that holds it, its offset from that module's load bias), and each module is identified by
// its ELF build-id (NT_GNU_BUILD_ID), read from the loaded image itself (dl_iterate_phdr); a module
// linked without a build-id is identified by a hash of its executable segments instead.
#pragma once

#include <elf.h>
#include <link.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <fmt/core.h>

#include "../../error.hpp"

namespace procpool::detail::mpi {

/// One loaded module (the executable or a shared library).
struct Module {
  std::uintptr_t bias = 0;  // dlpi_addr: what its segments' virtual addresses are offset by
  std::vector<std::pair<std::uintptr_t, std::uintptr_t>> ranges;  // its PT_LOAD segments [begin, end)
  std::string id;                                                 // "build-id:<hex>" or "text-hash:<hex>"
  std::string name;                                               // its path ("" for the executable)
};

namespace modules_detail {

inline std::string hex(const unsigned char* p, std::size_t n) {
  std::string s;
  s.reserve(2 * n);
  for (std::size_t i = 0; i < n; ++i) s += fmt::format("{:02x}", p[i]);
  return s;
}

/// The GNU build-id in a PT_NOTE segment, if it holds one.
inline std::optional<std::string> build_id_in_note(const unsigned char* p, std::size_t size) {
  std::size_t at = 0;
  const auto align4 = [](std::size_t n) { return (n + 3) & ~std::size_t{3}; };
  while (at + sizeof(ElfW(Nhdr)) <= size) {
    ElfW(Nhdr) h;
    std::memcpy(&h, p + at, sizeof h);
    const std::size_t name_at = at + sizeof h;
    const std::size_t desc_at = name_at + align4(h.n_namesz);
    const std::size_t next = desc_at + align4(h.n_descsz);
    if (next > size || desc_at > size) break;
    if (h.n_type == NT_GNU_BUILD_ID && h.n_namesz == 4 && std::memcmp(p + name_at, "GNU", 4) == 0 && h.n_descsz > 0)
      return "build-id:" + hex(p + desc_at, h.n_descsz);
    at = next;
  }
  return std::nullopt;
}

inline int collect(dl_phdr_info* info, std::size_t /*size*/, void* data) {
  auto& out = *static_cast<std::vector<Module>*>(data);
  Module m;
  m.bias = info->dlpi_addr;
  m.name = info->dlpi_name != nullptr ? info->dlpi_name : "";
  std::optional<std::string> id;
  std::uint64_t hash = 1469598103934665603ULL;  // FNV-1a over the executable segments, if no build-id
  for (ElfW(Half) i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    const std::uintptr_t begin = info->dlpi_addr + ph.p_vaddr;
    if (ph.p_type == PT_LOAD) {
      m.ranges.emplace_back(begin, begin + ph.p_memsz);
    } else if (ph.p_type == PT_NOTE && !id) {
      id = build_id_in_note(reinterpret_cast<const unsigned char*>(begin), ph.p_memsz);
    }
  }
  if (!id) {
    for (ElfW(Half) i = 0; i < info->dlpi_phnum; ++i) {
      const ElfW(Phdr)& ph = info->dlpi_phdr[i];
      if (ph.p_type != PT_LOAD || (ph.p_flags & PF_X) == 0 || (ph.p_flags & PF_W) != 0) continue;
      const auto* p = reinterpret_cast<const unsigned char*>(info->dlpi_addr + ph.p_vaddr);
      for (std::size_t k = 0; k < ph.p_filesz; ++k) hash = (hash ^ p[k]) * 1099511628211ULL;
    }
    id = fmt::format("text-hash:{:016x}", hash);
  }
  m.id = *id;
  if (!m.ranges.empty()) out.push_back(std::move(m));
  return 0;
}

}  // namespace modules_detail

/// The modules loaded now, the executable first.
[[nodiscard]] inline std::vector<Module> loaded_modules() {
  std::vector<Module> out;
  ::dl_iterate_phdr(&modules_detail::collect, &out);
  return out;
}

/// The identity of the running executable: what every rank compares with rank 0's.
[[nodiscard]] inline std::string executable_id() {
  const std::vector<Module> mods = loaded_modules();
  return mods.empty() ? std::string("unknown") : mods.front().id;
}

/// A code address as it travels: its module's identity and its offset from the module's bias.
struct RelativeAddress {
  std::string module;
  std::uint64_t offset = 0;

  template <class Archive>
  void serialize(Archive& ar) {
    ar(module, offset);
  }
};

/// Translates code addresses to and from RelativeAddress, with the module table cached (and read
/// again when an address or module is not found: a library loaded since).
class AddressMap {
 public:
  /// The process's map.
  static AddressMap& instance() {
    static AddressMap map;
    return map;
  }

  /// `address` relative to its module; throws procpool::Error if no loaded module holds it.
  RelativeAddress relative(std::uintptr_t address) {
    std::lock_guard lock(mu_);
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (attempt == 1 || modules_.empty()) modules_ = loaded_modules();
      for (const Module& m : modules_)
        for (const auto& [begin, end] : m.ranges)
          if (address >= begin && address < end) return {m.id, address - m.bias};
    }
    throw Error(fmt::format("procpool::mpi: the code address {:#x} is in no loaded module", address));
  }

  /// The local address of `r`; throws procpool::Error naming the module if it is not loaded here.
  std::uintptr_t absolute(const RelativeAddress& r) {
    std::lock_guard lock(mu_);
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (attempt == 1 || modules_.empty()) modules_ = loaded_modules();
      for (const Module& m : modules_)
        if (m.id == r.module) return m.bias + r.offset;
    }
    throw Error(fmt::format("procpool::mpi: this rank has no module {} (rank 0 runs code from it): every rank must "
                            "run the same executable with the same libraries",
                            r.module));
  }

  /// Whether `address` lies inside a loaded module (code, constants or static data).
  bool in_a_module(std::uintptr_t address) {
    std::lock_guard lock(mu_);
    if (modules_.empty()) modules_ = loaded_modules();
    for (const Module& m : modules_)
      for (const auto& [begin, end] : m.ranges)
        if (address >= begin && address < end) return true;
    return false;
  }

 private:
  std::mutex mu_;
  std::vector<Module> modules_;
};

}  // namespace procpool::detail::mpi
