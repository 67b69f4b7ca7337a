# procpool::compiled: the separate-compilation mode (see include/procpool/src.hpp). A static
# library whose one source file compiles the non-template core; linking it defines
# PROCPOOL_SEPARATE_COMPILATION for the user's files, whose headers then only declare that core.
include_guard(GLOBAL)

if(PROCPOOL_BUILD_COMPILED)
  add_library(procpool_compiled STATIC src/procpool.cpp)
else()
  # Defined all the same, so that an embedding project can link it: built only if linked.
  add_library(procpool_compiled STATIC EXCLUDE_FROM_ALL src/procpool.cpp)
endif()
add_library(procpool::compiled ALIAS procpool_compiled)
set_target_properties(procpool_compiled PROPERTIES EXPORT_NAME compiled OUTPUT_NAME procpool)
target_compile_definitions(procpool_compiled PUBLIC PROCPOOL_SEPARATE_COMPILATION)
target_link_libraries(procpool_compiled PUBLIC procpool::procpool)
if(TARGET procpool_warnings)
  # procpool's own warnings and sanitizers when procpool builds its own targets, never exported
  # (an embedding project has neither helper target).
  target_link_libraries(procpool_compiled
    PRIVATE $<BUILD_INTERFACE:procpool_warnings> $<BUILD_INTERFACE:procpool_sanitizers>)
endif()
