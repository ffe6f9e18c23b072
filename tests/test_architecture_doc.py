"""docs/ARCHITECTURE.md names every command beside the file that holds it, and every file it names exists."""
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text()


@pytest.mark.parametrize("prog, table", [("lineside", "runtime.cli"), ("teacher", "teacher.cli"),
                                         ("distill", "distill.cli")])
def test_every_command_is_mapped_to_its_file(prog, table):
    for name, (module, _) in importlib.import_module(table).COMMANDS.items():
        path = module.replace(".", "/") + ".py"
        assert (ROOT / path).is_file(), path
        assert f"| `{prog} {name}` | `{path}` |" in DOC, f"{prog} {name} -> {path} missing from docs/ARCHITECTURE.md"


def test_every_path_the_doc_names_exists():
    named = set(re.findall(r"`((?:runtime|teacher|distill|kernels|tests)/[\w/]+\.py)`", DOC))
    assert named and all((ROOT / p).is_file() for p in named), sorted(p for p in named if not (ROOT / p).is_file())
