"""Graders for the course's exercises, shared by the notebooks' check cells, tests/ and the
command-line grader (`python -m kernels.grading NOTEBOOK_OR_FOLDER`)."""

from .core import CaseFailure, Verdict, assert_close, assert_scalar, case, fresh_generator, tolerance
from .registry import EXERCISES, Exercise, check, exercise, get, load_all

__all__ = [
    "CaseFailure", "Verdict", "assert_close", "assert_scalar", "case", "fresh_generator", "tolerance",
    "EXERCISES", "Exercise", "check", "exercise", "get", "load_all",
]
