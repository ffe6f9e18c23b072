// knn_score: for M float16 queries and N float16 bank rows (dimension D), the distance to the nearest
// bank row (or the mean over the k nearest), as ||q||^2 - 2 q.b + ||b||^2 with float32 accumulation,
// tile by tile with a running k-smallest set: the M x N matrix is never stored. Grid: (cdiv(M, 64),
// splits); with splits > 1 each blockIdx.y covers one slice of the bank and lineside_knn_merge finishes.
// SIMT version (float32 FMA; no tensor cores): the dispatcher prefers the Triton kernel for this op,
// which uses tensor cores through tl.dot. One block: 64 queries x 64-row bank tiles, 16 x 16 threads,
// each thread 4 x 4 dot products (rows ty + 16 i, columns tx + 16 j: conflict-free shared reads).
#include <cuda_fp16.h>
#include <math_constants.h>

#define KNN_BM 64
#define KNN_BN 64
#define KNN_BD 16
#define KNN_T 16  // threads per side

template <int KMAX>
__device__ __forceinline__ void insert_sorted(float* best, float v, int k)
{
    // best[0..k) ascending; drop the largest if v is smaller
    if (v >= best[k - 1]) return;
    int j = k - 1;
#pragma unroll
    for (int s = KMAX - 1; s > 0; --s) {
        if (s <= j && s > 0 && best[s - 1] > v) { best[s] = best[s - 1]; j = s - 1; }
    }
    // j is now the first index whose predecessor is <= v (or 0)
    best[j] = v;
}

template <int KMAX>
__device__ void knn_body(
    const __half* __restrict__ q,    // (M, D) queries, rows ldq elements apart
    const __half* __restrict__ b,    // (N, D) bank, rows ldb elements apart
    const float* __restrict__ bsq,   // (N,) ||b||^2
    float* __restrict__ out,         // (M,) result, or when part: (gridDim.y, M, k) partial d^2, ascending
    int M, int N, int D, int ldq, int ldb, int k,
    int n_per_split,                 // bank rows per blockIdx.y slice (a multiple of KNN_BN)
    int part)                        // 1: write this slice's k smallest d^2 (merged by lineside_knn_merge)
{
    __shared__ float Qs[KNN_BD][KNN_BM];
    __shared__ float Bs[KNN_BD][KNN_BN];
    __shared__ float qq[KNN_BM];
    __shared__ float merge[KNN_T][KNN_T][KMAX];  // one row group (16 rows) x 16 threads x k
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * KNN_T + tx;
    const int m0 = blockIdx.x * KNN_BM;
    const int n_lo = blockIdx.y * n_per_split;
    const int n_hi = min(N, n_lo + n_per_split);

    if (tid < KNN_BM) {  // ||q||^2: added at the end, it does not change which row is nearest
        float s = 0.f;
        const int m = m0 + tid;
        if (m < M)
            for (int d = 0; d < D; ++d) { const float v = __half2float(q[(long long)m * ldq + d]); s += v * v; }
        qq[tid] = s;
    }

    float best[4][KMAX];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < KMAX; ++j) best[i][j] = CUDART_INF_F;

    for (int n0 = n_lo; n0 < n_hi; n0 += KNN_BN) {
        float acc[4][4] = {};
        for (int d0 = 0; d0 < D; d0 += KNN_BD) {
            __syncthreads();
#pragma unroll
            for (int s = 0; s < (KNN_BM * KNN_BD) / (KNN_T * KNN_T); ++s) {
                const int e = tid + s * KNN_T * KNN_T;
                const int row = e / KNN_BD, col = e % KNN_BD;
                const int d = d0 + col;
                const int m = m0 + row, n = n0 + row;
                Qs[col][row] = (m < M && d < D) ? __half2float(q[(long long)m * ldq + d]) : 0.f;
                Bs[col][row] = (n < n_hi && d < D) ? __half2float(b[(long long)n * ldb + d]) : 0.f;
            }
            __syncthreads();
#pragma unroll
            for (int kd = 0; kd < KNN_BD; ++kd) {
                float a[4], c[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) { a[i] = Qs[kd][ty + KNN_T * i]; c[i] = Bs[kd][tx + KNN_T * i]; }
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], c[j], acc[i][j]);
            }
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int n = n0 + tx + KNN_T * j;
            if (n >= n_hi) continue;
            const float bn = bsq[n];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float part = bn - 2.f * acc[i][j];  // ||b||^2 - 2 q.b
                if (KMAX == 1) best[i][0] = fminf(best[i][0], part);
                else insert_sorted<KMAX>(best[i], part, k);
            }
        }
    }

    // merge the 16 per-thread lists of each row (threads tx = 0..15 share rows ty + 16 i)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        __syncthreads();
#pragma unroll
        for (int j = 0; j < KMAX; ++j) merge[ty][tx][j] = best[i][j];
        __syncthreads();
        if (tx == 0) {
            const int row = ty + KNN_T * i, m = m0 + row;
            int head[KNN_T];
#pragma unroll
            for (int t = 0; t < KNN_T; ++t) head[t] = 0;
            float sum = 0.f;
            for (int j = 0; j < k; ++j) {  // k smallest of 16 sorted lists
                int bt = 0;
                float bv = CUDART_INF_F;
                for (int t = 0; t < KNN_T; ++t) {
                    const float v = head[t] < k ? merge[ty][t][head[t]] : CUDART_INF_F;
                    if (v < bv) { bv = v; bt = t; }
                }
                head[bt] += 1;
                if (part && m < M) out[((long long)blockIdx.y * M + m) * k + j] = bv + qq[row];
                sum += sqrtf(fmaxf(bv + qq[row], 0.f));
            }
            if (!part && m < M) out[m] = sum / (float)k;
        }
    }
}

extern "C" __global__ void __launch_bounds__(KNN_T * KNN_T) lineside_knn_k1(
    const __half* q, const __half* b, const float* bsq, float* out, int M, int N, int D, int ldq, int ldb, int k,
    int n_per_split, int part)
{
    knn_body<1>(q, b, bsq, out, M, N, D, ldq, ldb, 1, n_per_split, part);
}

extern "C" __global__ void __launch_bounds__(KNN_T * KNN_T) lineside_knn_k16(
    const __half* q, const __half* b, const float* bsq, float* out, int M, int N, int D, int ldq, int ldb, int k,
    int n_per_split, int part)
{
    knn_body<16>(q, b, bsq, out, M, N, D, ldq, ldb, k, n_per_split, part);  // 1 <= k <= 16
}

// Few query blocks leave SMs idle (an edge frame is ~800 queries = 13 blocks): the bank is then split
// over blockIdx.y and this kernel merges the slices' partial lists: one thread per query.
extern "C" __global__ void lineside_knn_merge(
    const float* __restrict__ part,  // (splits, M, k) partial d^2, each list ascending
    float* __restrict__ out,         // (M,) distance to the nearest / mean over the k nearest
    int M, int splits, int k)        // 1 <= k <= 16
{
    const int m = blockIdx.x * blockDim.x + threadIdx.x;
    if (m >= M) return;
    float best[16];
    for (int j = 0; j < 16; ++j) best[j] = CUDART_INF_F;
    for (int s = 0; s < splits; ++s)
        for (int j = 0; j < k; ++j) {
            const float v = part[((long long)s * M + m) * k + j];
            if (v >= best[k - 1]) break;  // lists are ascending: the rest of this one cannot enter
            int i = k - 1;
            while (i > 0 && best[i - 1] > v) { best[i] = best[i - 1]; --i; }
            best[i] = v;
        }
    float sum = 0.f;
    for (int j = 0; j < k; ++j) sum += sqrtf(fmaxf(best[j], 0.f));
    out[m] = sum / (float)k;
}
