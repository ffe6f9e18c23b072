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

from runtime.contracts.protocol import DEFAULT_MAX_PIXELS, ENDPOINT_PREFIXES


class ConfigError(ValueError):
    pass


# `lineside run`'s flags are these fields' (runtime/cli/run.py builds each from its field: name, type, choices,
# default); the groups of its --help
SOCKETS, MODEL, TEACHER, SECURITY = "sockets", "model", "teacher fallback", "security and limits"


def flag(name: str, help: str, group: str | None, **argparse_kw) -> dict:
    """A field's ``json_schema_extra``: the field is the ``lineside run`` flag ``name`` in --help ``group``."""
    return {"flag": {"name": name, "help": help, "group": group, **argparse_kw}}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _endpoint(v: Optional[str]) -> Optional[str]:
    if v is not None and not v.startswith(ENDPOINT_PREFIXES):
        raise ValueError(f"{v!r} is not a ZeroMQ endpoint (tcp://HOST:PORT or ipc://PATH)")
    return v


class Sockets(_Section):
    # ROUTER, bound: frames in, one reply (ack/busy/error) each
    ingress: str = Field("tcp://127.0.0.1:5555", json_schema_extra=flag("--ingress", "ROUTER bind endpoint for pushed frames", SOCKETS))
    # PUB, bound: topic b"verdict.<camera_id>"
    verdicts: str = Field("tcp://127.0.0.1:5556", json_schema_extra=flag("--verdicts", "PUB bind endpoint for verdicts", SOCKETS))
    # ROUTER, bound: status | metrics | replay | reload | shutdown. An ipc:// socket file (mode 0600, set on bind),
    # so only this user (and root) can reach it; in the working directory, like the journal.
    control: str = Field("ipc://lineside-control.sock", json_schema_extra=flag(
        "--control", "control ROUTER bind endpoint (an ipc:// socket file only this user may open)", SOCKETS))
    _check = field_validator("ingress", "verdicts", "control")(_endpoint)


ROLES = ("ingress", "verdicts", "control")  # one CURVE server key and one allowed-keys directory per socket


def _key_path(name: str, help: str):
    """An optional key file or key directory: the security flag ``name``, unset by default."""
    return Field(None, json_schema_extra=flag(name, help, SECURITY))


class Security(_Section):
    """CURVE server keys (``lineside keys``) per socket. Each socket admits the clients whose public
    certificates are in its own directory (cameras on ingress, subscribers on verdicts, operators on
    control), or in ``allowed_keys`` for a socket not given its own."""
    ingress_secret: Optional[str] = _key_path("--ingress-secret", "ingress CURVE secret key file (lineside keys)")
    verdicts_secret: Optional[str] = _key_path("--verdicts-secret", "verdict PUB CURVE secret key file")
    control_secret: Optional[str] = _key_path("--control-secret", "control CURVE secret key file")
    # directory of client public certificates: every socket without its own
    allowed_keys: Optional[str] = _key_path(
        "--allowed-keys", "directory of client public keys (CURVE), for every socket without its own")
    ingress_allowed_keys: Optional[str] = _key_path(
        "--ingress-allowed-keys", "cameras' public keys: the only ones ingress admits")
    verdicts_allowed_keys: Optional[str] = _key_path(
        "--verdicts-allowed-keys", "subscribers' public keys: the only ones the verdict PUB admits")
    control_allowed_keys: Optional[str] = _key_path(
        "--control-allowed-keys", "operators' public keys: the only ones control admits")
    # allow binding a network address without CURVE (trusted networks only)
    insecure: bool = Field(False, json_schema_extra=flag(
        "--insecure", "allow non-loopback binds without CURVE", SECURITY))
    # allow control on TCP loopback without CURVE: any local user could then reload or shut the daemon down
    insecure_control: bool = Field(False, json_schema_extra=flag(
        "--insecure-control", "allow control on TCP loopback without CURVE (any local user could reload or shut "
        "down)", SECURITY))
    # directory of Ed25519 public keys (*.ed25519.pub): serve only artifacts one of them signed (runtime/contracts/signing.py),
    # on start and on reload; None: unsigned artifacts are served
    trusted_signers: Optional[str] = Field(None, min_length=1, json_schema_extra=flag(
        "--trusted-signers", "serve only artifacts signed by a key in DIR (*.ed25519.pub), on start and on reload",
        MODEL, metavar="DIR"))

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
    name: Literal["auto", "onnxruntime", "openvino", "tensorrt"] = Field("auto", json_schema_extra=flag(
        "--backend", "inference backend (auto: the fastest this machine has)", MODEL))
    threads: int = Field(1, ge=1, le=256, json_schema_extra=flag(
        "--threads", "threads per judged frame: backend, BLAS scoring, OpenCV", MODEL))
    workers: int = Field(1, ge=1, le=64, json_schema_extra=flag(
        "--workers", "frames judged at once, each by its own judge thread, verdicts still in frame order", MODEL))
    device: Optional[str] = Field(None, json_schema_extra=flag(
        "--device", "onnxruntime: auto, cpu or cuda; openvino: CPU or GPU", MODEL))
    allow_forced: bool = Field(False, json_schema_extra=flag(
        "--allow-forced", "serve a model its INT8 guard failed (distill quantize --force), with a warning", MODEL))


class QueueCfg(_Section):
    size: int = Field(8, ge=1, le=100_000, json_schema_extra=flag(
        "--queue-size", "frames waiting for the judge", "queue"))
    overload: Literal["drop_oldest", "reject_newest"] = Field("drop_oldest", json_schema_extra=flag(
        "--overload", "a full queue drops its oldest frame, or answers the newest busy", "queue"))
    publish_size: int = Field(4096, ge=16)  # verdicts waiting to be journaled and published


class Camera(_Section):
    source: Optional[str] = Field(None, json_schema_extra=flag(
        "--camera", "device index, URL, GStreamer pipeline, video file or image folder", "camera"))
    camera_id: str = Field("cam0", json_schema_extra=flag("--camera-id", "camera id", "camera"))
    mode: Literal["trigger", "free"] = "trigger"
    trigger: Optional[str] = Field(None, json_schema_extra=flag(  # a PLC gateway's PUB, for mode "trigger"
        "--trigger", "SUB endpoint for trigger messages (else free-running at --rate)", "camera"))
    rate_hz: float = Field(10.0, gt=0, le=10_000, json_schema_extra=flag(
        "--rate", "free-running grab rate, Hz", "camera"))  # mode "free"
    loop: bool = True  # replay a file or folder from the start when it ends
    want_mask: bool = False
    _check = field_validator("trigger")(_endpoint)


class Teacher(_Section):
    # DEALER connects here: a `teacher serve` or `teacher serve broker` endpoint; None: edge only. Several
    # (a list, or one string with commas): the DEALER connects to all and spreads requests over those whose
    # connection is up; a server that goes down drops out, and what it held is resent by Lazy Pirate. For
    # heartbeats and re-queueing on the server side, put the servers behind one broker instead.
    address: Optional[str | list[str]] = Field(None, json_schema_extra=flag(
        "--teacher", "teacher server endpoint (tcp://HOST:PORT), or several with commas; unset: edge only", TEACHER))
    secret_file: Optional[str] = Field(None, json_schema_extra=flag(
        "--teacher-secret", "this edge's CURVE secret key file", TEACHER))
    server_public_file: Optional[str] = Field(None, json_schema_extra=flag(
        "--teacher-key", "the teacher server's CURVE public key file", TEACHER))
    request_timeout_ms: int = Field(2500, ge=10, json_schema_extra=flag(
        "--teacher-timeout-ms", "silence after which the request is resent on a new socket (Lazy Pirate)", TEACHER))
    retries: int = Field(2, ge=0, le=20)  # resends per frame before it waits for recovery
    deadline_ms: int = Field(10_000, ge=50, json_schema_extra=flag(
        "--teacher-deadline-ms", "after this the frame resolves as teacher_unreachable", TEACHER))
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
    path: str = Field("lineside-journal.sqlite3", json_schema_extra=flag("--journal", "SQLite journal path", "journal"))
    # NORMAL in WAL mode survives a killed process (kill -9): committed transactions are in the WAL file;
    # only a power cut can lose the last commits. FULL fsyncs every commit (power-cut safe, ~ms per commit on
    # eMMC/SD cards). See runtime/daemon/journal.py.
    synchronous: Literal["NORMAL", "FULL"] = Field("NORMAL", json_schema_extra=flag(
        "--synchronous", "SQLite synchronous mode of the journal (FULL survives power loss)", "journal"))
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
    max_frame_bytes: int = Field(64 << 20, ge=1024, json_schema_extra=flag(
        "--max-frame-bytes", "larger frame payloads get an error verdict", SECURITY))
    max_message_bytes: int = Field(128 << 20, ge=1024, json_schema_extra=flag(
        "--max-message-bytes", "ZMQ_MAXMSGSIZE: a larger message part disconnects its sender", SECURITY))
    # Pixels a frame may have, raw or encoded; an encoded frame's size is read from its JPEG/PNG header and
    # checked before decoding, so decoded memory is bounded here, not by what a sender claims.
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    sender_rate_hz: float = Field(1000.0, gt=0, json_schema_extra=flag(
        "--sender-rate-hz", "frames per second one sender may push (token bucket)", SECURITY))
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
    metrics_port: Optional[int] = Field(None, ge=0, le=65535, json_schema_extra=flag(
        "--metrics-port", "Prometheus /metrics on --metrics-host:PORT (0: any free port; unset: off)", SOCKETS))
    # 0.0.0.0 in a container so the scraper can reach it (read-only data)
    metrics_host: str = Field("127.0.0.1", json_schema_extra=flag(
        "--metrics-host", "address the metrics endpoint listens on", SOCKETS))
    artifacts_dir: Optional[str] = Field(None, json_schema_extra=flag(
        "--artifacts-dir", "reload accepts only artifacts under this directory (unset: the artifact's parent)", MODEL))
    heartbeat_interval_s: float = Field(0.25, gt=0)  # PUB heartbeat (topic b"hb"): subscribers know they are live
    drain_timeout_s: float = Field(3.0, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", json_schema_extra=flag(
        "--log-level", "log level of the lineside loggers", None))


def flag_fields() -> list[tuple[str, object, dict]]:
    """(dotted field, pydantic FieldInfo, its flag) for every field that is a ``lineside run`` flag, in the order
    the config declares them."""
    out = []
    for name, f in Config.model_fields.items():
        ann = f.annotation
        subs = ann.model_fields.items() if isinstance(ann, type) and issubclass(ann, BaseModel) else [(None, f)]
        for k, sub in subs:
            fl = (sub.json_schema_extra or {}).get("flag") if isinstance(sub.json_schema_extra, dict) else None
            if fl:
                out.append((name if k is None else f"{name}.{k}", sub, fl))
    return out


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
