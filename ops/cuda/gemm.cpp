// CUDA kernel: strided-batched GEMM on cuBLASLt. Row-major C = A B is column-major
// C^T = B^T A^T, so the operands are passed swapped and each matrix keeps its own stride.
// bf16 operands accumulate in f32; f32 operands use full f32 unless KOTOBA_CUDA_TF32=1.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "core/error.h"
#include "ops/cuda/kernels.h"

namespace kotoba::cuda {
namespace {

#define KOTOBA_CUBLAS_CHECK(call)                                                       \
  do {                                                                                  \
    cublasStatus_t kotoba_status_ = (call);                                             \
    if (kotoba_status_ != CUBLAS_STATUS_SUCCESS)                                        \
      fail(#call, cublasLt_status_string(kotoba_status_), __FILE__, __LINE__);          \
  } while (0)

const char* cublasLt_status_string(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "cuBLAS error";
  }
}

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

struct LtState {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
};

LtState& lt_state() {
  static LtState state;
  static std::once_flag once;
  std::call_once(once, [] {
    KOTOBA_CUBLAS_CHECK(cublasLtCreate(&state.handle));
    state.workspace = scratch_allocate(kWorkspaceBytes);  // kept for the life of the process
  });
  return state;
}

cudaDataType_t cuda_type(DType t, const char* field) {
  if (t == DType::f32) return CUDA_R_32F;
  if (t == DType::bf16) return CUDA_R_16BF;
  fail("gemm", detail::concat(field, " must be f32 or bf16, got ", dtype_name(t)).c_str(), __FILE__, __LINE__);
}

// Largest power of two (<= 256) dividing the address and the batch stride, for cuBLASLt's
// algorithm filter: views into a larger buffer can be less aligned than a fresh block.
uint32_t alignment_of(const void* p, int64_t stride_elems, DType t, int64_t batch) {
  uint64_t bits = uint64_t(reinterpret_cast<uintptr_t>(p)) | 256u;
  if (batch > 1) bits |= uint64_t(dtype_bytes(t, size_t(stride_elems))) | 256u;
  return uint32_t(bits & (~bits + 1));
}

// Column-major layout of a row-major (rows, cols) matrix stored with row stride ld.
cublasLtMatrixLayout_t make_layout(cudaDataType_t type, int64_t cm_rows, int64_t cm_cols, int64_t ld, int64_t batch,
                                   int64_t stride) {
  if (ld < cm_rows) ld = cm_rows;  // only reachable when cm_cols == 1, where ld is unused
  cublasLtMatrixLayout_t layout = nullptr;
  KOTOBA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, type, uint64_t(cm_rows), uint64_t(cm_cols), ld));
  if (batch > 1) {
    int32_t count = int32_t(batch);
    KOTOBA_CUBLAS_CHECK(
        cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
    KOTOBA_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                         &stride, sizeof(stride)));
  }
  return layout;
}

// RAII for the descriptors of one gemm shape.
struct LtCall {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtCall() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

// Everything cuBLASLt's descriptors and algorithm choice depend on (alpha, beta and the
// pointers themselves do not; the pointers' alignments do).
struct PlanKey {
  int64_t m, n, k, lda, ldb, ldc, stride_a, stride_b, stride_c, batch;
  bool trans_a, trans_b, tf32;
  DType dtype_ab, dtype_c;
  uint32_t align_a, align_b, align_c;
  auto tied() const {
    return std::tie(m, n, k, lda, ldb, ldc, stride_a, stride_b, stride_c, batch, trans_a, trans_b, tf32, dtype_ab,
                    dtype_c, align_a, align_b, align_c);
  }
  bool operator<(const PlanKey& o) const { return tied() < o.tied(); }
};

// The descriptors and the heuristic's algorithm for one shape, made once: a training step calls
// the same few dozen shapes over and over, and building descriptors plus asking the heuristic
// costs tens of microseconds per call. `fallback`: cuBLASLt has no kernel for it.
struct Plan {
  LtCall call;
  cublasLtMatmulAlgo_t algo{};
  bool fallback = false;
};

constexpr size_t kMaxPlans = 4096;  // shapes beyond this (e.g. ever-growing decode lengths) start over

std::mutex g_plans_mutex;
std::map<PlanKey, std::unique_ptr<Plan>>& plans() {
  static auto* cache = new std::map<PlanKey, std::unique_ptr<Plan>>();  // never destroyed: no teardown order issues
  return *cache;
}

}  // namespace

// Helpers from ops/cuda/elementwise.cu (k == 0 and the f32-operand / bf16-output case).
void scale_matrix(void* c, int64_t m, int64_t n, int64_t ldc, int64_t stride_c, int64_t batch, float beta, DType t);
void convert_matrix(const void* src, DType src_t, int64_t src_ld, int64_t src_stride, void* dst, DType dst_t,
                    int64_t dst_ld, int64_t dst_stride, int64_t m, int64_t n, int64_t batch);

// ops/cuda/gemm_fallback.cu: a plain tiled kernel for what cuBLASLt declines.
void gemm_fallback(const GemmArgs& g);

void gemm(const GemmArgs& g) {
  if (g.m == 0 || g.n == 0 || g.batch == 0) return;
  if (g.k == 0) {  // C = beta C
    scale_matrix(g.c, g.m, g.n, g.ldc, g.stride_c, g.batch, g.beta, g.dtype_c);
    return;
  }
  const cudaDataType_t type_ab = cuda_type(g.dtype_ab, "gemm operands A/B");
  const cudaDataType_t type_c = cuda_type(g.dtype_c, "gemm output C");
  if (g.dtype_ab == DType::f32 && g.dtype_c == DType::bf16) {
    // cuBLASLt has no f32 x f32 -> bf16 kernel: go through an f32 copy of C.
    const int64_t count = g.m * g.n;
    void* tmp = scratch_allocate(sizeof(float) * size_t(count * g.batch));
    if (g.beta != 0.0f) convert_matrix(g.c, DType::bf16, g.ldc, g.stride_c, tmp, DType::f32, g.n, count, g.m, g.n, g.batch);
    GemmArgs f = g;
    f.c = tmp;
    f.ldc = g.n;
    f.stride_c = count;
    f.dtype_c = DType::f32;
    gemm(f);
    convert_matrix(tmp, DType::f32, g.n, count, g.c, DType::bf16, g.ldc, g.stride_c, g.m, g.n, g.batch);
    scratch_free(tmp, sizeof(float) * size_t(count * g.batch));
    return;
  }

  LtState& lt = lt_state();
  const bool tf32 = g.dtype_ab == DType::f32 && tf32_enabled();
  const PlanKey key{g.m,
                    g.n,
                    g.k,
                    g.lda,
                    g.ldb,
                    g.ldc,
                    g.batch > 1 ? g.stride_a : 0,
                    g.batch > 1 ? g.stride_b : 0,
                    g.batch > 1 ? g.stride_c : 0,
                    g.batch,
                    g.trans_a,
                    g.trans_b,
                    tf32,
                    g.dtype_ab,
                    g.dtype_c,
                    alignment_of(g.a, g.stride_a, g.dtype_ab, g.batch),
                    alignment_of(g.b, g.stride_b, g.dtype_ab, g.batch),
                    alignment_of(g.c, g.stride_c, g.dtype_c, g.batch)};
  Plan* plan = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_plans_mutex);
    auto& cache = plans();
    auto it = cache.find(key);
    if (it == cache.end()) {
      if (cache.size() >= kMaxPlans) cache.clear();
      auto made = std::make_unique<Plan>();
      LtCall& call = made->call;
      const cublasComputeType_t compute = tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
      KOTOBA_CUBLAS_CHECK(cublasLtMatmulDescCreate(&call.desc, compute, CUDA_R_32F));
      // Swapped: the first cuBLAS operand is B, the second A.
      const cublasOperation_t op_first = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
      const cublasOperation_t op_second = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
      KOTOBA_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(call.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof(op_first)));
      KOTOBA_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(call.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof(op_second)));
      // B stored row-major (K, N) is column-major (N, K); transposed it is stored (N, K) -> (K, N).
      call.a = g.trans_b ? make_layout(type_ab, g.k, g.n, g.ldb, g.batch, g.stride_b)
                         : make_layout(type_ab, g.n, g.k, g.ldb, g.batch, g.stride_b);
      call.b = g.trans_a ? make_layout(type_ab, g.m, g.k, g.lda, g.batch, g.stride_a)
                         : make_layout(type_ab, g.k, g.m, g.lda, g.batch, g.stride_a);
      call.c = make_layout(type_c, g.n, g.m, g.ldc, g.batch, g.stride_c);

      KOTOBA_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&call.pref));
      uint64_t workspace = kWorkspaceBytes;
      KOTOBA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(call.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                               &workspace, sizeof(workspace)));
      uint32_t align_first = key.align_b, align_second = key.align_a, align_c = key.align_c;
      KOTOBA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(call.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                               &align_first, sizeof(align_first)));
      KOTOBA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(call.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                               &align_second, sizeof(align_second)));
      KOTOBA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(call.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                               &align_c, sizeof(align_c)));
      KOTOBA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(call.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                               &align_c, sizeof(align_c)));
      cublasLtMatmulHeuristicResult_t result{};
      int found = 0;
      const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(lt.handle, call.desc, call.a, call.b, call.c,
                                                                   call.c, call.pref, 1, &result, &found);
      if (status == CUBLAS_STATUS_NOT_SUPPORTED || (status == CUBLAS_STATUS_SUCCESS && found == 0))
        made->fallback = true;  // e.g. operands less aligned than every cuBLASLt kernel needs
      else
        KOTOBA_CUBLAS_CHECK(status);
      made->algo = result.algo;
      it = cache.emplace(key, std::move(made)).first;
    }
    plan = it->second.get();
  }
  if (plan->fallback) {
    gemm_fallback(g);
    return;
  }
  KOTOBA_CUBLAS_CHECK(cublasLtMatmul(lt.handle, plan->call.desc, &g.alpha, g.b, plan->call.a, g.a, plan->call.b, &g.beta,
                                     g.c, plan->call.c, g.c, plan->call.c, &plan->algo, lt.workspace, kWorkspaceBytes,
                                     static_cast<cudaStream_t>(stream_handle())));
}

}  // namespace kotoba::cuda
