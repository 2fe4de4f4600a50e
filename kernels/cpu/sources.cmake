# CPU backend sources, included by kernels/CMakeLists.txt. ISA-specific files get their own -m flags; the
# rest is built for the baseline ISA and picks kernels at run time (CPUID).
find_package(OpenMP REQUIRED COMPONENTS CXX)  # Debian's libdnnl runs on libgomp; we set its team size
set(TESSERA_CPU_DIR ${CMAKE_CURRENT_SOURCE_DIR}/cpu)
target_sources(tessera_kernels PRIVATE
  ${TESSERA_CPU_DIR}/attention.cc
  ${TESSERA_CPU_DIR}/attention_avx512.cc
  ${TESSERA_CPU_DIR}/cpu_backend.cc
  ${TESSERA_CPU_DIR}/gemv_avx2.cc
  ${TESSERA_CPU_DIR}/gemv_avx512.cc
  ${TESSERA_CPU_DIR}/gemv_quant_avx2.cc
  ${TESSERA_CPU_DIR}/gemv_quant_avx512.cc
  ${TESSERA_CPU_DIR}/gemv_quant_int8_avx512.cc
  ${TESSERA_CPU_DIR}/gemv_quant_int8_scalar.cc
  ${TESSERA_CPU_DIR}/gemv_quant_scalar.cc
  ${TESSERA_CPU_DIR}/gemv_scalar.cc
  ${TESSERA_CPU_DIR}/linear.cc
  ${TESSERA_CPU_DIR}/onednn_matmul.cc
  ${TESSERA_CPU_DIR}/rope.cc
  ${TESSERA_CPU_DIR}/thread_pool.cc)
set_source_files_properties(${TESSERA_CPU_DIR}/gemv_avx2.cc ${TESSERA_CPU_DIR}/gemv_quant_avx2.cc
  PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma;-mf16c")
set_source_files_properties(${TESSERA_CPU_DIR}/gemv_avx512.cc ${TESSERA_CPU_DIR}/gemv_quant_avx512.cc
  ${TESSERA_CPU_DIR}/attention_avx512.cc
  PROPERTIES COMPILE_OPTIONS "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mfma;-mprefer-vector-width=512")
set_source_files_properties(${TESSERA_CPU_DIR}/gemv_quant_int8_avx512.cc
  PROPERTIES COMPILE_OPTIONS "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx512vnni;-mfma")
# The row dequantizers must round Q4_1's q * d before adding m (bit-identical to the GGUF reader's
# DequantizeRow); no FMA contraction.
set_source_files_properties(${TESSERA_CPU_DIR}/gemv_quant_scalar.cc
  PROPERTIES COMPILE_OPTIONS "-ffp-contract=off")
target_link_libraries(tessera_kernels PRIVATE DNNL::dnnl OpenMP::OpenMP_CXX)
