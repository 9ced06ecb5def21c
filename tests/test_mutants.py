"""Every grader passes its exercise's reference solution and rejects every mutant in the bank.

Graders draw fresh random inputs, so each pair is graded several times: a mutant that slips
through on an unlucky draw is a grader bug."""

import pytest

from kernels import device
from kernels.grading import registry

EXERCISES = registry.load_all()
LESSONS = ("01", "02", "03", "04", "05")
REPEATS = 3


def skip_unless_runnable(ex):
    if ex.needs == "triton" and not device.HAS_TRITON:
        pytest.skip(f"{ex.id} needs triton, not installed on this platform")
    if ex.needs == "nvcc" and not device.NVCC:
        pytest.skip(f"{ex.id} needs nvcc, not found")
    if ex.needs == "cuda" and not device.HAS_CUDA:
        pytest.skip(f"{ex.id} needs a CUDA GPU")


def test_every_lesson_has_graded_exercises():
    for lesson in LESSONS:
        assert any(i.startswith(lesson + ".") for i in EXERCISES), f"lesson {lesson} registers no exercise"


@pytest.mark.parametrize("exercise_id", sorted(EXERCISES))
def test_solution_passes(exercise_id):
    ex = EXERCISES[exercise_id]
    skip_unless_runnable(ex)
    for _ in range(REPEATS):
        verdict = ex.run(ex.solution)
        assert verdict.passed, str(verdict)


MUTANTS = [(i, name) for i in sorted(EXERCISES) for name in EXERCISES[i].mutants]


@pytest.mark.parametrize("exercise_id,mutant", MUTANTS, ids=[f"{i}:{m}" for i, m in MUTANTS])
def test_mutant_rejected(exercise_id, mutant):
    ex = EXERCISES[exercise_id]
    skip_unless_runnable(ex)
    for _ in range(REPEATS):
        verdict = ex.run(ex.mutants[mutant])
        assert verdict.status == "fail", f"grader of {exercise_id} accepted mutant {mutant!r}"
        assert verdict.message, "a failing verdict must say why"
