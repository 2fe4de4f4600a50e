# The CUDA backend, included by kernels/CMakeLists.txt when TESSERA_HAVE_CUDA. It is a plugin: the shared
# library tessera_cuda (libtessera_cuda.so, next to the tessera executable) that CreateBackend loads with dlopen
# the first time a CUDA device is asked for. A CPU process therefore never loads the CUDA runtime or cuBLASLt
# (about 150 MB of resident memory per process for nothing), and a CUDA build runs on machines without them.
# Device code (.cu) is an object library of its own so that nvcc gets its own warning flags (tessera_warnings
# speaks g++); host code (the backend, cuBLASLt, RAII wrappers, graphs) is plain C++ with -Werror.
set(TESSERA_CUDA_DIR ${CMAKE_CURRENT_SOURCE_DIR}/cuda)
add_library(tessera_cuda_kernels OBJECT
  ${TESSERA_CUDA_DIR}/attention.cu
  ${TESSERA_CUDA_DIR}/attention_mma.cu
  ${TESSERA_CUDA_DIR}/elementwise.cu
  ${TESSERA_CUDA_DIR}/sampler.cu)
target_compile_options(tessera_cuda_kernels PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Wno-unused-parameter --Werror=all-warnings -lineinfo>)
target_link_libraries(tessera_cuda_kernels PRIVATE CUDA::cudart)

add_library(tessera_cuda SHARED
  ${TESSERA_CUDA_DIR}/attention_plan.cc
  ${TESSERA_CUDA_DIR}/cublaslt_matmul.cc
  ${TESSERA_CUDA_DIR}/cuda_backend.cc
  ${TESSERA_CUDA_DIR}/cuda_graph.cc
  ${TESSERA_CUDA_DIR}/cuda_plugin.cc
  ${TESSERA_CUDA_DIR}/cuda_resources.cc
  $<TARGET_OBJECTS:tessera_cuda_kernels>)
target_link_libraries(tessera_cuda PUBLIC tessera_kernels CUDA::cudart CUDA::cublasLt)
set_target_properties(tessera_cuda PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
tessera_warnings(tessera_cuda)
target_compile_definitions(tessera_kernels PUBLIC TESSERA_HAVE_CUDA=1
                                           PRIVATE TESSERA_CUDA_PLUGIN="$<TARGET_FILE:tessera_cuda>")
