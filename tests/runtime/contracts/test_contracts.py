"""The versioned contracts of DESIGN.md: FeatureSpec, artifact manifest, wire protocol, verdict."""
import json

import numpy as np
import pytest

from runtime.contracts import protocol
from runtime.contracts.featurespec import FeatureSpec, LevelSpec, sd15_feature_spec
from runtime.contracts.formats import ContractError
from runtime.contracts.manifest import (ArtifactManifest, Calibration, Preprocess, load_manifest, write_manifest)
from runtime.contracts.protocol import ProtocolError
from runtime.contracts.verdict import Region, Verdict, decode_mask_png, encode_mask_png


def test_sd15_spec_strides_and_channels():
    spec = sd15_feature_spec(256)
    assert [(lv.stride, lv.channels) for lv in spec.levels] == [(8, 320), (16, 640), (32, 1280), (64, 1280)]
    assert [spec.grid(lv) for lv in spec.levels] == [32, 16, 8, 4]
    assert FeatureSpec.from_dict(spec.to_dict()) == spec


def test_spec_unknown_version_refused():
    d = sd15_feature_spec().to_dict()
    d["version"] = 99
    with pytest.raises(ContractError, match="version 99"):
        FeatureSpec.from_dict(d)


def test_spec_mismatch_names_level():
    a = sd15_feature_spec(256)
    b = FeatureSpec(256, (LevelSpec("s8", 8, 320), LevelSpec("s16", 16, 640),
                          LevelSpec("s32", 32, 1280), LevelSpec("s64", 64, 640)))
    with pytest.raises(ContractError, match="s64"):
        a.check_compatible(b)


def _artifact(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"not really onnx")
    (tmp_path / "bank.npy").write_bytes(b"bank")
    m = ArtifactManifest(format_version=1, feature_spec=sd15_feature_spec(256).to_dict(),
                         preprocess=Preprocess(size=256), outputs=["embedding"],
                         calibration=Calibration(threshold=1.0, band=(0.8, 1.2), ood_limit=3.0),
                         models={"fp32": "model.onnx"})
    write_manifest(tmp_path, m)
    return tmp_path


def test_manifest_roundtrip_and_checksums(tmp_path):
    d = _artifact(tmp_path)
    m = load_manifest(d)
    assert set(m.files) == {"model.onnx", "bank.npy"}
    assert m.spec.image_size == 256


def test_manifest_tampered_file_refused(tmp_path):
    d = _artifact(tmp_path)
    (d / "bank.npy").write_bytes(b"evil")
    with pytest.raises(ContractError, match="bank.npy fails its checksum"):
        load_manifest(d)


def test_manifest_unknown_version_refused(tmp_path):
    d = _artifact(tmp_path)
    raw = json.loads((d / "manifest.json").read_text())
    raw["format_version"] = 7
    (d / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ContractError, match="format_version 7"):
        load_manifest(d)


def test_protocol_raw_roundtrip():
    img = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    frames = protocol.image_frames("frame", img, frame_id="f1", camera_id="c")
    h = protocol.decode_header(frames, expect=("frame",))
    assert h["frame_id"] == "f1" and h["shape"] == [5, 7, 3]
    np.testing.assert_array_equal(protocol.decode_image(h, frames), img)


@pytest.mark.parametrize("encoding", ["png", "jpeg"])
def test_protocol_compressed_roundtrip(encoding):
    yy, xx = np.mgrid[0:32, 0:40]
    img = np.stack([yy * 4, xx * 3, 128 + 0 * xx], -1).astype(np.uint8)  # smooth: JPEG keeps it close
    frames = protocol.image_frames("frame", img, encoding=encoding, frame_id="f")
    out = protocol.decode_image(protocol.decode_header(frames), frames)
    assert out.shape == img.shape
    assert np.abs(out.astype(int) - img).max() <= (0 if encoding == "png" else 12)


_PNG_8x8 = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000008000000080802000000")


@pytest.mark.parametrize("frames,field", [
    ([b"{not json"], "header"),
    ([b"[1, 2]"], "header"),
    ([b'{"kind": "frame"}'], "v"),
    ([b'{"v": 2, "kind": "frame"}'], "v"),
    ([b'{"v": 1, "kind": "pizza"}'], "kind"),
    ([b'{"v": true, "kind": "frame"}'], "v"),  # a boolean is not the integer 1
    ([b'{"v": 1, "kind": "frame", "ts": NaN}'], "header"),  # NaN / Infinity are not JSON
    ([b'{"v": 1, "kind": "frame", "ts": -Infinity}'], "header"),
    ([b'{"v": 1, "kind": "frame", "frame_id": ' + b"9" * 5000 + b"}"], "header"),  # Python's int-string limit
    ([b'{"v": 1, "kind": "frame", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"], "header"),  # recursion
    ([b'\xff\xfe{}'], "header"),
])
def test_protocol_bad_headers_name_field(frames, field):
    with pytest.raises(ProtocolError) as e:
        protocol.decode_header(frames)
    assert e.value.field == field


@pytest.mark.parametrize("header,payload,field", [
    ({"encoding": "raw", "shape": [4, 4, 3], "dtype": "uint8"}, b"\0" * 47, "payload"),
    ({"encoding": "raw", "shape": [4, 4, 3], "dtype": "complex"}, b"\0" * 48, "dtype"),
    ({"encoding": "raw", "shape": "4x4", "dtype": "uint8"}, b"\0" * 48, "shape"),
    ({"encoding": "raw", "shape": [0, 4, 3], "dtype": "uint8"}, b"", "payload"),
    ({"encoding": "raw", "shape": [4, 4, 2], "dtype": "uint8"}, b"\0" * 32, "shape"),
    ({"encoding": "jpeg"}, b"\xff\xd8garbage", "payload"),
    ({"encoding": "webp"}, b"abc", "encoding"),
    ({"encoding": "raw", "shape": [4, 4], "dtype": "float32"}, b"\0" * 64, "dtype"),
    ({"encoding": "raw", "shape": [True, 4, 3], "dtype": "uint8"}, b"\0" * 12, "shape"),  # bools are not dims
    ({"encoding": "raw", "shape": [4, 4, 2 ** 62], "dtype": "uint8"}, b"\0" * 16, "shape"),  # int64 wrap
    ({"encoding": "raw", "shape": [4000, 4000], "dtype": "uint8"}, b"\0" * 16, "shape"),  # over max_pixels
    ({"encoding": "jpeg"}, _PNG_8x8, "encoding"),  # PNG bytes declared JPEG
    ({"encoding": "png"}, b"GIF89a" + b"\0" * 30, "encoding"),
])
def test_protocol_bad_payloads_name_field(header, payload, field):
    h = {"v": 1, "kind": "frame", **header}
    with pytest.raises(ProtocolError) as e:
        protocol.decode_image(h, [json.dumps(h).encode(), payload], max_pixels=1_000_000)
    assert e.value.field == field


def _bomb(encoding: str, h: int, w: int) -> bytes:
    """A few hundred bytes whose header claims h x w (the size field rewritten in a real 8x8 image)."""
    import cv2

    data = bytearray(cv2.imencode("." + encoding.replace("jpeg", "jpg"), np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    if encoding == "png":
        data[16:24] = w.to_bytes(4, "big") + h.to_bytes(4, "big")
    else:
        i = next(i for i in range(2, len(data) - 9) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC2))
        data[i + 5:i + 9] = h.to_bytes(2, "big") + w.to_bytes(2, "big")
    return bytes(data)


@pytest.mark.parametrize("encoding", ["jpeg", "png"])
def test_decompression_bombs_are_refused_from_their_header_before_decoding(encoding):
    bomb = _bomb(encoding, 8000, 8000)
    assert protocol.encoded_dims(bomb, encoding) == (8000, 8000) and len(bomb) < 2000
    h = {"v": 1, "kind": "frame", "encoding": encoding}
    with pytest.raises(ProtocolError, match="64000000 pixels exceeds the limit of 25000000") as e:
        protocol.decode_image(h, [b"", bomb])
    assert e.value.field == "shape"


@pytest.mark.parametrize("value,ok", [
    ("cam-1", "cam-1"), ("x" * 256, "x" * 256), (17, None), ("\ud800", None), ("", None), (True, None), (1.5, None),
    ("x" * 257, None), ([1], None),
])
def test_ids_are_bounded_valid_utf8_strings(value, ok):
    if ok is None:
        with pytest.raises(ProtocolError) as e:
            protocol.check_id({"frame_id": value}, "frame_id")
        assert e.value.field == "frame_id"
        assert protocol.safe_id({"frame_id": value}, "frame_id", "fallback") == "fallback"
    else:
        assert protocol.check_id({"frame_id": value}, "frame_id") == ok


def test_frame_header_fields_and_defaults():
    fh = protocol.check_frame_header({"v": 1, "kind": "frame", "frame_id": "f1"})
    assert fh == protocol.FrameHeader("f1", "cam0", 0.0, False, "raw", None)
    fh = protocol.check_frame_header({"v": 1, "kind": "infer", "frame_id": "f1", "camera_id": "c2", "ts": 5,
                                      "deadline_ts": 7, "want_mask": True, "encoding": "png"})
    assert fh == protocol.FrameHeader("f1", "c2", 5.0, True, "png", 7.0) and type(fh.ts) is float
    null_deadline = {"v": 1, "kind": "infer", "frame_id": "f1", "deadline_ts": None}
    assert protocol.check_frame_header(null_deadline).deadline_ts is None


@pytest.mark.parametrize("kind", ["frame", "infer"])
@pytest.mark.parametrize("bad,field", [
    ({"frame_id": 7}, "frame_id"),  # an integer is not an id, on the daemon as on the teacher
    ({"frame_id": None}, "frame_id"), ({"camera_id": 3}, "camera_id"),
    ({"ts": "now"}, "ts"), ({"ts": True}, "ts"), ({"ts": None}, "ts"),
    ({"want_mask": "yes"}, "want_mask"), ({"encoding": "webp"}, "encoding"), ({"encoding": ["raw"]}, "encoding"),
])
def test_frame_header_refusals_name_the_field_for_both_kinds(kind, bad, field):
    h = {"v": 1, "kind": kind, "frame_id": "f1", **bad}
    with pytest.raises(ProtocolError) as e:
        protocol.check_frame_header(h)
    assert e.value.field == field


def test_deadline_is_an_infer_field():
    with pytest.raises(ProtocolError, match="deadline_ts: must be a number"):
        protocol.check_frame_header({"v": 1, "kind": "infer", "frame_id": "f", "deadline_ts": "soon"})
    # a "frame" has no deadline: an unknown field, ignored as any other
    frame = {"v": 1, "kind": "frame", "frame_id": "f", "deadline_ts": "soon"}
    assert protocol.check_frame_header(frame).deadline_ts is None


def test_refused_values_are_shown_bounded():
    with pytest.raises(ProtocolError) as e:
        protocol.check_frame_header({"v": 1, "kind": "frame", "frame_id": "f", "ts": "x" * 10_000})
    assert len(e.value.message) < 120


def test_pub_topics():
    assert protocol.verdict_topic("cam1") == b"verdict.cam1" and protocol.verdict_topic("cam1").startswith(
        protocol.VERDICT_TOPIC_PREFIX)
    assert protocol.HEARTBEAT_TOPIC == b"hb"


def test_verdict_header_roundtrip():
    v = Verdict(frame_id="7", score=1.5, decision="defect", regions=[Region((1, 2, 5, 9), 20, "scratch", 0.8, 2.0)],
                latencies_ms={"backend": 3.2}, anomaly_map=np.zeros((4, 4), np.float32))
    h = json.loads(json.dumps(v.to_header()))
    assert "anomaly_map" not in h
    back = Verdict.from_header(h)
    assert back.regions[0].bbox == (1, 2, 5, 9) and back.score == 1.5 and back.latencies_ms == {"backend": 3.2}
    nan = Verdict.from_header(json.loads(json.dumps(Verdict(frame_id="x").to_header())))
    assert np.isnan(nan.score)


def test_mask_png_roundtrip():
    m = np.zeros((9, 11), bool)
    m[2:5, 3:8] = True
    np.testing.assert_array_equal(decode_mask_png(encode_mask_png(m)), m)


def test_manifest_v1_still_reads_and_its_one_graph_is_the_full_one(tmp_path):
    """Version 1 artifacts (one graph, exact search) open as before; version 2 adds the full graph's role."""
    d = _artifact(tmp_path)  # written as format_version 1
    m = load_manifest(d)
    assert m.format_version == 1 and m.full_model == "model.onnx" and m.scoring.index.kind == "exact"
    (d / "model.full.onnx").write_bytes(b"the full graph")
    write_manifest(d, m.model_copy(update={"format_version": 2, "models": {"fp32": "model.onnx",
                                                                           "full": "model.full.onnx"},
                                           "full_outputs": ["embedding", "s8"]}))
    m2 = load_manifest(d)
    assert m2.full_model == "model.full.onnx" and m2.outputs == ["embedding"]


def test_manifest_index_file_must_be_checksummed(tmp_path):
    from runtime.contracts.manifest import IndexSpec

    d = _artifact(tmp_path)
    m = load_manifest(d)
    raw = json.loads(m.model_copy(update={"scoring": m.scoring.model_copy(update={
        "index": IndexSpec(kind="hnsw", file="bank.index", params={"m": 8, "ef_search": 16})})}).model_dump_json())
    (d / "manifest.json").write_text(json.dumps(raw))  # names an index file the checksums do not cover
    with pytest.raises(ContractError, match="scoring.index.file = bank.index"):
        load_manifest(d)


def test_manifest_producer_and_score_normalisation_are_optional(tmp_path):
    """An artifact from before producer / calibration.normalization still loads; its 0-1 score is the default's."""
    from runtime.contracts.manifest import Producer

    d = _artifact(tmp_path)
    raw = json.loads((d / "manifest.json").read_text())
    raw.pop("producer", None)
    raw["calibration"].pop("normalization", None)
    (d / "manifest.json").write_text(json.dumps(raw))
    m = load_manifest(d)
    assert m.producer is None and m.calibration.normalization is None
    n = m.calibration.score_norm()
    assert n(1.0) == 0.5 and n(0.0) == 0.0 and n(2.0) == 1.0  # threshold 1: 0 -> 0, mirrored above
    p = Producer.now("distill export")
    assert p.lineside and p.created.endswith("Z") and p.created[:2] == "20"
    write_manifest(d, m.model_copy(update={"producer": p, "calibration": m.calibration.model_copy(
        update={"normalization": {"low": 0.5, "threshold": 1.0, "high": 3.0, "source": "test"}})}))
    m2 = load_manifest(d)
    assert m2.producer.command == "distill export" and m2.calibration.score_norm()(2.0) == 0.75
