"""The student registry: name -> builder, as timm's ``_registry.py`` (one file per family registers its
entry points with ``@register_student``). An unknown or duplicate name raises.

The built-in names are indexed by family (``BUILTIN``), so ``list_students()`` names them without importing a
family (each imports torch) and `distill fit --help` stays torch-free; a family module is imported, and so
registers its builders, when one of its students is first built."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch.nn as nn

# name -> the family module whose @register_student defines it (checked on registration, both ways)
BUILTIN = {"lite0": "distill.students.effnet",
           "tiny": "distill.students.plain", "xs": "distill.students.plain", "s": "distill.students.plain",
           "m": "distill.students.plain"}

_STUDENTS: dict[str, Callable[..., nn.Module]] = {}
_FAMILY: dict[str, str] = {}


def register_student(name: str | Callable | None = None):
    """Decorator; ``@register_student`` uses the function's name, ``@register_student("s")`` a given one."""
    def deco(fn: Callable[..., nn.Module], key: str | None = None) -> Callable[..., nn.Module]:
        key = key or fn.__name__
        owner = _FAMILY.get(key) or BUILTIN.get(key)
        if key in _STUDENTS or (owner is not None and owner != fn.__module__):
            raise ValueError(f"student {key!r} is already registered (by {owner}); names must be unique")
        if key not in BUILTIN and fn.__module__ in BUILTIN.values():
            raise ValueError(f"student {key!r} of {fn.__module__} is missing from the registry's BUILTIN index")
        _STUDENTS[key] = fn
        _FAMILY[key] = fn.__module__
        return fn

    if callable(name):
        return deco(name)
    return lambda fn: deco(fn, name)


def list_students() -> list[str]:
    return sorted({*BUILTIN, *_STUDENTS})


def student_family(name: str) -> str:
    _check(name)
    return _FAMILY.get(name) or BUILTIN[name]


def create_student(name: str, **kwargs) -> nn.Module:
    """Build a registered student: ``create_student("s", spec=feature_spec, head_outputs=..., embedding=...)``."""
    _check(name)
    if name not in _STUDENTS:
        importlib.import_module(BUILTIN[name])  # registers the family's builders
    return _STUDENTS[name](**kwargs)


def _check(name: str) -> None:
    if name not in _STUDENTS and name not in BUILTIN:
        raise KeyError(f"unknown student {name!r}; registered students are {list_students()}")
