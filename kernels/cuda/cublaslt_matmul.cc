// cuBLASLt GEMMs (see cublaslt_matmul.h).
//
// Layout: cuBLASLt is column-major. Row-major w[N, K] is the column-major K x N matrix W' (ld K), row-major
// x[M, K] is X' (K x M, ld K) and row-major y[M, N] is Y' (N x M, ld N). Y' = W'^T X', so A = W' with
// op(A) = T, B = X' with op(B) = N, and the GEMM's (m, n, k) are (N, M, K): the "TN" case cuBLASLt serves
// best.
#include "kernels/cuda/cublaslt_matmul.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "core/status_macros.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_resources.h"

namespace tessera {
namespace {

struct DescDeleter {
  void operator()(cublasLtMatmulDescOpaque_t* d) const { cublasLtMatmulDescDestroy(d); }
};
struct LayoutDeleter {
  void operator()(cublasLtMatrixLayoutOpaque_t* l) const { cublasLtMatrixLayoutDestroy(l); }
};
struct PreferenceDeleter {
  void operator()(cublasLtMatmulPreferenceOpaque_t* p) const { cublasLtMatmulPreferenceDestroy(p); }
};
using MatmulDesc = std::unique_ptr<cublasLtMatmulDescOpaque_t, DescDeleter>;
using MatrixLayout = std::unique_ptr<cublasLtMatrixLayoutOpaque_t, LayoutDeleter>;
using Preference = std::unique_ptr<cublasLtMatmulPreferenceOpaque_t, PreferenceDeleter>;

absl::StatusOr<MatrixLayout> MakeLayout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld) {
  cublasLtMatrixLayout_t layout = nullptr;
  RETURN_IF_CUBLAS_ERROR(cublasLtMatrixLayoutCreate(&layout, type, static_cast<uint64_t>(rows),
                                                    static_cast<uint64_t>(cols), ld));
  return MatrixLayout(layout);
}

// The largest power of two <= 256 dividing every address.
int Alignment(const void* a, const void* b, const void* c) {
  const uintptr_t bits = reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b) |
                         reinterpret_cast<uintptr_t>(c) | uintptr_t{256};
  return static_cast<int>(bits & (~bits + 1));
}

}  // namespace

struct CublasLtMatmul::Plan {
  MatmulDesc desc;
  MatrixLayout a, b, c;
  cublasLtMatmulAlgo_t algo;
};

absl::StatusOr<std::unique_ptr<CublasLtMatmul>> CublasLtMatmul::Create(int64_t workspace_bytes) {
  ASSIGN_OR_RETURN(DeviceBuffer workspace, CudaAllocate(workspace_bytes));
  cublasLtHandle_t handle = nullptr;
  RETURN_IF_CUBLAS_ERROR(cublasLtCreate(&handle));
  return std::unique_ptr<CublasLtMatmul>(new CublasLtMatmul(handle, std::move(workspace)));
}

CublasLtMatmul::CublasLtMatmul(cublasLtHandle_t handle, DeviceBuffer workspace)
    : handle_(handle), workspace_(std::move(workspace)) {}

CublasLtMatmul::~CublasLtMatmul() {
  plans_.clear();
  if (handle_) cublasLtDestroy(handle_);
}

absl::StatusOr<CublasLtMatmul::Plan*> CublasLtMatmul::GetPlan(const Key& key) {
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second.get();
  const auto [m, n, k, y_type, alignment] = key;
  const cudaDataType_t out_type = static_cast<DType>(y_type) == DType::kF32 ? CUDA_R_32F : CUDA_R_16BF;

  auto plan = std::make_unique<Plan>();
  cublasLtMatmulDesc_t desc = nullptr;
  RETURN_IF_CUBLAS_ERROR(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  plan->desc.reset(desc);
  const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
  RETURN_IF_CUBLAS_ERROR(
      cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof(trans_a)));
  RETURN_IF_CUBLAS_ERROR(
      cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof(trans_b)));
  ASSIGN_OR_RETURN(plan->a, MakeLayout(CUDA_R_16BF, k, n, k));  // W': K x N, used transposed
  ASSIGN_OR_RETURN(plan->b, MakeLayout(CUDA_R_16BF, k, m, k));  // X': K x M
  ASSIGN_OR_RETURN(plan->c, MakeLayout(out_type, n, m, n));     // Y': N x M

  cublasLtMatmulPreference_t pref_raw = nullptr;
  RETURN_IF_CUBLAS_ERROR(cublasLtMatmulPreferenceCreate(&pref_raw));
  Preference pref(pref_raw);
  const uint64_t workspace_bytes = static_cast<uint64_t>(workspace_.bytes());
  RETURN_IF_CUBLAS_ERROR(cublasLtMatmulPreferenceSetAttribute(
      pref.get(), CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes, sizeof(workspace_bytes)));
  const uint32_t align = static_cast<uint32_t>(alignment);
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
    RETURN_IF_CUBLAS_ERROR(cublasLtMatmulPreferenceSetAttribute(pref.get(), attr, &align, sizeof(align)));
  }
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  RETURN_IF_CUBLAS_ERROR(cublasLtMatmulAlgoGetHeuristic(handle_, desc, plan->a.get(), plan->b.get(),
                                                        plan->c.get(), plan->c.get(), pref.get(), 1, &result,
                                                        &found));
  if (found == 0) {
    return absl::UnimplementedError(absl::StrCat("cuBLASLt has no bf16 algorithm for y[", m, ", ", n,
                                                 "] = x[", m, ", ", k, "] @ w[", n, ", ", k,
                                                 "]^T (alignment ", alignment, " bytes)"));
  }
  plan->algo = result.algo;
  Plan* raw = plan.get();
  plans_.emplace(key, std::move(plan));
  return raw;
}

absl::Status CublasLtMatmul::Run(const void* x, const void* w, void* y, DType y_dtype, int64_t m, int64_t n,
                                 int64_t k, cudaStream_t stream) {
  TESSERA_CHECK(y_dtype == DType::kF32 || y_dtype == DType::kBF16);
  TESSERA_CHECK(m >= 1 && n >= 1 && k >= 1);
  const Key key{m, n, k, static_cast<int>(y_dtype), Alignment(x, w, y)};
  ASSIGN_OR_RETURN(Plan * plan, GetPlan(key));
  const float alpha = 1.0f, beta = 0.0f;
  RETURN_IF_CUBLAS_ERROR(cublasLtMatmul(handle_, plan->desc.get(), &alpha, w, plan->a.get(), x, plan->b.get(),
                                        &beta, y, plan->c.get(), y, plan->c.get(), &plan->algo,
                                        workspace_.data(), static_cast<size_t>(workspace_.bytes()), stream));
  return absl::OkStatus();
}

}  // namespace tessera
