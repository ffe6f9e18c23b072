"""The one check every versioned file reader runs, and the one error it raises.

A lineside file (artifact manifest, FeatureSpec, teacher checkpoint config, extracted-feature index,
distill run config, signature) names its format and version; a reader accepts the versions it knows and
refuses the rest with one line naming the file, what it found and what this lineside reads. The version
key keeps each file's historical spelling (``format_version`` or ``version``), so files written before
this check still load.
"""
from __future__ import annotations

from typing import Any, Iterable


class ContractError(ValueError):
    """A versioned contract (FeatureSpec, manifest, dataset, checkpoint, run) that a reader cannot accept."""


def check_format(doc: Any, where: str, *, versions: Iterable[int], fmt: str | None = None,
                 version_key: str = "format_version", what: str = "") -> int:
    """-> the document's version, or ContractError naming ``where`` (a path or a name). ``fmt``: the value
    its ``format`` key must hold, if it has one; ``what``: the kind of file, for the message."""
    versions = tuple(versions)
    kind = f"{what} " if what else ""
    if not isinstance(doc, dict):
        raise ContractError(f"{where}: {kind}is not a JSON object")
    if fmt is not None and doc.get("format") != fmt:
        raise ContractError(f"{where}: {kind}format {doc.get('format')!r} is not {fmt!r}")
    v = doc.get(version_key)
    if isinstance(v, bool) or v not in versions:
        raise ContractError(f"{where}: {kind}{version_key} {v!r} is not supported (this lineside reads "
                            f"{', '.join(map(str, versions))})")
    return v
