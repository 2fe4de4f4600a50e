# TESSERA_SANITIZE=thread builds our code with ThreadSanitizer (third-party libraries stay uninstrumented);
# `scripts/test.sh --tsan` uses it in build-tsan/. Empty (the default) builds without.
# Debian's abseil is not built with TSan, so absl::Mutex and friends are invisible to it: every target also links
# tessera_tsan_absl (cmake/tsan/absl_sync_annotations.cc), a shared library that interposes them with TSan's
# annotations. Included after find_package(absl) and before the project's targets.
set(TESSERA_SANITIZE "" CACHE STRING "Build with a sanitizer: empty (none) or thread")
set_property(CACHE TESSERA_SANITIZE PROPERTY STRINGS "" thread)

if(TESSERA_SANITIZE STREQUAL "thread")
  if(TESSERA_HAVE_CUDA)
    message(FATAL_ERROR "TESSERA_SANITIZE=thread needs TESSERA_CUDA=OFF (nvcc code is not instrumented)")
  endif()
  # -Wno-tsan: gcc warns that TSan does not model atomic_thread_fence, which Boost.Asio's handler dispatch uses
  # (std_fenced_block); with -Werror that warning would stop the build. Asio's handoffs also go through mutexes
  # and atomics that TSan does see.
  add_compile_options(-fsanitize=thread -fno-omit-frame-pointer -Wno-tsan)
  add_link_options(-fsanitize=thread)

  # The mangled form of abseil's inline namespace (absl::debian3 on Debian 12 is "7debian3").
  find_file(TESSERA_ABSL_OPTIONS_H absl/base/options.h REQUIRED)
  file(STRINGS ${TESSERA_ABSL_OPTIONS_H} ns_line REGEX "^#define ABSL_OPTION_INLINE_NAMESPACE_NAME ")
  string(REGEX REPLACE "^#define ABSL_OPTION_INLINE_NAMESPACE_NAME +([A-Za-z0-9_]+).*" "\\1" ns "${ns_line}")
  string(LENGTH "${ns}" ns_length)

  add_library(tessera_tsan_absl SHARED ${CMAKE_CURRENT_LIST_DIR}/tsan/absl_sync_annotations.cc)
  target_compile_definitions(tessera_tsan_absl PRIVATE TESSERA_ABSL_NAMESPACE="${ns_length}${ns}")
  target_link_libraries(tessera_tsan_absl PRIVATE absl::synchronization absl::time ${CMAKE_DL_LIBS})
  target_link_options(tessera_tsan_absl PRIVATE LINKER:--no-undefined)
  tessera_warnings(tessera_tsan_absl)
  # First in every target's link line, so that executables list it before libabsl_synchronization (checked at
  # start-up by the library itself).
  link_libraries(tessera_tsan_absl)
  message(STATUS "Tessera: ThreadSanitizer build (abseil synchronization annotated by tessera_tsan_absl)")
elseif(NOT TESSERA_SANITIZE STREQUAL "")
  message(FATAL_ERROR "TESSERA_SANITIZE must be empty or 'thread', not '${TESSERA_SANITIZE}'")
endif()
