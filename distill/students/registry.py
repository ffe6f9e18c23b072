"""The student registry: name -> builder, as timm's ``_registry.py`` (one file per family registers its
entry points with ``@register_student``). An unknown or duplicate name raises."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

_STUDENTS: dict[str, Callable[..., nn.Module]] = {}
_FAMILY: dict[str, str] = {}


def register_student(name: str | Callable | None = None):
    """Decorator; ``@register_student`` uses the function's name, ``@register_student("s")`` a given one."""
    def deco(fn: Callable[..., nn.Module], key: str | None = None) -> Callable[..., nn.Module]:
        key = key or fn.__name__
        if key in _STUDENTS:
            raise ValueError(f"student {key!r} is already registered (by {_FAMILY[key]}); names must be unique")
        _STUDENTS[key] = fn
        _FAMILY[key] = fn.__module__
        return fn

    if callable(name):
        return deco(name)
    return lambda fn: deco(fn, name)


def list_students() -> list[str]:
    return sorted(_STUDENTS)


def student_family(name: str) -> str:
    _check(name)
    return _FAMILY[name]


def create_student(name: str, **kwargs) -> nn.Module:
    """Build a registered student: ``create_student("s", spec=feature_spec, head_outputs=..., embedding=...)``."""
    _check(name)
    return _STUDENTS[name](**kwargs)


def _check(name: str) -> None:
    if name not in _STUDENTS:
        raise KeyError(f"unknown student {name!r}; registered students are {list_students()}")
