// procpool: Python's multiprocessing (Process, Pool.map) for C++20 on Linux.
// The umbrella header: include this one, or the individual headers below.
#pragma once

#include "as_completed.hpp"
#include "codec.hpp"
#include "error.hpp"
#include "format.hpp"  // fmt::formatter<Outcome<T>>: costs nothing measurable, fmt/core.h is in already
#include "outcome.hpp"
#include "pool.hpp"
#include "process.hpp"
#include "version.hpp"
