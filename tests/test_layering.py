"""The layer order of docs/ARCHITECTURE.md, read off every import in the tree (lazy ones included): kernels at
the bottom, then runtime (torch-free: the edge installs it alone), then teacher, then distill. runtime/tools
drives teacher and distill only as subprocesses, and nothing on the edge imports the tools."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS_ENTRIES = {"runtime/cli/bench.py", "runtime/cli/demo.py"}  # the two commands that drive the tools


def imported(path: Path) -> set[str]:
    out = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            out |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            out.add(n.module)
    return out


def violations(package: str, forbidden: tuple[str, ...], skip=lambda rel: False, root: Path = ROOT) -> list[str]:
    bad = []
    for f in sorted((root / package).rglob("*.py")):
        rel = f.relative_to(root).as_posix()
        if skip(rel):
            continue
        bad += [f"{rel} imports {m}" for m in sorted(imported(f))
                if any(m == x or m.startswith(x + ".") for x in forbidden)]
    return bad


@pytest.mark.parametrize("package, forbidden", [
    ("kernels", ("runtime", "teacher", "distill")),
    ("runtime", ("torch", "diffusers", "transformers", "teacher", "distill")),
    ("teacher", ("distill",)),
])
def test_no_upward_imports(package, forbidden):
    assert violations(package, forbidden) == []


def test_the_edge_never_imports_the_tools_or_the_commands():
    edge = lambda rel: rel.startswith(("runtime/cli/", "runtime/tools/")) or rel == "runtime/__main__.py"  # noqa: E731
    assert violations("runtime", ("runtime.tools", "runtime.cli"), skip=edge) == []
    commands = lambda rel: not rel.startswith("runtime/cli/") or rel in TOOLS_ENTRIES  # noqa: E731
    assert violations("runtime", ("runtime.tools",), skip=commands) == []


def test_contracts_stand_on_nothing_above_the_shared_libraries():
    above = ("runtime.daemon", "runtime.cli", "runtime.tools", "runtime.engine", "runtime.backends", "runtime.client")
    assert violations("runtime/contracts", above) == []


def test_the_check_can_fail(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("def f():\n    import torch.nn\n")
    assert violations("pkg", ("torch",), root=tmp_path) == ["pkg/m.py imports torch.nn"]
    assert violations("pkg", ("torchvision",), root=tmp_path) == []
