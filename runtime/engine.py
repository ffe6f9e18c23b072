"""Engine: one artifact, one backend, frame -> Verdict. The judge of the daemon and of ``lineside bench``.

    image (H, W[, 3]) uint8 RGB -> kernels.dispatch.preprocess (manifest's size, mean, std)
      -> backend.run (the edge graph: only the outputs scoring reads) -> outputs
      -> scoring.score_outputs (the bank, searched exactly or through the artifact's index, and the
         distilled head if the manifest's scoring.mode says so)
      -> scoring.decide (threshold, band) ; ood from mean_nn_distance > ood_limit
      -> regions (and mask on request), scaled back to the frame's pixels

Scoring happens at the network input size S x S (``image_hw=(S, S)``): the score, and so the verdict,
does not depend on the camera's resolution, and distill's calibration scores the same way.
"""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np

from kernels import dispatch
from runtime.backends import model_file, open_backend
from runtime.bank_index import open_index
from runtime.contracts.manifest import ArtifactManifest, load_manifest, read_manifest_bytes
from runtime.scoring import decide, find_regions, score_outputs
from runtime.contracts.verdict import Region, Verdict

log = logging.getLogger("lineside.engine")


class Engine:
    def __init__(self, artifact_dir: str | Path, backend: str = "auto", threads: int = 1, verify: bool = True,
                 manifest: ArtifactManifest | None = None, device: str | None = None, allow_forced: bool = False,
                 trusted_signers: str | Path | None = None):
        """``allow_forced``: serve a model the manifest marks as shipped past its INT8 guard (with a
        warning); without it such a model is refused with a ContractError naming it. ``trusted_signers``: a
        directory of Ed25519 public keys; the artifact is opened only if one of them signed its manifest
        (runtime/contracts/signing.py), else a SignatureError (a ContractError) says why."""
        from runtime.contracts.formats import ContractError

        self.artifact_dir = Path(artifact_dir).resolve()
        # the manifest is read once: the bytes a signature is checked over are the ones parsed and hashed
        data = read_manifest_bytes(self.artifact_dir) if manifest is None else None
        self.signer = None
        if trusted_signers is not None:
            if manifest is not None or not verify:
                raise ValueError("trusted_signers needs the manifest read and its files verified here "
                                 "(no manifest=, verify=True)")
            from runtime.contracts.signing import verify_manifest

            self.signer = verify_manifest(self.artifact_dir, data, trusted_signers)
        self.manifest = manifest or load_manifest(self.artifact_dir, verify=verify, data=data)
        m = self.manifest
        bank_path = self.artifact_dir / m.scoring.bank_file
        if not bank_path.is_file():
            raise ContractError(f"{self.artifact_dir}: bank file {m.scoring.bank_file} is missing")
        self.bank = np.ascontiguousarray(np.load(bank_path), dtype=np.float32)  # (N, D)
        self.index = open_index(self.artifact_dir, m.scoring.index, threads)  # None: exact search
        self.backend = open_backend(self.artifact_dir, m, backend, threads=threads, device=device)
        self.size = m.preprocess.size
        # the model this backend runs ("auto" decides only when it opens one)
        path = model_file(self.artifact_dir, m, self.backend.name.split("[")[0])
        self.model_role = next((r for r, rel in m.models.items() if (self.artifact_dir / rel) == path), "")
        self.forced = self.model_role in m.forced
        if self.forced and not allow_forced:
            self.backend.close()
            raise ContractError(f"{self.artifact_dir}: {self.backend.name} would serve {path.name}, which was shipped "
                                "past its INT8 accuracy guard (distill quantize --force); re-quantize, pick another "
                                "backend, or serve it knowingly with --allow-forced")
        if self.forced:
            log.warning("serving %s on %s: shipped past its INT8 accuracy guard (--allow-forced)", path.name,
                        self.backend.name)
        # Over the manifest's own bytes too: its threshold, band and scoring decide verdicts as much as the
        # weights do, so an edited manifest is a different model in every verdict and in the journal. And over
        # the file this backend runs: the ONNX INT8 model and OpenVINO's IR are different models.
        h = hashlib.sha256(data if data is not None else m.model_dump_json().encode())
        stem = Path(m.models.get(self.model_role, "bank.npy")).with_suffix("")  # an IR's .xml and its .bin
        for rel in sorted(r for r in m.files if Path(r).with_suffix("") == stem):
            h.update(m.files[rel].encode())
        self.model_hash = h.hexdigest()[:16]
        cal = m.calibration
        self.threshold, self.band, self.ood_limit = cal.threshold, tuple(cal.band), cal.ood_limit
        self.score_norm = cal.score_norm()  # the operator's 0-1 score; decisions stay on the raw score
        self.region_level = m.scoring.region_threshold or cal.threshold

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def forward(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Preprocess and run the backend: output name -> array."""
        p = self.manifest.preprocess
        x = dispatch.preprocess(image, p.size, p.mean, p.std, input_order="RGB")
        return self.backend.run(x)

    def judge(self, image: np.ndarray, frame_id: str = "", camera_id: str = "cam0", ts_frame: float = 0.0,
              want_mask: bool = False) -> Verdict:
        """The edge verdict of one uint8 RGB (or grey) frame; ``latencies_ms`` has each stage."""
        m = self.manifest
        t0 = time.perf_counter()
        p = m.preprocess
        x = dispatch.preprocess(image, p.size, p.mean, p.std, input_order="RGB")
        t1 = time.perf_counter()
        out = self.backend.run(x)
        t2 = time.perf_counter()
        s = m.scoring
        res = score_outputs(out, self.bank, (self.size, self.size), mode=s.mode, k=s.k, blur_sigma_px=s.blur_sigma_px,
                            score_topk=s.score_topk, bank_norm=s.bank_norm, head_norm=s.head_norm,
                            embedding_output=s.embedding_output, index=self.index)
        decision, conf, in_band = decide(res.score, self.threshold, self.band, self.score_norm)
        ood = bool(res.mean_nn_distance > self.ood_limit)
        regions: list[Region] = []
        mask = None
        # regions only for a frame judged defect: a good or unknown verdict carries none, so their cost
        # (connected components over the map) is paid only when the decision needs them
        if decision == "defect" and not ood and res.score >= self.region_level:
            regions, keep = find_regions(res.anomaly_map, self.region_level, s.min_region_px, "anomaly",
                                         threshold=self.threshold)
            regions = _scale_regions(regions, image.shape[:2], self.size)
            if want_mask:
                mask = _scale_mask(keep, image.shape[:2])
        elif want_mask:
            mask = np.zeros(image.shape[:2], bool)
        t3 = time.perf_counter()
        if ood:
            decision, conf = "unknown", 0.0
        return Verdict(frame_id=frame_id, camera_id=camera_id, decision=decision, score=float(res.score),
                       score_norm=self.score_norm(res.score), confidence=conf, decided_by="edge", in_band=bool(in_band), ood=ood, regions=regions,
                       latencies_ms={"preprocess": (t1 - t0) * 1e3, "backend": (t2 - t1) * 1e3,
                                     "scoring": (t3 - t2) * 1e3},
                       model_hash=self.model_hash, ts_frame=ts_frame, ts_verdict=time.time(),
                       anomaly_map=res.anomaly_map, mask=mask)

    def close(self) -> None:
        self.backend.close()


def _scale_regions(regions: list[Region], hw: tuple[int, int], size: int) -> list[Region]:
    h, w = hw
    if (h, w) == (size, size):
        return regions
    sy, sx = h / size, w / size
    out = []
    for r in regions:
        x0, y0, x1, y1 = r.bbox
        out.append(Region(bbox=(int(x0 * sx), int(y0 * sy), min(w, int(np.ceil(x1 * sx))), min(h, int(np.ceil(y1 * sy)))),
                          area=int(round(r.area * sx * sy)), label=r.label, confidence=r.confidence, score=r.score))
    return out


def _scale_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if mask.shape == tuple(hw):
        return mask
    import cv2

    return cv2.resize(mask.astype(np.uint8), (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST) > 0
