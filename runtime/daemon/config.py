"""``lineside run`` configuration: a TOML file (every key optional), then command-line overrides.

Every field has a default that works on one machine (loopback sockets, ONNX Runtime on the CPU, a
journal in the working directory). An invalid value is refused at start with the field's dotted name:
``ConfigError: queue.overload: Input should be 'drop_oldest' or 'reject_newest'``.

    [sockets]  ingress = "tcp://127.0.0.1:5555"   verdicts = "tcp://127.0.0.1:5556"   control = "ipc://..."
    [security] ingress_secret = ...  ingress_allowed_keys = "cameras/"  allowed_keys = ...  trusted_signers = ...
    [queue]    size = 8   overload = "drop_oldest"
    [teacher]  address = "tcp://gpu-server:5560"  secret_file = ...  server_public_file = ...
               address = ["tcp://gpu-a:5560", "tcp://gpu-b:5560"]   (or "tcp://gpu-a:5560,tcp://gpu-b:5560")
    [journal]  path = "lineside-journal.sqlite3"  synchronous = "NORMAL"  retention_rows = 1000000
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runtime.contracts.protocol import DEFAULT_MAX_PIXELS

ENDPOINT_PREFIXES = ("tcp://", "ipc://", "inproc://")


class ConfigError(ValueError):
    pass


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _endpoint(v: Optional[str]) -> Optional[str]:
    if v is not None and not v.startswith(ENDPOINT_PREFIXES):
        raise ValueError(f"{v!r} is not a ZeroMQ endpoint (tcp://HOST:PORT or ipc://PATH)")
    return v


class Sockets(_Section):
    ingress: str = "tcp://127.0.0.1:5555"  # ROUTER, bound: frames in, one reply (ack/busy/error) each
    verdicts: str = "tcp://127.0.0.1:5556"  # PUB, bound: topic b"verdict.<camera_id>"
    # ROUTER, bound: status | metrics | replay | reload | shutdown. An ipc:// socket file (mode 0600, set on bind),
    # so only this user (and root) can reach it; in the working directory, like the journal.
    control: str = "ipc://lineside-control.sock"
    _check = field_validator("ingress", "verdicts", "control")(_endpoint)


ROLES = ("ingress", "verdicts", "control")  # one CURVE server key and one allowed-keys directory per socket


class Security(_Section):
    """CURVE server keys (``lineside keys``) per socket. Each socket admits the clients whose public
    certificates are in its own directory (cameras on ingress, subscribers on verdicts, operators on
    control), or in ``allowed_keys`` for a socket not given its own."""
    ingress_secret: Optional[str] = None
    verdicts_secret: Optional[str] = None
    control_secret: Optional[str] = None
    allowed_keys: Optional[str] = None  # directory of client public certificates: every socket without its own
    ingress_allowed_keys: Optional[str] = None
    verdicts_allowed_keys: Optional[str] = None
    control_allowed_keys: Optional[str] = None
    insecure: bool = False  # allow binding a network address without CURVE (trusted networks only)
    # allow control on TCP loopback without CURVE: any local user could then reload or shut the daemon down
    insecure_control: bool = False
    # directory of Ed25519 public keys (*.ed25519.pub): serve only artifacts one of them signed (runtime/contracts/signing.py),
    # on start and on reload; None: unsigned artifacts are served
    trusted_signers: Optional[str] = Field(None, min_length=1)

    def allowed_keys_for(self, role: str) -> Optional[str]:
        return getattr(self, f"{role}_allowed_keys") or self.allowed_keys

    @model_validator(mode="after")
    def _auth_needs_keys(self):
        for role in ROLES:
            secret, own = getattr(self, f"{role}_secret"), getattr(self, f"{role}_allowed_keys")
            if secret and not self.allowed_keys_for(role):
                raise ValueError(f"{role}_allowed_keys: a CURVE server key is set for {role} but no allowed-keys "
                                 "directory (its own or allowed_keys); without it any client key would be admitted")
            if own and not secret:
                raise ValueError(f"{role}_allowed_keys: set, but {role}_secret is not: the {role} socket would not "
                                 "authenticate anyone")
        return self


class BackendCfg(_Section):
    name: Literal["auto", "onnxruntime", "openvino", "tensorrt"] = "auto"
    threads: int = Field(1, ge=1, le=256)  # per judged frame: backend intra-op, BLAS scoring, OpenCV
    workers: int = Field(1, ge=1, le=64)  # frames judged at once, each by its own judge thread
    device: Optional[str] = None  # onnxruntime: auto|cpu|cuda ; openvino: CPU|GPU
    allow_forced: bool = False  # serve a model shipped past its INT8 guard (manifest "forced"), with a warning


class QueueCfg(_Section):
    size: int = Field(8, ge=1, le=100_000)  # frames waiting for the judge
    overload: Literal["drop_oldest", "reject_newest"] = "drop_oldest"
    publish_size: int = Field(4096, ge=16)  # verdicts waiting to be journaled and published


class Camera(_Section):
    source: Optional[str] = None  # device index "0", rtsp://..., a GStreamer pipeline, a video file, an image folder
    camera_id: str = "cam0"
    mode: Literal["trigger", "free"] = "trigger"
    trigger: Optional[str] = None  # SUB endpoint (a PLC gateway's PUB) for mode "trigger"
    rate_hz: float = Field(10.0, gt=0, le=10_000)  # mode "free"
    loop: bool = True  # replay a file or folder from the start when it ends
    want_mask: bool = False
    _check = field_validator("trigger")(_endpoint)


class Teacher(_Section):
    # DEALER connects here: a `teacher serve` or `teacher serve broker` endpoint; None: edge only. Several
    # (a list, or one string with commas): the DEALER connects to all and spreads requests over those whose
    # connection is up; a server that goes down drops out, and what it held is resent by Lazy Pirate. For
    # heartbeats and re-queueing on the server side, put the servers behind one broker instead.
    address: Optional[str | list[str]] = None
    secret_file: Optional[str] = None  # this edge's CURVE secret
    server_public_file: Optional[str] = None  # the teacher server's public certificate
    request_timeout_ms: int = Field(2500, ge=10)  # silence after which Lazy Pirate reopens and resends
    retries: int = Field(2, ge=0, le=20)  # resends per frame before it waits for recovery
    deadline_ms: int = Field(10_000, ge=50)  # after this the frame resolves as teacher_unreachable
    max_inflight: int = Field(8, ge=1, le=1024)
    backlog: int = Field(256, ge=1)  # pending frames held (in flight + waiting + parked)
    breaker_failures: int = Field(3, ge=1)  # consecutive failures that open the circuit
    breaker_reset_s: float = Field(5.0, gt=0)  # open -> half-open probe after this
    replay_on_recovery: int = Field(64, ge=0)  # parked frames resent when the teacher answers again

    @field_validator("address")
    @classmethod
    def _check_addresses(cls, v):
        if isinstance(v, str) and "," in v:
            v = [a.strip() for a in v.split(",")]
        if isinstance(v, list):
            if not v:
                raise ValueError("an empty list: give one endpoint or more, or leave address unset (edge only)")
            if len(set(v)) != len(v):
                raise ValueError(f"{v!r} names an endpoint twice")
            for a in v:
                _endpoint(a)
            return v[0] if len(v) == 1 else v
        return _endpoint(v)

    @property
    def addresses(self) -> list[str]:
        if self.address is None:
            return []
        return [self.address] if isinstance(self.address, str) else list(self.address)

    @model_validator(mode="after")
    def _keys_in_pairs(self):
        if bool(self.secret_file) != bool(self.server_public_file):
            raise ValueError("secret_file and server_public_file: give both for CURVE, or neither")
        return self


class Journal(_Section):
    path: str = "lineside-journal.sqlite3"
    # NORMAL in WAL mode survives a killed process (kill -9): committed transactions are in the WAL file;
    # only a power cut can lose the last commits. FULL fsyncs every commit (power-cut safe, ~ms per commit on
    # eMMC/SD cards). See runtime/daemon/journal.py.
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    retention_rows: int = Field(1_000_000, ge=100)
    retention_age_s: float = Field(7 * 86400.0, gt=0)
    prune_interval_s: float = Field(60.0, gt=0)
    # payloads of acknowledged frames not yet judged, kept so a restart judges them (runtime/daemon/journal.py);
    # over this, ingress answers busy rather than acknowledge a frame it could not keep
    spool_max_bytes: int = Field(256 << 20, ge=1 << 20)


class Limits(_Section):
    # A frame's payload over max_frame_bytes is refused with an error reply and an error verdict naming its
    # size. Any message part over max_message_bytes (ZMQ_MAXMSGSIZE) never reaches us: ZeroMQ disconnects
    # the sender (counted in lineside_ingress_disconnects_total); it bounds the memory one message can take.
    max_frame_bytes: int = Field(64 << 20, ge=1024)
    max_message_bytes: int = Field(128 << 20, ge=1024)
    # Pixels a frame may have, raw or encoded; an encoded frame's size is read from its JPEG/PNG header and
    # checked before decoding, so decoded memory is bounded here, not by what a sender claims.
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    sender_rate_hz: float = Field(1000.0, gt=0)  # per-sender token bucket
    sender_burst: int = Field(200, ge=1)

    @model_validator(mode="after")
    def _frame_fits_message(self):
        if self.max_message_bytes < self.max_frame_bytes:
            raise ValueError(f"max_message_bytes ({self.max_message_bytes}) is below max_frame_bytes "
                             f"({self.max_frame_bytes}): ZeroMQ would disconnect senders of frames the daemon accepts")
        return self


class Config(_Section):
    sockets: Sockets = Field(default_factory=Sockets)
    security: Security = Field(default_factory=Security)
    backend: BackendCfg = Field(default_factory=BackendCfg)
    queue: QueueCfg = Field(default_factory=QueueCfg)
    camera: Camera = Field(default_factory=Camera)
    teacher: Teacher = Field(default_factory=Teacher)
    journal: Journal = Field(default_factory=Journal)
    limits: Limits = Field(default_factory=Limits)
    metrics_port: Optional[int] = Field(None, ge=0, le=65535)  # Prometheus /metrics; None: off, 0: any free port
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 in a container so the scraper can reach it (read-only data)
    artifacts_dir: Optional[str] = None  # reload accepts only artifacts under it (default: the artifact's parent)
    heartbeat_interval_s: float = Field(0.25, gt=0)  # PUB heartbeat (topic b"hb"): subscribers know they are live
    drain_timeout_s: float = Field(3.0, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


def _describe(e: ValidationError) -> str:
    """Every error at once (a typo'd key would otherwise show up only on the next run), each naming its key; an
    unknown key gets the nearest known one of its section."""
    import difflib

    out = []
    for err in e.errors():
        loc = [str(x) for x in err["loc"]]
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            model = Config
            for k in loc[:-1]:
                ann = model.model_fields.get(k)
                model = ann.annotation if ann is not None and isinstance(ann.annotation, type) else None
                if model is None or not issubclass(model, BaseModel):
                    model = None
                    break
            known = list(model.model_fields) if model is not None else []
            near = [".".join(loc[:-1] + [k]) for k in difflib.get_close_matches(loc[-1], known, n=1)]
            if not near:  # a key put in the wrong section: look in every section
                leaves = {f"{s}.{k}": k for s, f in Config.model_fields.items() if isinstance(f.annotation, type)
                          and issubclass(f.annotation, BaseModel) for k in f.annotation.model_fields}
                near = [d for d, k in leaves.items() if k in difflib.get_close_matches(loc[-1], leaves.values(), n=1)]
            msg = "unknown key" + (f" (did you mean {near[0]!r}?)" if near else "")
        out.append(f"{'.'.join(loc)}: {msg}")
    return "; ".join(out)


def _set(d: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> Config:
    """TOML file (optional) + ``{"queue.size": 4, ...}`` overrides (None values ignored) -> Config."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: not valid TOML ({e})") from None
    for k, v in (overrides or {}).items():
        if v is not None:
            _set(raw, k, v)
    try:
        return Config(**raw)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from None


def to_toml(cfg: Config) -> str:
    """The effective configuration as a TOML file an operator can start from (unset options commented)."""
    def val(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    top, sections = [], []
    for name, v in cfg.model_dump().items():
        if isinstance(v, dict):
            lines = [f"[{name}]"] + [f"# {k} =" if x is None else f"{k} = {val(x)}" for k, x in v.items()]
            sections.append("\n".join(lines))
        else:
            top.append(f"# {name} =" if v is None else f"{name} = {val(v)}")
    return "\n".join(top) + "\n\n" + "\n\n".join(sections) + "\n"
