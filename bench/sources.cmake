# Kernel benchmarks: the roofline ceilings library and kernels_bench (Google Benchmark).
add_library(tessera_roofline ${CMAKE_CURRENT_SOURCE_DIR}/roofline.cc)
target_link_libraries(tessera_roofline PUBLIC tessera_kernels)
tessera_warnings(tessera_roofline)
# GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), which -Wuninitialized flags once inlined.
set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/roofline.cc PROPERTIES COMPILE_OPTIONS
  "-Wno-uninitialized;-Wno-maybe-uninitialized")

add_executable(kernels_bench ${CMAKE_CURRENT_SOURCE_DIR}/kernels_bench.cc)
target_link_libraries(kernels_bench PRIVATE tessera_roofline tessera_kernels benchmark::benchmark)
tessera_warnings(kernels_bench)

add_executable(ceilings ${CMAKE_CURRENT_SOURCE_DIR}/ceilings_main.cc)
target_link_libraries(ceilings PRIVATE tessera_roofline)
tessera_warnings(ceilings)
