"""knn_score: distance of each query vector to its nearest (mean of k nearest) memory-bank vectors.

d²(q, b) = ‖q‖² − 2 q·b + ‖b‖², computed tile by tile with a running minimum (or a running k-smallest
set), so the M×N distance matrix is never materialised.

* ``knn_score_reference`` — numpy, the production path on x86 edge PCs. The GEMM dominates, so it is
  shaped for BLAS: the bank is augmented once to ``[b, ‖b‖²]`` (``prepare_bank``) and the queries
  to ``[−2q, 1]``, so one float32 matmul per (query chunk × bank chunk) yields ``‖b‖² − 2q·b``
  directly and the only other pass over the tile is the row minimum. Chunks stay in L2.
* ``_knn_score_kernel`` — Triton, float16 inputs, float32 accumulation (tensor cores via ``tl.dot``).
* ``knn_score`` — launcher for the Triton kernel (torch tensors on a CUDA device).
* ``knn_score_cuda`` — launcher for ``knn_score.cu``, the CUDA C version (SIMT, k <= ``CUDA_KMAX``).
* ``IMPLEMENTATIONS`` — the entries kernels.dispatch picks from; each keeps the bank it prepares
  (augmented on the CPU, float16 on a GPU) in ``kernels.bank_cache``, per bank object.
* ``bench_cpu`` / ``bench_gpu`` — this op's rows of kernels.bench, in GFLOP/s (2·M·N·D).
"""
from __future__ import annotations

import functools
import logging

import numpy as np

from kernels import _arrays, bank_cache
from kernels._launch import check_tensor

log = logging.getLogger("lineside.kernels")

# Reference tiling: a (ROWS x COLS) float32 tile (4 MB) per matmul keeps the GEMM efficient and the
# tile in the last-level cache for the minimum that follows.
REF_ROWS = 256
REF_COLS = 4096
MAX_K = 64  # k beyond this is a different algorithm (sort), not a nearest-neighbour score
CUDA_KMAX = 16  # lineside_knn_k16 handles 1 < k <= 16


def _check(queries, bank, k: int) -> None:
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"knn_score: queries {tuple(queries.shape)} and bank {tuple(bank.shape)} "
                         "must be (M, D) and (N, D)")
    n = bank.shape[0]
    if not 1 <= k <= min(n, MAX_K):
        raise ValueError(f"knn_score: k={k} must be in [1, {min(n, MAX_K)}] (bank has {n} rows)")


def prepare_bank(bank: np.ndarray, bank_sqnorm: np.ndarray | None = None) -> np.ndarray:
    """(N, D) -> (N, D+1) float32 ``[b, ‖b‖²]``: do this once per bank, not per frame."""
    b = np.asarray(bank, dtype=np.float32)
    aug = np.empty((b.shape[0], b.shape[1] + 1), np.float32)
    aug[:, :-1] = b
    if bank_sqnorm is None:
        np.einsum("nd,nd->n", b, b, out=aug[:, -1])
    else:
        aug[:, -1] = np.asarray(bank_sqnorm, np.float32).reshape(-1)
    return aug


def knn_score_reference(queries: np.ndarray, bank: np.ndarray, k: int = 1,
                        bank_sqnorm: np.ndarray | None = None, prepared: np.ndarray | None = None
                        ) -> np.ndarray:
    """(M, D), (N, D) -> (M,) float32 Euclidean distance, mean over the k nearest.

    ``prepared`` is ``prepare_bank(bank)`` if the caller caches it (the dispatcher does), else it is
    built here (one O(N·D) copy). Float32 throughout; float16 inputs are widened.
    """
    _check(queries, bank, k)
    aug = prepare_bank(bank, bank_sqnorm) if prepared is None else prepared
    m, d = queries.shape
    n = aug.shape[0]
    out = np.empty(m, np.float32)
    if m == 0:
        return out
    cols = min(n, REF_COLS)
    rows = min(m, max(REF_ROWS, (REF_ROWS * REF_COLS) // cols))
    buf = np.empty((rows, cols), np.float32)
    qa = np.empty((rows, d + 1), np.float32)
    qa[:, d] = 1.0
    for s in range(0, m, rows):
        qc = np.asarray(queries[s:s + rows], dtype=np.float32)
        r = qc.shape[0]
        np.multiply(qc, -2.0, out=qa[:r, :d])  # [−2q, 1] · [b, ‖b‖²] = ‖b‖² − 2 q·b
        qq = np.einsum("md,md->m", qc, qc)
        best = np.full(r, np.inf, np.float32) if k == 1 else np.full((r, k), np.inf, np.float32)
        for t in range(0, n, cols):
            bt = aug[t:t + cols]
            tile = np.matmul(qa[:r], bt.T, out=buf[:r, :bt.shape[0]])  # (r, c)
            if k == 1:
                np.minimum(best, tile.min(1), out=best)
            elif tile.shape[1] <= k:
                best = np.partition(np.concatenate([best, tile], axis=1), k - 1, axis=1)[:, :k]
            else:
                tile.partition(k - 1, axis=1)  # in place: each row's k smallest now lead the row
                best = np.partition(np.concatenate([best, tile[:, :k]], axis=1), k - 1, axis=1)[:, :k]
        d2 = best + (qq if k == 1 else qq[:, None])
        np.maximum(d2, 0.0, out=d2)
        np.sqrt(d2, out=d2)
        out[s:s + r] = d2 if k == 1 else d2.mean(1)
    return out


# ----------------------------------------------------------------------------------------------- Triton
def _build_triton_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def _knn_score_kernel(
        q_ptr,  # (M, D) float16 queries; rows stride_qm apart, columns contiguous
        b_ptr,  # (N, D) float16 bank; rows stride_bn apart, columns contiguous
        bsq_ptr,  # (N,) float32 ‖b‖² per bank row (cached by the caller)
        out_ptr,  # FINAL: (M,) float32 distance to the nearest / mean over the K nearest;
        #           else (SPLITS, M, KP) float32 partial k smallest ‖b‖² − 2q·b of this program's bank slice
        M, N, D,  # number of queries, bank rows, feature dimension
        stride_qm, stride_bn,  # row strides in elements
        n_per_split,  # bank rows per program along grid axis 1 (a multiple of BLOCK_N)
        K: tl.constexpr,  # neighbours averaged (1 = plain running minimum)
        KP: tl.constexpr,  # K rounded up to a power of two: width of the running k-smallest tile
        BLOCK_M: tl.constexpr,  # queries per program
        BLOCK_N: tl.constexpr,  # bank rows per inner step
        BLOCK_D: tl.constexpr,  # feature columns per dot step (>= 16 for tensor cores)
        FINAL: tl.constexpr,  # one program covers the whole bank: write distances, not partials
    ):
        pid = tl.program_id(0)
        n_lo = tl.program_id(1) * n_per_split
        n_hi = tl.minimum(N, n_lo + n_per_split)
        rm = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        rd = tl.arange(0, BLOCK_D)
        cn = tl.arange(0, BLOCK_N)
        m_ok = rm < M
        # ‖q‖² does not change which bank row is nearest: add it once at the end.
        qq = tl.zeros((BLOCK_M,), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + rd
            q = tl.load(q_ptr + rm[:, None] * stride_qm + dd[None, :],
                        mask=m_ok[:, None] & (dd[None, :] < D), other=0.0).to(tl.float32)
            qq += tl.sum(q * q, axis=1)
        kc = tl.arange(0, KP)
        if K == 1:
            best = tl.full((BLOCK_M,), float("inf"), tl.float32)
        else:
            # (BLOCK_M, KP) running k smallest; padding columns hold -inf so they are never "worst"
            best = tl.where(kc[None, :] < K, float("inf"), float("-inf")) + tl.zeros((BLOCK_M, KP), tl.float32)
        for n0 in range(n_lo, n_hi, BLOCK_N):
            rn = n0 + cn
            n_ok = rn < n_hi
            acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
            for d0 in range(0, D, BLOCK_D):
                dd = d0 + rd
                q = tl.load(q_ptr + rm[:, None] * stride_qm + dd[None, :],
                            mask=m_ok[:, None] & (dd[None, :] < D), other=0.0)  # (BLOCK_M, BLOCK_D)
                b = tl.load(b_ptr + rn[None, :] * stride_bn + dd[:, None],
                            mask=n_ok[None, :] & (dd[:, None] < D), other=0.0)  # (BLOCK_D, BLOCK_N)
                acc = tl.dot(q, b, acc)  # float32 accumulation
            bsq = tl.load(bsq_ptr + rn, mask=n_ok, other=float("inf"))
            part = bsq[None, :] - 2.0 * acc  # ‖b‖² − 2 q·b; +inf in padded bank columns
            if K == 1:
                best = tl.minimum(best, tl.min(part, axis=1))
            else:
                # K rounds: move the tile's smallest into the running set if it beats the set's worst.
                for _ in tl.static_range(K):
                    cmin = tl.min(part, axis=1)
                    cidx = tl.argmin(part, axis=1)
                    worst = tl.max(best, axis=1)
                    widx = tl.argmax(best, axis=1)
                    take = cmin < worst
                    best = tl.where((kc[None, :] == widx[:, None]) & take[:, None], cmin[:, None], best)
                    part = tl.where(cn[None, :] == cidx[:, None], float("inf"), part)
        if FINAL:
            if K == 1:
                res = tl.sqrt(tl.maximum(best + qq, 0.0))
            else:
                dist = tl.sqrt(tl.maximum(best + qq[:, None], 0.0))
                res = tl.sum(tl.where(kc[None, :] < K, dist, 0.0), axis=1) / K
            tl.store(out_ptr + rm, res, mask=m_ok)
        else:
            part = out_ptr + tl.program_id(1) * M * KP + rm[:, None] * KP
            if K == 1:
                tl.store(part + kc[None, :], best[:, None] + tl.zeros((BLOCK_M, KP), tl.float32),
                         mask=m_ok[:, None] & (kc[None, :] < 1))
            else:
                tl.store(part + kc[None, :], best, mask=m_ok[:, None] & (kc[None, :] < K))

    return _knn_score_kernel


@functools.cache
def _kernel():
    return _build_triton_kernel()


def knn_score(queries, bank, k: int = 1, bank_sqnorm=None, *, block_m: int = 64, block_n: int = 64,
              block_d: int = 32, splits: int | None = None):
    """Triton launcher. queries (M, D), bank (N, D): float16 torch tensors on one CUDA device (CPU
    tensors under TRITON_INTERPRET=1), rows contiguous; bank_sqnorm (N,) float32 or None (computed).
    Returns (M,) float32 on the same device.

    ``splits`` slices the bank across grid axis 1 when there are too few query blocks to fill the GPU
    (an edge frame has M ≈ 800 queries: 13 programs of 64 rows for 100+ SMs); each slice writes its k
    smallest partials and one torch reduction finishes. Default: enough slices for ~4 programs per SM.
    """
    import torch

    _check(queries, bank, k)
    for name, t in (("queries", queries), ("bank", bank)):
        check_tensor("knn_score", name, t, torch.float16)
        if t.shape[1] > 0 and t.stride(1) != 1:
            raise ValueError(f"knn_score: {name} columns must be contiguous (stride {t.stride()})")
    if queries.device != bank.device:
        raise ValueError(f"knn_score: queries on {queries.device}, bank on {bank.device}")
    m, d = queries.shape
    n = bank.shape[0]
    if bank_sqnorm is None:
        bank_sqnorm = bank.float().pow(2).sum(1)
    if bank_sqnorm.shape != (n,) or bank_sqnorm.dtype != torch.float32 or not bank_sqnorm.is_contiguous():
        raise ValueError(f"knn_score: bank_sqnorm must be contiguous float32 ({n},), got "
                         f"{tuple(bank_sqnorm.shape)} {bank_sqnorm.dtype}")
    out = torch.empty(m, dtype=torch.float32, device=queries.device)
    if m == 0:
        return out
    kp = max(2, 1 << max(0, (k - 1).bit_length()))
    m_blocks = (m + block_m - 1) // block_m
    n_blocks = (n + block_n - 1) // block_n
    if splits is None:
        sms = torch.cuda.get_device_properties(queries.device).multi_processor_count if queries.is_cuda else 1
        splits = max(1, (4 * sms) // m_blocks)
    # each slice must hold at least k rows' worth of blocks; whole blocks per slice
    splits = max(1, min(int(splits), n_blocks, n // k))
    per = ((n_blocks + splits - 1) // splits) * block_n
    splits = (n + per - 1) // per
    meta = dict(K=k, KP=kp, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d)
    if splits == 1:
        _kernel()[(m_blocks, 1)](queries, bank, bank_sqnorm, out, m, n, d, queries.stride(0), bank.stride(0), n,
                                 FINAL=True, **meta)
        return out
    part = torch.empty((splits, m, kp), dtype=torch.float32, device=queries.device)
    _kernel()[(m_blocks, splits)](queries, bank, bank_sqnorm, part, m, n, d, queries.stride(0), bank.stride(0), per,
                                  FINAL=False, **meta)
    qq = queries.float().pow(2).sum(1)
    cand = part[:, :, :k].permute(1, 0, 2).reshape(m, splits * k)  # (M, splits·k) partial ‖b‖² − 2q·b
    if k == 1:
        best = cand.min(1).values
        return torch.sqrt(torch.clamp_min(best + qq, 0.0), out=out)
    best = torch.topk(cand, k, dim=1, largest=False).values
    torch.mean(torch.sqrt(torch.clamp_min(best + qq[:, None], 0.0)), dim=1, out=out)
    return out


# ------------------------------------------------------------------------------------------------- CUDA
CUDA_BM = 64  # KNN_BM in knn_score.cu: queries per block
CUDA_BN = 64  # KNN_BN in knn_score.cu: bank rows per tile
CUDA_THREADS = (16, 16, 1)
CUDA_MERGE_THREADS = 128


def _upload_f16(st, b):
    """bank -> (float16 rows, float32 ‖b‖²) on the device; a device bank is converted there."""
    if _arrays.kind(b).startswith("torch"):  # no host round trip
        b16 = b.detach().half().contiguous()
        return _arrays.Borrowed(b16), _arrays.Borrowed(b16.float().pow(2).sum(1).contiguous())
    if _arrays.kind(b) == "cupy":
        b16 = b.astype("float16", order="C")
        return _arrays.Borrowed(b16), _arrays.Borrowed((b16.astype("float32") ** 2).sum(1))
    b16 = np.ascontiguousarray(b, dtype=np.float16)
    bsq = np.einsum("nd,nd->n", b16.astype(np.float32), b16.astype(np.float32)).astype(np.float32)
    return _arrays.DeviceBuffer(st, host=b16), _arrays.DeviceBuffer(st, host=bsq)


def knn_score_cuda(queries, bank, k: int = 1, cache=None, splits: int | None = None):
    """CUDA launcher (knn_score.cu through kernels.cuda_runtime): numpy, torch CUDA or cupy (M, D) and
    (N, D) in, (M,) float32 out (numpy, or the queries' kind on the device). Inputs are rounded to float16.

    ``cache(what, build)`` memoises the uploaded bank per bank object (the dispatch entry passes
    kernels.bank_cache); without it a host bank is uploaded on every call. ``splits`` slices the bank
    over grid axis y when there are too few query blocks to fill the GPU (default: ~4 blocks per SM);
    lineside_knn_merge then merges the slices' partial lists."""
    from kernels import cuda_runtime

    _check(queries, bank, k)
    if k > CUDA_KMAX:
        raise ValueError(f"knn_score: the CUDA kernel averages at most k={CUDA_KMAX} neighbours, got {k}")
    kind = _arrays.kind(queries)
    m, d = queries.shape
    n = bank.shape[0]
    with cuda_runtime.context() as st:
        def upload(b):
            return _upload_f16(st, b)

        bdev, bsq = cache("cuda-f16", upload) if cache else upload(bank)
        if kind == "numpy":
            q = _arrays.DeviceBuffer(st, host=np.ascontiguousarray(queries, dtype=np.float16))
        else:
            q16 = queries.half().contiguous() if kind.startswith("torch") else queries.astype("float16", order="C")
            q = _arrays.Borrowed(q16)
        out = _arrays.DeviceBuffer(st, nbytes=4 * m, like=queries, shape=(m,), dtype=np.float32)
        if m:
            m_blocks, n_blocks = _arrays.cdiv(m, CUDA_BM), _arrays.cdiv(n, CUDA_BN)
            if splits is None:
                splits = max(1, (4 * st["sms"]) // m_blocks)
            splits = max(1, min(int(splits), n_blocks))
            per = _arrays.cdiv(n_blocks, splits) * CUDA_BN
            splits = _arrays.cdiv(n, per)
            fn = st["funcs"]["lineside_knn_k1" if k == 1 else "lineside_knn_k16"]
            i32 = np.int32
            target = out if splits == 1 else _arrays.DeviceBuffer(st, nbytes=4 * splits * m * k)
            fn(np.uintp(q.ptr), np.uintp(bdev.ptr), np.uintp(bsq.ptr), np.uintp(target.ptr), i32(m), i32(n), i32(d),
               i32(d), i32(d), i32(k), i32(per), i32(splits > 1), block=CUDA_THREADS, grid=(m_blocks, splits, 1))
            if splits > 1:
                st["funcs"]["lineside_knn_merge"](np.uintp(target.ptr), np.uintp(out.ptr), i32(m), i32(splits), i32(k),
                                                  block=(CUDA_MERGE_THREADS, 1, 1),
                                                  grid=(_arrays.cdiv(m, CUDA_MERGE_THREADS), 1, 1))
        return out.result(st, (m,), np.float32)


# ------------------------------------------------------------------------------------- dispatch entries
# kernels.dispatch.knn_score calls the one it picked: any array kind in, the same kind out (CPU torch
# tensors take the CPU path everywhere). The prepared bank is cached per bank object.
def _on_cpu(queries, bank, k=1, bank_sqnorm=None):
    b = _arrays.host(bank)
    prepared = bank_cache.cached(bank, "cpu-aug", lambda x: prepare_bank(b, bank_sqnorm))
    return knn_score_reference(_arrays.host(queries), b, k, prepared=prepared)


def _on_triton(queries, bank, k=1, bank_sqnorm=None):
    kind = _arrays.kind(queries)
    if kind == "torch-cpu":
        return _on_cpu(queries, bank, k, bank_sqnorm)
    import torch

    def upload(x):
        b16 = _arrays.to_torch(x).to(torch.float16).contiguous()
        return b16, b16.float().pow(2).sum(1).contiguous()

    b16, bsq = bank_cache.cached(bank, "triton-f16", upload)
    q16 = _arrays.to_torch(queries).to(torch.float16).contiguous()
    return _arrays.from_torch(knn_score(q16, b16, k, bsq), kind)


def _on_cuda(queries, bank, k=1, bank_sqnorm=None):
    kind = _arrays.kind(queries)
    if k > CUDA_KMAX and kind == "numpy":
        log.warning("knn_score: the CUDA kernel averages at most %d neighbours; k=%d runs on the CPU", CUDA_KMAX, k)
        return _on_cpu(queries, bank, k, bank_sqnorm)
    if kind == "torch-cpu":
        return _on_cpu(queries, bank, k, bank_sqnorm)
    return knn_score_cuda(queries, bank, k, cache=lambda what, build: bank_cache.cached(bank, what, build))


IMPLEMENTATIONS = {"cpu-blas": _on_cpu, "triton": _on_triton, "cuda": _on_cuda}


# ------------------------------------------------------------------------------------------------ bench
BENCH_SHAPES = [(1024, 16384, 128, 1), (784, 16384, 384, 1), (1024, 16384, 128, 3)]  # (M, N, D, k)
BENCH_SHAPES_QUICK = [(200, 2000, 128, 1), (64, 500, 33, 3)]


def bench_cpu(shapes, timer, rng, matmul_gflops: float, target_fraction: float) -> list[dict]:
    """kernels.bench's CPU rows: the reference (the dispatcher's CPU path) in GFLOP/s, as a fraction of
    numpy's float32 matmul (``matmul_gflops``, same run); ``target_met`` where the target applies."""
    rows = []
    for m, nb, d, k in shapes:
        q = rng.standard_normal((m, d), dtype=np.float32)
        bank = rng.standard_normal((nb, d), dtype=np.float32)
        prepared = prepare_bank(bank)
        t = timer(lambda: knn_score_reference(q, bank, k, prepared=prepared))
        gflops = 2.0 * m * nb * d / t / 1e9
        row = {"impl": "cpu-blas", "M": m, "N": nb, "D": d, "k": k, "ms": round(t * 1e3, 3),
               "gflops": round(gflops, 2), "fraction_of_matmul": round(gflops / matmul_gflops, 3)}
        if d >= 128 and m * nb >= 1e7 and k == 1:
            row["target_met"] = gflops >= target_fraction * matmul_gflops
        rows.append(row)
    return rows


def bench_gpu(shapes, measure, dev, gen, cuda_ok: bool) -> list[dict]:
    """kernels.bench's GPU rows: the Triton (and CUDA) kernels beside torch cdist + min on ``dev``,
    each checked against it. ``measure(base, impl, fn, work, unit, ref)`` times one row."""
    import torch

    rows = []
    for m, nb, d, k in shapes:
        q = torch.randn(m, d, generator=gen).to(dev, torch.float16)
        b = torch.randn(nb, d, generator=gen).to(dev, torch.float16)
        bsq = b.float().pow(2).sum(1)
        flops = 2.0 * m * nb * d
        base = {"M": m, "N": nb, "D": d, "k": k}

        def torch_knn():
            dist = torch.cdist(q.float(), b.float())  # (M, N): what the kernels avoid storing
            return dist.min(1).values if k == 1 else dist.topk(k, largest=False).values.mean(1)

        ref = torch_knn()
        rows.append(measure(base, "triton", lambda: knn_score(q, b, k, bsq), flops, "gflops", ref))
        if cuda_ok and k <= CUDA_KMAX:
            rows.append(measure(base, "cuda", lambda: knn_score_cuda(q, b, k), flops, "gflops", ref))
        rows.append(measure(base, "torch-cdist", torch_knn, flops, "gflops"))
    return rows
