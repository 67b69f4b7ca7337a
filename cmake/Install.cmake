# Install rules: headers, the exported target, and config + version files for find_package(procpool).
include_guard(GLOBAL)
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(PROCPOOL_CMAKE_DIR "${CMAKE_INSTALL_DATADIR}/cmake/procpool")

install(DIRECTORY include/procpool DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
install(TARGETS procpool EXPORT procpool-targets)
if(PROCPOOL_BUILD_COMPILED)
  install(TARGETS procpool_compiled EXPORT procpool-targets ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}")
  set(PROCPOOL_ARCH_INDEPENDENT "")
else()
  # Headers only: nothing installed depends on the compiler's architecture.
  set(PROCPOOL_ARCH_INDEPENDENT ARCH_INDEPENDENT)
endif()
install(EXPORT procpool-targets NAMESPACE procpool:: DESTINATION "${PROCPOOL_CMAKE_DIR}")

configure_package_config_file(
  "${CMAKE_CURRENT_SOURCE_DIR}/cmake/procpool-config.cmake.in"
  "${CMAKE_CURRENT_BINARY_DIR}/procpool-config.cmake"
  INSTALL_DESTINATION "${PROCPOOL_CMAKE_DIR}")
# procpool::compiled's archive ties the package to an architecture; the headers alone do not.
write_basic_package_version_file(
  "${CMAKE_CURRENT_BINARY_DIR}/procpool-config-version.cmake"
  COMPATIBILITY SameMinorVersion ${PROCPOOL_ARCH_INDEPENDENT})
install(FILES
  "${CMAKE_CURRENT_BINARY_DIR}/procpool-config.cmake"
  "${CMAKE_CURRENT_BINARY_DIR}/procpool-config-version.cmake"
  DESTINATION "${PROCPOOL_CMAKE_DIR}")
install(FILES LICENSE DESTINATION "${CMAKE_INSTALL_DATADIR}/doc/procpool")
