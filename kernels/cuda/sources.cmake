# CUDA backend sources, included by kernels/CMakeLists.txt when TESSERA_HAVE_CUDA. Device code (.cu) is an
# object library of its own so that nvcc gets its own warning flags (tessera_warnings speaks g++); host code
# (.cc: the backend, cuBLASLt, RAII wrappers, graphs) is plain C++ in tessera_kernels with -Werror.
set(TESSERA_CUDA_DIR ${CMAKE_CURRENT_SOURCE_DIR}/cuda)
add_library(tessera_cuda_kernels OBJECT
  ${TESSERA_CUDA_DIR}/attention.cu
  ${TESSERA_CUDA_DIR}/elementwise.cu
  ${TESSERA_CUDA_DIR}/sampler.cu)
target_compile_options(tessera_cuda_kernels PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Wno-unused-parameter --Werror=all-warnings -lineinfo>)
target_link_libraries(tessera_cuda_kernels PRIVATE CUDA::cudart)
target_sources(tessera_kernels PRIVATE
  ${TESSERA_CUDA_DIR}/cublaslt_matmul.cc
  ${TESSERA_CUDA_DIR}/cuda_backend.cc
  ${TESSERA_CUDA_DIR}/cuda_graph.cc
  ${TESSERA_CUDA_DIR}/cuda_resources.cc
  $<TARGET_OBJECTS:tessera_cuda_kernels>)
target_compile_definitions(tessera_kernels PUBLIC TESSERA_HAVE_CUDA=1)
target_link_libraries(tessera_kernels PUBLIC CUDA::cudart CUDA::cublasLt)
