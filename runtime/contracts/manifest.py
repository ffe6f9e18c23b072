"""The student artifact's ``manifest.json``: everything the edge needs to run a student, self-described.

Written by ``distill export``, read by ``lineside run``. A reader refuses a format version it does not
know and any file whose sha256 differs from the manifest, naming the file.

Versions: 2 ships two graphs, the edge graph (``models.fp32``/``int8``/``openvino_xml``, returning only
``outputs``, what the edge scores with) and the full graph (``models.full``, every output: ``full_outputs``),
and may name an approximate nearest-neighbour index of the bank (``scoring.index``). Version 1 artifacts
are still read: their one graph is both (``full_model``), and their search is exact.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.contracts.featurespec import FeatureSpec
from runtime.contracts.formats import ContractError, check_format
from runtime.bank_index import DEFAULT_INDEX, INDEX_KINDS
from runtime.scoring import DEFAULT_BLUR_SIGMA_PX, DEFAULT_K, DEFAULT_SCORE_TOPK, SCORING_MODES, ScoreNorm

MANIFEST_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)  # what this reader accepts (see the module doc)
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"  # runtime/contracts/signing.py: the manifest's signature, written after it, never in ``files``


class Preprocess(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int  # square network input side, px
    color_order: Literal["RGB", "BGR"] = "RGB"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # on [0, 1] pixels
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    resize: Literal["bilinear"] = "bilinear"  # cv2.INTER_LINEAR, half-pixel centres


class IndexSpec(BaseModel):
    """The bank's nearest-neighbour search (runtime/bank_index.py): exact BLAS, or a faiss index or an int8
    search graph built at export with the search parameters export verified against exact search."""
    model_config = ConfigDict(extra="forbid")
    kind: Literal[INDEX_KINDS] = DEFAULT_INDEX
    file: str = ""  # faiss.write_index file or int8 ONNX graph, checksummed like the models ("" for exact)
    params: dict[str, int] = Field(default_factory=dict)  # ivf: nlist, nprobe; hnsw: m, ef_search; int8: group, rerank
    check: dict = Field(default_factory=dict)  # export's measurement against exact search


class Scoring(BaseModel):
    """How the edge turns the student's embedding into a map and a score (distill's memory bank)."""
    model_config = ConfigDict(extra="forbid")
    bank_file: str = "bank.npy"  # float16 (N, D) coreset of good-image embeddings
    embedding_output: str = "embedding"  # ONNX output holding (1, D, h, w)
    k: int = DEFAULT_K
    blur_sigma_px: float = DEFAULT_BLUR_SIGMA_PX
    score_topk: int = DEFAULT_SCORE_TOPK
    region_threshold: float = 0.0  # map value above which pixels belong to a region (0: use threshold)
    min_region_px: int = 16
    # "bank": the map above; "head"/"both": the distilled mask head's map, alone or averaged with the bank's,
    # each divided by its norm (runtime.scoring.score_outputs). Norms: each part's calibrated good-image level.
    mode: Literal[SCORING_MODES] = "bank"
    bank_norm: float = Field(1.0, gt=0)
    head_norm: float = Field(1.0, gt=0)
    index: IndexSpec = Field(default_factory=IndexSpec)


class ScoreNormalization(BaseModel):
    """runtime.scoring.ScoreNorm's constants: raw ``low`` -> 0, ``threshold`` -> 0.5, ``high`` -> 1 (clipped)."""
    model_config = ConfigDict(extra="allow")
    low: float  # the lowest good validation score
    threshold: float  # the calibrated threshold (= Calibration.threshold)
    high: float  # the highest validation score
    source: str = ""  # where they were measured

    def norm(self) -> ScoreNorm:
        return ScoreNorm.checked(self.low, self.threshold, self.high)


class Calibration(BaseModel):
    model_config = ConfigDict(extra="allow")
    threshold: float  # score >= threshold -> defect
    band: tuple[float, float]  # uncertainty band [lo, hi]: inside -> ask the teacher
    ood_limit: float  # mean nearest-bank distance above which a frame is out of distribution
    target_agreement: float = 0.995
    val_agreement_outside_band: Optional[float] = None
    val_fallback_rate: Optional[float] = None
    # the operator's 0-1 score; absent from artifacts exported before it (runtime.scoring.ScoreNorm.default then)
    normalization: Optional[ScoreNormalization] = None

    def score_norm(self) -> ScoreNorm:
        """The normalisation verdicts carry as ``score_norm``: the recorded one, else the default from the threshold."""
        if self.normalization is not None:
            return ScoreNorm.checked(self.normalization.low, self.threshold, self.normalization.high)
        return ScoreNorm.default(self.threshold, self.band)


class Producer(BaseModel):
    """What wrote the artifact and when; in the manifest's bytes, so the model hash and the signature cover it."""
    model_config = ConfigDict(extra="allow")
    lineside: str  # the producing lineside's version
    commit: str = ""  # its source commit, when it ran from a git checkout
    created: str = ""  # ISO-8601 UTC, e.g. 2025-01-31T12:00:00Z
    command: str = ""  # e.g. "distill export"

    @classmethod
    def now(cls, command: str = "") -> "Producer":
        import time

        from runtime.report import build_info

        info = build_info()
        return cls(lineside=info["lineside"], commit=info.get("commit", ""), command=command,
                   created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


class ArtifactManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int
    name: str = "student"
    student: str = ""  # registry name, e.g. "s"
    feature_spec: dict  # FeatureSpec.to_dict()
    preprocess: Preprocess
    outputs: list[str]  # the served (edge) graph's output names, in order
    full_outputs: list[str] = Field(default_factory=list)  # models["full"]'s (v1: the one graph's = outputs)
    scoring: Scoring = Field(default_factory=Scoring)
    calibration: Calibration
    labels: list[str] = Field(default_factory=list)  # defect vocabulary of the head, if any
    teacher_hash: str = ""  # sha256 of the teacher checkpoint's config + weights
    quantization: str = "fp32"  # fp32 | int8-nncf | int8-ort
    # role -> file: fp32, int8, openvino_xml (edge graph: what the backends serve), full (every output: eval),
    # torch, tensorrt_plan
    models: dict[str, str] = Field(default_factory=dict)
    # roles of models shipped past a failed INT8 accuracy guard (`distill quantize --force`): the edge serves
    # them only when told to (`lineside run --allow-forced`), so a forced model is never served silently
    forced: list[str] = Field(default_factory=list)
    tolerance: dict[str, float] = Field(default_factory=dict)  # backend -> max abs score diff vs torch
    metrics: dict = Field(default_factory=dict)  # calibration / validation figures
    files: dict[str, str] = Field(default_factory=dict)  # relative path -> sha256
    producer: Optional[Producer] = None  # absent from artifacts exported before it was recorded

    @property
    def spec(self) -> FeatureSpec:
        return FeatureSpec.from_dict(self.feature_spec)

    @property
    def full_model(self) -> str:
        """The FP32 graph with every output (s8..s64 for fidelity): ``models.full``, or a v1 artifact's one graph."""
        return self.models.get("full") or self.models["fp32"]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: str | Path, manifest: ArtifactManifest) -> Path:
    """Hash every file under the directory (manifest and signature excluded) into ``files`` and write
    manifest.json. A signature left from before no longer matches it, so it is removed."""
    d = Path(directory)
    (d / SIGNATURE_NAME).unlink(missing_ok=True)
    files = {str(p.relative_to(d)): sha256_file(p)
             for p in sorted(d.rglob("*")) if p.is_file() and p.name != MANIFEST_NAME}
    manifest = manifest.model_copy(update={"files": files})
    (d / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2))
    return d / MANIFEST_NAME


def read_manifest_bytes(directory: str | Path) -> bytes:
    d = Path(directory)
    p = d / MANIFEST_NAME
    if not p.is_file():
        raise ContractError(f"{d}: not an artifact (no {MANIFEST_NAME})")
    return p.read_bytes()


def load_manifest(directory: str | Path, verify: bool = True, data: bytes | None = None) -> ArtifactManifest:
    """Read and check an artifact directory's manifest; ``verify`` re-hashes every listed file. ``data``: the
    manifest.json bytes already read (the ones a signature was checked over), parsed instead of re-reading."""
    d = Path(directory)
    p = d / MANIFEST_NAME
    if data is None:
        data = read_manifest_bytes(d)
    try:
        raw = json.loads(data)
    except UnicodeDecodeError:
        raise ContractError(f"{p}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ContractError(f"{p}: not valid JSON ({e.msg})") from None
    check_format(raw, str(p), versions=READABLE_FORMAT_VERSIONS, what="manifest")
    try:
        m = ArtifactManifest(**raw)
    except ValidationError as e:
        err = e.errors()[0]
        raise ContractError(f"{p}: field {'.'.join(map(str, err['loc']))!r}: {err['msg']}") from None
    m.spec  # validates the FeatureSpec's own version
    if verify:
        for rel, digest in m.files.items():
            f = d / rel
            if not f.is_file():
                raise ContractError(f"{d}: file {rel} listed in the manifest is missing")
            actual = sha256_file(f)
            if actual != digest:
                raise ContractError(f"{d}: file {rel} fails its checksum (sha256 {actual[:12]}… != manifest {digest[:12]}…); "
                                    "the artifact was modified or damaged")
        read = {f"model {role}": rel for role, rel in m.models.items()} | {"bank_file": m.scoring.bank_file}
        if m.scoring.index.file:
            read["scoring.index.file"] = m.scoring.index.file
        for what, rel in read.items():  # everything the engine reads is covered by the manifest (and its signature)
            if rel not in m.files:
                raise ContractError(f"{d}: {what} = {rel} is not among the manifest's checksummed files")
    return m
