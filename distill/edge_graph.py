"""The edge graph: the student's exported graph cut down to the outputs the edge scores with.

The full graph returns the embedding, the four projected teacher levels s8..s64 and the head outputs; the
edge (runtime.scoring.score_outputs) reads only the embedding, plus the head's map when the scoring mode
uses the head. Every other output, and every node only they need (the 1×1 projections to the teacher's
320..1280 channels, backbone stages the embedding does not read), is work a frame would pay for and
nobody looks at. The full graph stays in the artifact (role ``full``) for `distill eval`'s fidelity.

Pruning keeps every kept node as it is (names included), so the edge graph computes the very numbers the
full graph computes for those outputs: quantizing it, and its accuracy guard, see the served graph.
"""
from __future__ import annotations

from pathlib import Path

from runtime.scoring import HEAD_MAP_OUTPUT, HEAD_OUTPUTS


def edge_outputs(output_names, mode: str, embedding_output: str = "embedding") -> list[str]:
    """The outputs ``runtime.scoring.score_outputs`` reads in ``mode``, in the network's order: the embedding
    always (the OOD statistic), and for "head"/"both" the distilled head map, or the head's raw outputs when
    the student has no map (``runtime.scoring.head_map``)."""
    names = list(output_names)
    if embedding_output not in names:
        raise ValueError(f"the network has no {embedding_output!r} output (it has {names})")
    want = {embedding_output}
    if mode != "bank":
        want |= {HEAD_MAP_OUTPUT} if HEAD_MAP_OUTPUT in names else set(HEAD_OUTPUTS)
        missing = sorted(want - set(names))
        if missing:
            raise ValueError(f"scoring mode {mode!r} needs {missing}; the network has {names}")
    return [n for n in names if n in want]


def prune_onnx(src: str | Path, dst: str | Path, outputs: list[str]) -> Path:
    """Write ``src`` with only ``outputs`` (in that order) and the nodes and initializers they depend on."""
    import onnx

    m = onnx.load(str(src))
    g = m.graph
    have = [o.name for o in g.output]
    missing = [o for o in outputs if o not in have]
    if missing:
        raise ValueError(f"{src}: no output(s) {missing}; it has {have}")
    keep_out = [next(o for o in g.output if o.name == n) for n in outputs]
    needed = set(outputs)
    nodes = []
    for node in reversed(g.node):  # ONNX nodes are topologically sorted: one backward sweep finds the cone
        if needed & set(node.output):
            nodes.append(node)
            needed |= {i for i in node.input if i}
            needed |= _subgraph_inputs(node)
    nodes.reverse()
    inits = [t for t in g.initializer if t.name in needed]
    vinfo = [v for v in g.value_info if v.name in needed]
    del g.output[:], g.node[:], g.initializer[:], g.value_info[:]
    g.output.extend(keep_out)
    g.node.extend(nodes)
    g.initializer.extend(inits)
    g.value_info.extend(vinfo)
    onnx.checker.check_model(m)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(dst))
    return dst


def _subgraph_inputs(node) -> set[str]:
    """Names a control-flow node's subgraphs read from the outer graph (If/Loop bodies); none for plain ops."""
    out: set[str] = set()
    for a in node.attribute:
        for sub in list(a.g.node if a.HasField("g") else []) + [n for gr in a.graphs for n in gr.node]:
            out |= {i for i in sub.input if i}
    return out


def onnx_outputs(path: str | Path) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def prune_openvino(src_xml: str | Path, dst_xml: str | Path, outputs: list[str]) -> Path:
    """An OpenVINO IR with only ``outputs``: a model built on those results drops every op only the others
    needed (an IR of the full graph written by an older `distill quantize`)."""
    import openvino as ov

    m = ov.Core().read_model(str(src_xml))
    by_name = {o.get_any_name(): o for o in m.outputs}
    missing = [o for o in outputs if o not in by_name]
    if missing:
        raise ValueError(f"{src_xml}: no output(s) {missing}; it has {sorted(by_name)}")
    results = [r for r in m.get_results() if r.output(0).get_any_name() in outputs or
               any(n in outputs for n in r.input_value(0).get_names())]
    results.sort(key=lambda r: outputs.index(next(n for n in r.input_value(0).get_names() if n in outputs)))
    pruned = ov.Model(results, m.get_parameters(), m.get_friendly_name())
    dst_xml = Path(dst_xml)
    dst_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(pruned, str(dst_xml), compress_to_fp16=False)
    return dst_xml


def openvino_outputs(xml: str | Path) -> list[str]:
    import openvino as ov

    return [o.get_any_name() for o in ov.Core().read_model(str(xml)).outputs]
