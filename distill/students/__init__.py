"""Student networks: ``create_student(name, spec=...)``; a family (effnet: lite0; plain: tiny, xs, s, m) registers
itself when one of its students is first built, so importing this package (and listing the names) needs no torch."""
from distill.students.registry import create_student, list_students, register_student, student_family

__all__ = ["create_student", "list_students", "register_student", "student_family", "HeadSpec", "Student"]


def __getattr__(name: str):
    if name in ("HeadSpec", "Student"):  # torch: imported on first use
        from distill.students import base

        return getattr(base, name)
    raise AttributeError(f"module 'distill.students' has no attribute {name!r}")
