"""The grading machinery itself: tolerances, comparisons, verdicts and the check() contract."""

import json

import pytest
import torch

from kernels.grading import core, registry


def test_tolerance_float64_is_the_course_criterion():
    want = torch.randn(10, dtype=torch.float64)
    assert core.tolerance(want, None, torch.float64) == pytest.approx(1e-10 * max(1.0, want.abs().max().item()))


def test_tolerance_is_a_multiple_of_the_naive_error():
    want = torch.randn(1000, dtype=torch.float64)
    naive = want.half()
    err = (naive.double() - want).abs().max().item()
    tol = core.tolerance(want, naive, torch.float16, factor=2.0)
    assert 2 * err <= tol <= 2 * err + 16 * torch.finfo(torch.float16).eps * max(1.0, want.abs().max().item()) + 1e-12


def test_assert_close_reports_case_shape_dtype_error_and_place():
    want = torch.zeros(2, 3, dtype=torch.float64)
    got = torch.zeros(2, 3, dtype=torch.float32)
    got[1, 2] = 0.5
    with pytest.raises(core.CaseFailure, match=r"O \(2, 3\) torch.float32: max error 0.5 at \(1, 2\) .*tolerance 0.001"):
        core.assert_close("O", got, want, 1e-3)


@pytest.mark.parametrize(
    "got,message",
    [
        (torch.zeros(3), r"has shape \(3,\), expected \(2, 3\)"),
        (torch.full((2, 3), float("nan")), r"NaN at \(0, 0\)"),
        (torch.full((2, 3), float("inf")), r"got inf"),
        ("not a tensor", r"should be a torch.Tensor"),
    ],
)
def test_assert_close_rejects(got, message):
    with pytest.raises(core.CaseFailure, match=message):
        core.assert_close("O", got, torch.zeros(2, 3, dtype=torch.float64), 1e-3)


def test_assert_close_accepts_matching_infinities():
    want = torch.tensor([float("-inf"), 1.0], dtype=torch.float64)
    core.assert_close("L", want.float(), want, 1e-6)
    with pytest.raises(core.CaseFailure):
        core.assert_close("L", torch.tensor([0.0, 1.0]), want, 1e-6)


def grade_square(candidate):
    for n in (1, 2, 3):
        with core.case(f"n={n}"):
            core.assert_scalar("square", candidate(n), n * n)


def test_run_statuses():
    assert core.run("t.sq", grade_square, lambda n: n * n).status == "pass"
    wrong = core.run("t.sq", grade_square, lambda n: n + n)
    assert wrong.status == "fail" and "case n=1: square is 2, expected 1" in wrong.message

    def crash(n):
        raise ZeroDivisionError("boom")

    crashed = core.run("t.sq", grade_square, crash)
    assert crashed.status == "fail" and "case n=1: raised ZeroDivisionError: boom" in crashed.message

    def stub(n):
        raise NotImplementedError

    assert core.run("t.sq", grade_square, stub).status == "not attempted"
    assert core.run("t.sq", lambda c: None, stub).status == "fail"  # a grader that runs no case


@pytest.fixture
def toy_exercise():
    registry.load_all()
    registry.exercise("99.square", "square a number", lambda n: n * n, {"double": lambda n: 2 * n})(grade_square)
    yield "99.square"
    registry.EXERCISES.pop("99.square")


def test_check_prints_records_and_is_strict_only_when_asked(toy_exercise, tmp_path, monkeypatch, capsys):
    report = tmp_path / "r.jsonl"
    monkeypatch.setenv("KERNELS_GRADE_REPORT", str(report))
    monkeypatch.delenv("KERNELS_STRICT_CHECKS", raising=False)
    assert registry.check(toy_exercise, lambda n: 2 * n).status == "fail"
    assert "FAIL 99.square: case n=1" in capsys.readouterr().out
    monkeypatch.setenv("KERNELS_STRICT_CHECKS", "1")
    with pytest.raises(AssertionError, match="FAIL 99.square"):
        registry.check(toy_exercise, lambda n: 2 * n)

    def stub(n):
        raise NotImplementedError

    assert registry.check(toy_exercise, stub).status == "not attempted"  # never raises, even strict
    assert registry.check(toy_exercise, lambda n: n * n).passed
    statuses = [json.loads(line)["status"] for line in report.read_text().splitlines()]
    assert statuses == ["fail", "fail", "not attempted", "pass"]


def test_registry_rejects_duplicates_and_exercises_without_mutants(toy_exercise):
    with pytest.raises(ValueError, match="registered twice"):
        registry.exercise(toy_exercise, "again", None, {"m": None})(grade_square)
    with pytest.raises(ValueError, match="needs at least one mutant"):
        registry.exercise("99.other", "no mutants", None, {})(grade_square)
