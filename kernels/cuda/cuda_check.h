// CUDA and cuBLASLt error handling: conversion of an error code to an absl::Status naming the failed call,
// file and line, and the macros built on it. RETURN_IF_CUDA_ERROR is for code that returns a Status; the
// backend's step path records failures instead (CudaBackend, Backend's conventions). CUDA_CHECK aborts: for
// tests and benchmarks only.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include "absl/status/status.h"

namespace tessera {

// INTERNAL, RESOURCE_EXHAUSTED (out of memory) or UNAVAILABLE (no device / driver), with "<expr> failed at
// file:line: <CUDA's error string>".
absl::Status CudaStatus(cudaError_t error, const char* expr, const char* file, int line);
absl::Status CublasStatus(cublasStatus_t status, const char* expr, const char* file, int line);

// Aborts with the same message.
[[noreturn]] void CudaFatal(const absl::Status& status);

}  // namespace tessera

#define RETURN_IF_CUDA_ERROR(expr)                                                  \
  do {                                                                              \
    const cudaError_t tessera_cuda_error_ = (expr);                                 \
    if (tessera_cuda_error_ != cudaSuccess) {                                       \
      return ::tessera::CudaStatus(tessera_cuda_error_, #expr, __FILE__, __LINE__); \
    }                                                                               \
  } while (0)

#define RETURN_IF_CUBLAS_ERROR(expr)                                                     \
  do {                                                                                   \
    const cublasStatus_t tessera_cublas_status_ = (expr);                                \
    if (tessera_cublas_status_ != CUBLAS_STATUS_SUCCESS) {                               \
      return ::tessera::CublasStatus(tessera_cublas_status_, #expr, __FILE__, __LINE__); \
    }                                                                                    \
  } while (0)

#define CUDA_CHECK(expr)                                                                           \
  do {                                                                                             \
    const cudaError_t tessera_cuda_error_ = (expr);                                                \
    if (tessera_cuda_error_ != cudaSuccess) {                                                      \
      ::tessera::CudaFatal(::tessera::CudaStatus(tessera_cuda_error_, #expr, __FILE__, __LINE__)); \
    }                                                                                              \
  } while (0)

#define CUBLAS_CHECK(expr)                                                                              \
  do {                                                                                                  \
    const cublasStatus_t tessera_cublas_status_ = (expr);                                               \
    if (tessera_cublas_status_ != CUBLAS_STATUS_SUCCESS) {                                              \
      ::tessera::CudaFatal(::tessera::CublasStatus(tessera_cublas_status_, #expr, __FILE__, __LINE__)); \
    }                                                                                                   \
  } while (0)
