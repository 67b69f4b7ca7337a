# Compiler settings for procpool's own targets (tests, examples, benchmarks): never imposed on users.
include_guard(GLOBAL)

add_library(procpool_project_options INTERFACE)
target_compile_options(procpool_project_options INTERFACE -Wall -Wextra -Wpedantic)
if(PROCPOOL_WARNINGS_AS_ERRORS)
  target_compile_options(procpool_project_options INTERFACE -Werror)
endif()
if(PROCPOOL_SANITIZERS)
  target_compile_options(procpool_project_options INTERFACE
    -fsanitize=${PROCPOOL_SANITIZERS} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  target_link_options(procpool_project_options INTERFACE -fsanitize=${PROCPOOL_SANITIZERS})
endif()
find_package(Threads REQUIRED)
target_link_libraries(procpool_project_options INTERFACE procpool::procpool Threads::Threads)
