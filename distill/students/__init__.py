"""Student networks: ``create_student(name, spec=...)``; families register themselves on import."""
from distill.students import effnet  # noqa: F401  (registers lite0)
from distill.students import plain  # noqa: F401  (registers tiny, xs, s, m)
from distill.students.base import HeadSpec, Student
from distill.students.registry import create_student, list_students, register_student, student_family

__all__ = ["create_student", "list_students", "register_student", "student_family", "HeadSpec", "Student"]
