# Builds tests/consumer against procpool in one MODE and runs it (ctest drives this script):
#   find_package      install procpool into a private prefix, then find_package(procpool) from there
#   add_subdirectory  a copy in the consumer's tree; nothing of procpool may leak into the consumer
#   fetchcontent      FetchContent_Declare(SOURCE_DIR) + FetchContent_MakeAvailable; same checks
#   pkg-config        install as for find_package, then g++ $(pkg-config --cflags --libs procpool),
#                     without CMake; prints "SKIP: pkg-config is not installed" when it is missing.
#                     With INSTALLED_PREFIX (the find_package test's prefix, a ctest fixture), it
#                     uses that install instead of making its own.
if(NOT DEFINED INSTALLED_PREFIX AND DEFINED ENV{PROCPOOL_INSTALLED_PREFIX})
  set(INSTALLED_PREFIX "$ENV{PROCPOOL_INSTALLED_PREFIX}")
endif()
file(REMOVE_RECURSE "${WORK_DIR}")
set(consumer_args -DMODE=${MODE} -DPROCPOOL_SOURCE_DIR=${PROCPOOL_SOURCE_DIR} -DCMAKE_CXX_COMPILER=${CXX_COMPILER})

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "failed: ${ARGN}\n${out}")
  endif()
endfunction()

if(MODE STREQUAL "pkg-config")
  find_program(PKG_CONFIG pkg-config)
  if(NOT PKG_CONFIG)
    message(STATUS "SKIP: pkg-config is not installed (apt-get install pkg-config)")
    return()
  endif()
endif()

if(MODE STREQUAL "pkg-config" AND INSTALLED_PREFIX)
  if(NOT EXISTS "${INSTALLED_PREFIX}/include/procpool/procpool.hpp")
    message(FATAL_ERROR "no procpool installed in ${INSTALLED_PREFIX}")
  endif()
  set(prefix "${INSTALLED_PREFIX}")
elseif(MODE STREQUAL "find_package" OR MODE STREQUAL "pkg-config")
  # Install procpool alone (no tests, no examples) into a private prefix, then consume it.
  run(${CMAKE_COMMAND} -S ${PROCPOOL_SOURCE_DIR} -B ${WORK_DIR}/procpool-build
      -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DPROCPOOL_BUILD_TESTS=OFF -DPROCPOOL_BUILD_EXAMPLES=OFF
      -DCMAKE_INSTALL_PREFIX=${WORK_DIR}/prefix)
  run(${CMAKE_COMMAND} --build ${WORK_DIR}/procpool-build)  # procpool::compiled's archive
  run(${CMAKE_COMMAND} --install ${WORK_DIR}/procpool-build)
  if(NOT EXISTS ${WORK_DIR}/prefix/include/procpool/procpool.hpp)
    message(FATAL_ERROR "the install did not place include/procpool/procpool.hpp")
  endif()
  file(GLOB_RECURSE archive "${WORK_DIR}/prefix/*/libprocpool.a")
  if(NOT archive)
    message(FATAL_ERROR "the install did not place procpool::compiled's libprocpool.a")
  endif()
  list(APPEND consumer_args -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix)
  set(prefix "${WORK_DIR}/prefix")
endif()

if(MODE STREQUAL "pkg-config")
  # The way a user without CMake builds: the .pc files are found through PKG_CONFIG_PATH (procpool.pc
  # is arch-independent, under share/; procpool-compiled.pc sits by its archive, under lib/).
  file(GLOB_RECURSE pc_files "${prefix}/*.pc")
  set(pc_dirs "")
  foreach(pc IN LISTS pc_files)
    get_filename_component(dir "${pc}" DIRECTORY)
    list(APPEND pc_dirs "${dir}")
  endforeach()
  list(REMOVE_DUPLICATES pc_dirs)
  list(JOIN pc_dirs ":" pkg_config_path)
  set(env ${CMAKE_COMMAND} -E env "PKG_CONFIG_PATH=${pkg_config_path}")
  run(${env} ${PKG_CONFIG} --validate procpool)
  run(${env} ${PKG_CONFIG} --validate procpool-compiled)
  execute_process(COMMAND ${env} ${PKG_CONFIG} --modversion procpool OUTPUT_VARIABLE version
    OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT version STREQUAL "${PROCPOOL_VERSION}")
    message(FATAL_ERROR "pkg-config --modversion procpool says '${version}', expected '${PROCPOOL_VERSION}'")
  endif()
  file(MAKE_DIRECTORY ${WORK_DIR}/bin)
  # -std=c++20 is the consumer's to give: procpool.pc has no -std= (see cmake/procpool.pc.in).
  run(${env} sh -c "\"$0\" -std=c++20 \"$1\" -o \"$2\" $(${PKG_CONFIG} --cflags --libs procpool)"
      ${CXX_COMPILER} ${CMAKE_CURRENT_LIST_DIR}/main.cpp ${WORK_DIR}/bin/consumer)
  run(${env} sh -c "\"$0\" -std=c++20 \"$1\" -o \"$2\" $(${PKG_CONFIG} --cflags --libs procpool-compiled)"
      ${CXX_COMPILER} ${CMAKE_CURRENT_LIST_DIR}/compiled.cpp ${WORK_DIR}/bin/consumer_compiled)
  run(${WORK_DIR}/bin/consumer)
  run(${WORK_DIR}/bin/consumer_compiled)
  message(STATUS "consumer and consumer_compiled built with pkg-config and ran")
  return()
endif()

run(${CMAKE_COMMAND} -S ${CMAKE_CURRENT_LIST_DIR} -B ${WORK_DIR}/consumer-build ${consumer_args})
run(${CMAKE_COMMAND} --build ${WORK_DIR}/consumer-build)
run(${WORK_DIR}/consumer-build/consumer)
run(${WORK_DIR}/consumer-build/consumer_compiled)

if(NOT MODE STREQUAL "find_package")
  # procpool embedded installs nothing: the consumer has no install rules of its own, so its install
  # tree must stay empty.
  run(${CMAKE_COMMAND} --install ${WORK_DIR}/consumer-build --prefix ${WORK_DIR}/consumer-prefix)
  file(GLOB_RECURSE installed LIST_DIRECTORIES false "${WORK_DIR}/consumer-prefix/*")
  if(installed)
    list(JOIN installed "\n  " installed)
    message(FATAL_ERROR "procpool embedded through ${MODE} installed files:\n  ${installed}")
  endif()
endif()
message(STATUS "consumer and consumer_compiled built and ran through ${MODE}")
