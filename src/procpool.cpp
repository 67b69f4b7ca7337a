// The source file of procpool::compiled: procpool's non-template core, compiled once for programs
// built with PROCPOOL_SEPARATE_COMPILATION (see <procpool/src.hpp>).
#include <procpool/src.hpp>
