// procpool: the library's non-template core, compiled once. For programs built with
// PROCPOOL_SEPARATE_COMPILATION defined in every translation unit: include this header in exactly
// one source file of the program (the CMake target procpool::compiled does so in its own source
// file). Every other file includes the usual headers, which then only declare the core.
#pragma once

#ifndef PROCPOOL_SEPARATE_COMPILATION
#error \
    "<procpool/src.hpp> is for separate compilation: define PROCPOOL_SEPARATE_COMPILATION in every translation unit of the program (or link procpool::compiled), or do not include it (header-only mode needs no source file)"
#endif

#include "detail/closure_references_impl.hpp"
#include "detail/pool_core_impl.hpp"
