# Writes the CMake package files of a tollgate prefix, in script mode:
#   cmake -DPREFIX=<staged prefix> -DVERSION=x.y.z -DNATIVE_LIBS="gcc_s;util;..."
#         -DSHARED_FILE=libtollgate.so.x.y.z -DSONAME=libtollgate.so.x.y -P configure.cmake
# (scripts/package.sh runs it). Uses CMake's own helpers, so the version check and the
# relocatable prefix computation are CMake's.
include(CMakePackageConfigHelpers)

foreach(var PREFIX VERSION NATIVE_LIBS SHARED_FILE SONAME)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "configure.cmake: -D${var}=... is required")
  endif()
endforeach()

set(CMAKE_NATIVE_LIBS "${NATIVE_LIBS}")
string(REPLACE ";" " " CMAKE_NATIVE_LIBS "${CMAKE_NATIVE_LIBS}")
set(dest "lib/cmake/tollgate")
configure_package_config_file(
  "${CMAKE_CURRENT_LIST_DIR}/tollgateConfig.cmake.in"
  "${PREFIX}/${dest}/tollgateConfig.cmake"
  INSTALL_DESTINATION "${dest}"
  INSTALL_PREFIX "${PREFIX}")
# 0.x: a minor release may change the ABI, so only the same major.minor is compatible.
write_basic_package_version_file(
  "${PREFIX}/${dest}/tollgateConfigVersion.cmake"
  VERSION "${VERSION}"
  COMPATIBILITY SameMinorVersion)
