// preprocess: uint8 HWC frame (grey, RGB or BGR) -> bilinear resize (cv2.INTER_LINEAR, half-pixel
// centres, clamped borders) -> (x/255 - mean)/std -> (1, 3, OH, OW) float32 / float16, one pass.
// Same arithmetic as _preprocess_kernel in preprocess.py; launched from kernels/cuda_runtime.py.
#include <cuda_fp16.h>

__device__ __forceinline__ void store_out(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_out(__half* p, float v) { *p = __float2half_rn(v); }

template <typename T>
__device__ __forceinline__ void preprocess_body(
    const unsigned char* __restrict__ src,  // (H, W, C) uint8, rows stride_h bytes apart, pixels packed
    T* __restrict__ out,                    // (3, OH, OW) contiguous
    int H, int W, long long stride_h,       // source size, row stride in bytes
    int OH, int OW,                         // output size
    float scale_y, float scale_x,           // H/OH, W/OW
    float k0, float k1, float k2,           // per RGB channel 1/(255 std)
    float b0, float b1, float b2,           // per RGB channel -mean/std
    int C, int bgr)                         // source channels (1 or 3); source order is BGR
{
    const int ox = blockIdx.x * blockDim.x + threadIdx.x;
    const int oy = blockIdx.y * blockDim.y + threadIdx.y;
    if (ox >= OW || oy >= OH) return;
    float fy = (oy + 0.5f) * scale_y - 0.5f;
    float fx = (ox + 0.5f) * scale_x - 0.5f;
    int y0 = (int)floorf(fy), x0 = (int)floorf(fx);
    float wy = fy - (float)y0, wx = fx - (float)x0;
    if (y0 < 0) { y0 = 0; wy = 0.f; }
    if (x0 < 0) { x0 = 0; wx = 0.f; }
    if (y0 >= H - 1) { y0 = H - 1; wy = 0.f; }
    if (x0 >= W - 1) { x0 = W - 1; wx = 0.f; }
    const int y1 = min(y0 + 1, H - 1), x1 = min(x0 + 1, W - 1);
    const unsigned char* r0 = src + (long long)y0 * stride_h;
    const unsigned char* r1 = src + (long long)y1 * stride_h;
    const long long npix = (long long)OH * OW;
    const long long o = (long long)oy * OW + ox;
    const float ks[3] = {k0, k1, k2}, bs[3] = {b0, b1, b2};
#pragma unroll
    for (int c = 0; c < 3; ++c) {
        const int sc = (C == 1) ? 0 : (bgr ? 2 - c : c);
        const float v00 = r0[x0 * C + sc], v01 = r0[x1 * C + sc];
        const float v10 = r1[x0 * C + sc], v11 = r1[x1 * C + sc];
        const float top = v00 + (v01 - v00) * wx;
        const float bot = v10 + (v11 - v10) * wx;
        store_out(out + c * npix + o, (top + (bot - top) * wy) * ks[c] + bs[c]);
    }
}

extern "C" __global__ void lineside_preprocess_f32(
    const unsigned char* src, float* out, int H, int W, long long stride_h, int OH, int OW,
    float scale_y, float scale_x, float k0, float k1, float k2, float b0, float b1, float b2, int C, int bgr)
{
    preprocess_body<float>(src, out, H, W, stride_h, OH, OW, scale_y, scale_x, k0, k1, k2, b0, b1, b2, C, bgr);
}

extern "C" __global__ void lineside_preprocess_f16(
    const unsigned char* src, __half* out, int H, int W, long long stride_h, int OH, int OW,
    float scale_y, float scale_x, float k0, float k1, float k2, float b0, float b1, float b2, int C, int bgr)
{
    preprocess_body<__half>(src, out, H, W, stride_h, OH, OW, scale_y, scale_x, k0, k1, k2, b0, b1, b2, C, bgr);
}
