# GPU benchmarks, included by bench/CMakeLists.txt: the ceilings library (tessera_gpu_roofline: copy bandwidth
# and cuBLASLt bf16 GEMM rate) and gpu_bench (llama3-8b decode and prefill on the CUDA backend against them).
# Built only with the CUDA backend (TESSERA_HAVE_CUDA: TESSERA_CUDA=ON, or AUTO where nvcc is found); run by
# scripts/gpu-check.sh.
if(TARGET tessera_worker AND TESSERA_HAVE_CUDA)

  add_library(tessera_gpu_roofline ${CMAKE_CURRENT_LIST_DIR}/gpu_roofline.cu)
  target_link_libraries(tessera_gpu_roofline PUBLIC absl::status absl::statusor absl::strings
                                             PRIVATE CUDA::cudart CUDA::cublasLt)
  # Warnings are errors here too: host code through nvcc's host compiler, device code through nvcc itself.
  target_compile_options(tessera_gpu_roofline PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Wno-unused-parameter --Werror=all-warnings>)

  add_executable(gpu_bench ${CMAKE_CURRENT_LIST_DIR}/gpu_bench.cc)
  target_link_libraries(gpu_bench PRIVATE tessera_gpu_roofline tessera_worker tessera_cuda nlohmann_json::nlohmann_json)
  tessera_warnings(gpu_bench)
endif()
