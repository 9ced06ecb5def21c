"""The exercises: each one's grader, its reference solution and its mutants, by id.

Lesson modules (exercises_01 ... exercises_05) register their exercises with @exercise. An id
is "<lesson>.<name>", e.g. "02.merge_states"; the notebooks' check cells, the command-line
grader and the tests all look exercises up here, so they grade with one and the same code.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from typing import Callable

from . import core

LESSON_MODULES = (
    "exercises_01", "exercises_02", "exercises_03", "exercises_03_cuda",
    "exercises_04", "exercises_04_cuda", "exercises_05",
)


@dataclasses.dataclass
class Exercise:
    id: str
    title: str
    grade: Callable  # grade(candidate) -> None, raises core.CaseFailure
    solution: Callable  # a correct implementation (from kernels)
    mutants: dict  # name -> plausible buggy implementation the grader must reject
    needs: str = "cpu"  # "cpu", "triton" (interpreter on CPU is fine) or "cuda"

    def run(self, candidate) -> core.Verdict:
        return core.run(self.id, self.grade, candidate)


EXERCISES: dict[str, Exercise] = {}


def exercise(id: str, title: str, solution: Callable, mutants: dict, needs: str = "cpu"):
    """Decorator that registers a grader function as exercise `id`."""

    def register(grade):
        if id in EXERCISES:
            raise ValueError(f"exercise {id!r} registered twice")
        if not mutants:
            raise ValueError(f"exercise {id!r} needs at least one mutant its grader must reject")
        EXERCISES[id] = Exercise(id, title, grade, solution, dict(mutants), needs)
        return grade

    return register


_loaded = False


def load_all() -> dict[str, Exercise]:
    """Import every lesson's exercise module (once) and return the registry."""
    global _loaded
    if not _loaded:
        for name in LESSON_MODULES:
            importlib.import_module(f"{__package__}.{name}")
        _loaded = True
    return EXERCISES


def get(exercise_id: str) -> Exercise:
    load_all()
    try:
        return EXERCISES[exercise_id]
    except KeyError:
        raise KeyError(f"no exercise {exercise_id!r}; known: {', '.join(sorted(EXERCISES))}") from None


def check(exercise_id: str, candidate) -> core.Verdict:
    """Grade `candidate` for exercise `exercise_id` and print the verdict.

    Used by the notebooks' check cells. When KERNELS_GRADE_REPORT names a file (the command-line
    grader sets it), the verdict is appended there as a JSON line. When KERNELS_STRICT_CHECKS=1
    (the test suite sets it), a wrong answer raises AssertionError; an unanswered one never does.
    """
    verdict = get(exercise_id).run(candidate)
    print(str(verdict))
    report = os.environ.get("KERNELS_GRADE_REPORT")
    if report:
        with open(report, "a") as f:
            f.write(json.dumps(verdict.to_dict()) + "\n")
    if os.environ.get("KERNELS_STRICT_CHECKS") == "1" and verdict.status == "fail":
        raise AssertionError(str(verdict))
    return verdict
