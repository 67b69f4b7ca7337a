# procpool::mpi: the same Pool across the machines of a cluster (include/procpool/mpi.hpp), on MPI.
#
# PROCPOOL_WITH_MPI is on by default when an MPI implementation is found (Debian: libopenmpi-dev and
# openmpi-bin); procpool::mpi is then an INTERFACE target linking procpool::procpool and MPI
# (procpool uses only MPI's C API). find_package(procpool COMPONENTS mpi) finds it installed.
include_guard(GLOBAL)

# MPI's C API through the C++ compiler (procpool is a C++ project): MPI::MPI_CXX without MPI's
# deprecated C++ bindings, which are never used (and are not warnings-clean).
set(MPI_CXX_SKIP_MPICXX ON CACHE BOOL "procpool uses MPI's C API only")
find_package(MPI QUIET COMPONENTS CXX)
option(PROCPOOL_WITH_MPI "Build procpool::mpi (include/procpool/mpi.hpp), its tests and examples" ${MPI_CXX_FOUND})

if(PROCPOOL_WITH_MPI)
  find_package(MPI REQUIRED COMPONENTS CXX)
  add_library(procpool_mpi INTERFACE)
  add_library(procpool::mpi ALIAS procpool_mpi)
  set_target_properties(procpool_mpi PROPERTIES EXPORT_NAME mpi)
  # dl_iterate_phdr and dladdr (code addresses relative to their module) come from libdl on old glibc.
  target_link_libraries(procpool_mpi INTERFACE procpool::procpool MPI::MPI_CXX ${CMAKE_DL_LIBS})
  # Also for a consumer whose MPI::MPI_CXX was found without MPI_CXX_SKIP_MPICXX.
  target_compile_definitions(procpool_mpi INTERFACE OMPI_SKIP_MPICXX=1 MPICH_SKIP_MPICXX=1)
  if(PROCPOOL_INSTALL)
    include(GNUInstallDirs)
    # Its own export set: procpool-config.cmake loads it (and looks for MPI) only for COMPONENTS mpi.
    install(TARGETS procpool_mpi EXPORT procpool-mpi-targets)
    install(EXPORT procpool-mpi-targets NAMESPACE procpool::
      DESTINATION "${CMAKE_INSTALL_DATADIR}/cmake/procpool")
  endif()
endif()

# procpool::mpi's benchmark (benchmarks/compare_mpi runs it beside mpi4py.futures and the local pool),
# and the floor it is compared with: the same paths in raw MPI, without procpool (built with it).
if(PROCPOOL_WITH_MPI AND PROCPOOL_BUILD_BENCHMARKS)
  add_executable(procpool_mpi_bench "${CMAKE_CURRENT_LIST_DIR}/../benchmarks/mpi_bench.cpp")
  add_executable(procpool_mpi_floor "${CMAKE_CURRENT_LIST_DIR}/../benchmarks/mpi_floor.cpp")
  target_link_libraries(procpool_mpi_bench PRIVATE procpool::mpi procpool_project_options)
  target_link_libraries(procpool_mpi_floor PRIVATE MPI::MPI_CXX procpool_project_options)
  target_compile_definitions(procpool_mpi_floor PRIVATE OMPI_SKIP_MPICXX=1 MPICH_SKIP_MPICXX=1)
  add_dependencies(procpool_mpi_bench procpool_mpi_floor)
  foreach(target procpool_mpi_bench procpool_mpi_floor)
    set_target_properties(${target} PROPERTIES RUNTIME_OUTPUT_DIRECTORY "${PROJECT_BINARY_DIR}/benchmarks")
    if(NOT CMAKE_BUILD_TYPE MATCHES "^(Release|RelWithDebInfo)$")
      target_compile_options(${target} PRIVATE -O2)
    endif()
  endforeach()
endif()
