// anomaly_map: (h, w) distance grid -> bilinear upsample to (H, W) (half-pixel centres, clamped) ->
// separable Gaussian (taps given, BORDER_REFLECT_101) -> map + per-block top-k candidates for the
// image score. Two kernels, as _upsample_hblur_kernel / _vblur_topk_kernel in anomaly_map.py.
#include <math_constants.h>

#define LINESIDE_AMAP_THREADS 256  // threads per block of both kernels (one row segment each)

__device__ __forceinline__ int reflect101(int i, int n)
{
    // cv2.BORDER_REFLECT_101 for any offset: fold into one period of 2(n - 1)
    const int period = max(2 * (n - 1), 1);
    i = abs(i) % period;
    return i >= n ? period - i : i;
}

__device__ __forceinline__ void src_coord(int o, float scale, int n, int* i0, int* i1, float* w)
{
    float f = (o + 0.5f) * scale - 0.5f;
    int i = (int)floorf(f);
    float a = f - (float)i;
    if (i < 0) { i = 0; a = 0.f; }
    if (i >= n - 1) { i = n - 1; a = 0.f; }
    *i0 = i; *i1 = min(i + 1, n - 1); *w = a;
}

extern "C" __global__ void lineside_upsample_hblur(
    const float* __restrict__ grid,  // (h, w) float32, contiguous
    const float* __restrict__ wts,   // (ksize,) Gaussian taps
    float* __restrict__ tmp,         // (H, W) output: upsampled rows blurred along x
    int h, int w, int H, int W,      // grid and image sizes
    float scale_y, float scale_x,    // h/H, w/W
    int ksize)                       // taps (odd)
{
    const int y = blockIdx.y;
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= W) return;
    int y0, y1, x0, x1;
    float wy, wx;
    src_coord(y, scale_y, h, &y0, &y1, &wy);
    const float* g0 = grid + (long long)y0 * w;
    const float* g1 = grid + (long long)y1 * w;
    const int r = ksize / 2;
    float acc = 0.f;
    for (int t = 0; t < ksize; ++t) {
        const int xx = reflect101(x + t - r, W);
        src_coord(xx, scale_x, w, &x0, &x1, &wx);
        const float top = g0[x0] + (g0[x1] - g0[x0]) * wx;
        const float bot = g1[x0] + (g1[x1] - g1[x0]) * wx;
        acc += wts[t] * (top + (bot - top) * wy);
    }
    tmp[(long long)y * W + x] = acc;
}

extern "C" __global__ void lineside_vblur_topk(
    const float* __restrict__ tmp,  // (H, W) rows blurred along x
    const float* __restrict__ wts,  // (ksize,) Gaussian taps
    float* __restrict__ out,        // (H, W) anomaly map
    float* __restrict__ cand,       // (H * gridDim.x, topk): each block's topk largest values
    int H, int W, int ksize, int topk)
{
    __shared__ float sv[LINESIDE_AMAP_THREADS];
    __shared__ int si[LINESIDE_AMAP_THREADS];
    __shared__ float vals[LINESIDE_AMAP_THREADS];
    const int y = blockIdx.y;
    const int tid = threadIdx.x;
    const int x = blockIdx.x * blockDim.x + tid;
    const int r = ksize / 2;
    float acc = -CUDART_INF_F;
    if (x < W) {
        acc = 0.f;
        for (int t = 0; t < ksize; ++t)
            acc += wts[t] * tmp[(long long)reflect101(y + t - r, H) * W + x];
        out[(long long)y * W + x] = acc;
    }
    vals[tid] = acc;
    float* c = cand + ((long long)y * gridDim.x + blockIdx.x) * topk;
    for (int j = 0; j < topk; ++j) {  // topk rounds of block argmax
        __syncthreads();
        sv[tid] = vals[tid];
        si[tid] = tid;
        __syncthreads();
        for (int s = blockDim.x / 2; s > 0; s >>= 1) {
            if (tid < s && sv[tid + s] > sv[tid]) { sv[tid] = sv[tid + s]; si[tid] = si[tid + s]; }
            __syncthreads();
        }
        if (tid == 0) c[j] = sv[0];
        if (tid == si[0]) vals[tid] = -CUDART_INF_F;
    }
}
