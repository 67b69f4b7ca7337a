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

# pkg-config: procpool.pc (the headers: arch-independent, so under the data directory) and, with
# procpool::compiled, procpool-compiled.pc (the archive: under the library directory). Their prefix
# is found relative to the .pc file (${pcfiledir}), so an install moved elsewhere, or installed
# with cmake --install --prefix, still works; absolute install directories are written as they are.
function(procpool_pc_dir out dir)
  if(IS_ABSOLUTE "${dir}")
    set(${out} "${dir}" PARENT_SCOPE)
  else()
    set(${out} "\${prefix}/${dir}" PARENT_SCOPE)
  endif()
endfunction()
function(procpool_install_pc template destination)
  if(IS_ABSOLUTE "${destination}")
    set(PROCPOOL_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
  else()
    file(RELATIVE_PATH up "/procpool-prefix/${destination}" "/procpool-prefix")
    string(REGEX REPLACE "/$" "" up "${up}")
    set(PROCPOOL_PC_PREFIX "\${pcfiledir}/${up}")
  endif()
  procpool_pc_dir(PROCPOOL_PC_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}")
  procpool_pc_dir(PROCPOOL_PC_LIBDIR "${CMAKE_INSTALL_LIBDIR}")
  get_filename_component(name "${template}" NAME_WLE)  # procpool.pc.in -> procpool.pc
  configure_file("${CMAKE_CURRENT_SOURCE_DIR}/cmake/${template}" "${CMAKE_CURRENT_BINARY_DIR}/${name}" @ONLY)
  install(FILES "${CMAKE_CURRENT_BINARY_DIR}/${name}" DESTINATION "${destination}")
endfunction()
procpool_install_pc(procpool.pc.in "${CMAKE_INSTALL_DATADIR}/pkgconfig")
if(PROCPOOL_BUILD_COMPILED)
  procpool_install_pc(procpool-compiled.pc.in "${CMAKE_INSTALL_LIBDIR}/pkgconfig")
endif()
