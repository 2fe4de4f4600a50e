# libFuzzer targets. The main build uses GCC, which has no libFuzzer, so fuzz targets are compiled by clang++
# through custom commands (-O1, AddressSanitizer and UndefinedBehaviorSanitizer) from only the sources each
# one needs, and registered as ctests that fuzz for a bounded time (label `fuzz`). Include it where
# TESSERA_FUZZ is on; TESSERA_CLANGXX is empty when there is no clang++ (then tessera_add_fuzzer does
# nothing).
find_program(TESSERA_CLANGXX NAMES clang++ clang++-14)
if(NOT TESSERA_CLANGXX)
  message(STATUS "TESSERA_FUZZ is on but clang++ was not found: no libFuzzer targets")
endif()

# _tessera_fuzz_object(SOURCE OUT_VAR DEPENDS...): the object of SOURCE (an absolute path), compiled by clang++
# (coverage for libFuzzer, ASan, UBSan) once per directory however many targets there use it; header
# dependencies come from the depfile.
function(_tessera_fuzz_object source out_var)
  # Every fuzz object: our code warns as the main build does (-Werror); generated code (.pb.cc) is not ours.
  # The generated protobuf headers come in as system headers. TESSERA_SOURCE_DIR lets a target find its data.
  set(flags -std=c++20 -g -O1 -fno-sanitize-recover=undefined -I${CMAKE_SOURCE_DIR}
      -isystem ${CMAKE_BINARY_DIR}/proto -DTESSERA_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
  set(command ${TESSERA_CLANGXX} -fsanitize=fuzzer-no-link,address,undefined)
  set(suffix .o)
  cmake_path(IS_PREFIX CMAKE_BINARY_DIR "${source}" NORMALIZE generated)
  if(generated)
    file(RELATIVE_PATH rel ${CMAKE_BINARY_DIR} ${source})
    set(rel gen/${rel})
    set(warnings -w)
  else()
    file(RELATIVE_PATH rel ${CMAKE_SOURCE_DIR} ${source})
    set(warnings -Wall -Wextra -Werror -Wno-unused-parameter)
  endif()
  set(obj ${CMAKE_CURRENT_BINARY_DIR}/fuzz/obj/${rel}${suffix})
  set(${out_var} ${obj} PARENT_SCOPE)
  get_property(known DIRECTORY PROPERTY TESSERA_FUZZ_OBJECTS)
  if(obj IN_LIST known)
    return()
  endif()
  set_property(DIRECTORY APPEND PROPERTY TESSERA_FUZZ_OBJECTS ${obj})
  cmake_path(GET obj PARENT_PATH obj_dir)
  file(MAKE_DIRECTORY ${obj_dir})
  file(RELATIVE_PATH shown ${CMAKE_BINARY_DIR} ${obj})
  add_custom_command(
    OUTPUT ${obj}
    COMMAND ${CCACHE_PROGRAM} ${command} ${flags} ${warnings} -MD -MF ${obj}.d
            -c ${source} -o ${obj}
    DEPENDS ${source} ${ARGN}
    DEPFILE ${obj}.d
    COMMENT "clang++ (fuzz) ${shown}"
    VERBATIM)
endfunction()

# tessera_add_fuzzer(NAME SOURCES src... [GENERATED src...] [LIBS -lfoo...]
#                    [DEPENDS target|file...] [CORPUS dir] [DICT file] [MAX_LEN n])
# Builds the libFuzzer binary ${CMAKE_CURRENT_BINARY_DIR}/fuzz/NAME (target NAME, part of `all`) from SOURCES
# (our code, paths relative to the current source directory or absolute) and GENERATED (absolute paths in the
# build tree, e.g. .pb.cc files; list their generating target in DEPENDS), linked with LIBS (linker
# arguments after the objects). With CORPUS (the checked-in seeds), adds the ctest NAME: 5 s of fuzzing that
# writes new inputs into a corpus directory of the build tree (the first corpus argument) and reads the seeds
# from CORPUS, with DICT as -dict and MAX_LEN as -max_len when given.
function(tessera_add_fuzzer name)
  cmake_parse_arguments(ARG "" "CORPUS;DICT;MAX_LEN" "SOURCES;GENERATED;LIBS;DEPENDS" ${ARGN})
  if(NOT TESSERA_CLANGXX)
    return()
  endif()
  set(objects)
  foreach(source ${ARG_SOURCES} ${ARG_GENERATED})
    cmake_path(ABSOLUTE_PATH source BASE_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR} NORMALIZE)
    _tessera_fuzz_object(${source} obj ${ARG_DEPENDS})
    list(APPEND objects ${obj})
  endforeach()
  set(bin ${CMAKE_CURRENT_BINARY_DIR}/fuzz/${name})
  add_custom_command(
    OUTPUT ${bin}
    COMMAND ${TESSERA_CLANGXX} -fsanitize=fuzzer,address,undefined ${objects} -o ${bin} ${ARG_LIBS}
    DEPENDS ${objects}
    COMMENT "Linking libFuzzer target ${name} with clang++"
    VERBATIM)
  add_custom_target(${name} ALL DEPENDS ${bin})

  if(ARG_CORPUS)
    set(corpus ${CMAKE_CURRENT_BINARY_DIR}/fuzz/${name}_corpus)
    file(MAKE_DIRECTORY ${corpus})
    set(options -max_total_time=5 -rss_limit_mb=2048)
    if(ARG_MAX_LEN)
      list(APPEND options -max_len=${ARG_MAX_LEN})
    endif()
    if(ARG_DICT)
      cmake_path(ABSOLUTE_PATH ARG_DICT BASE_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR})
      list(APPEND options -dict=${ARG_DICT})
    endif()
    cmake_path(ABSOLUTE_PATH ARG_CORPUS BASE_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR})
    add_test(NAME ${name} COMMAND ${bin} ${options} ${corpus} ${ARG_CORPUS})
    set_tests_properties(${name} PROPERTIES LABELS fuzz TIMEOUT 120)
  endif()
endfunction()
