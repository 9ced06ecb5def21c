"""The machinery every grader uses: verdicts, cases, tolerances and comparisons.

A grader is a function `grade(candidate)` that runs the candidate on fresh random inputs,
one named case after another, and raises CaseFailure at the first wrong answer with a message
that says which case failed, the shape, the dtype, the largest error, where it is and the
tolerance it broke. `run(exercise, candidate)` turns that into a Verdict.

Tolerances are multiples of the error that naive attention makes in the same dtype (FlashAttention's
own tests allow 2x), measured against float64 ground truth on the same inputs: a fixed atol is
either too loose for float32 or too tight for bfloat16.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import traceback

import torch

#: Absolute floor of the tolerance per dtype: float64 answers must be exact to 1e-10 (the
#: course's criterion for tiled algorithms); lower precisions add a few ulps of the output.
FLOOR_ULPS = 16


@dataclasses.dataclass
class Verdict:
    """The outcome of grading one exercise."""

    exercise: str
    status: str  # "pass", "fail" or "not attempted"
    message: str = ""
    cases: int = 0

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def __str__(self) -> str:
        if self.status == "pass":
            return f"PASS {self.exercise}: {self.cases} cases agree with the reference"
        if self.status == "not attempted":
            return f"NOT ATTEMPTED {self.exercise}: the exercise still raises NotImplementedError"
        return f"FAIL {self.exercise}: {self.message}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class CaseFailure(AssertionError):
    """A candidate gave a wrong answer (or raised) on one case."""


class _Counter:
    def __init__(self):
        self.n = 0


_current: list[_Counter] = []


def fresh_generator(device="cpu") -> tuple[torch.Generator, int]:
    """A generator seeded from the OS: every grading run draws new inputs. The seed goes into
    failure messages so a failure can be replayed."""
    seed = int.from_bytes(os.urandom(4), "little")
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g, seed


def randn(g: torch.Generator, *shape, dtype=torch.float64, scale: float = 1.0) -> torch.Tensor:
    """Standard normals drawn in float64 from `g` (so every dtype sees the same values), times
    `scale`, in `dtype`."""
    return torch.randn(*shape, generator=g, dtype=torch.float64).mul_(scale).to(dtype)


def randint(g: torch.Generator, lo: int, hi: int) -> int:
    """An int in [lo, hi], drawn from `g`."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


def unpack(name: str, out, n: int) -> tuple:
    """A candidate's result as n values (a tuple, list or NamedTuple), or a CaseFailure saying
    what it returned instead."""
    try:
        items = tuple(out)
    except TypeError:
        raise CaseFailure(f"{name} should return {n} values, got {type(out).__name__}") from None
    if len(items) != n:
        raise CaseFailure(f"{name} should return {n} values, got {len(items)}")
    return items


@contextlib.contextmanager
def case(description: str):
    """Run one case; any exception from the candidate becomes a CaseFailure naming the case.
    NotImplementedError passes through (the exercise is not attempted yet)."""
    if _current:
        _current[-1].n += 1
    try:
        yield
    except (CaseFailure, NotImplementedError) as e:
        if isinstance(e, CaseFailure) and not str(e).startswith("case "):
            raise CaseFailure(f"case {description}: {e}") from None
        raise
    except Exception as e:  # the candidate crashed: report where, briefly
        tb = traceback.extract_tb(e.__traceback__)
        where = f" (at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
        raise CaseFailure(f"case {description}: raised {type(e).__name__}: {e}{where}") from None


def eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def tolerance(want64: torch.Tensor, naive: torch.Tensor | None, dtype: torch.dtype, factor: float = 2.0) -> float:
    """factor x (max error of naive attention in `dtype`) + a floor.

    want64: the float64 ground truth. naive: the same computation done naively in `dtype`
    (None when there is no naive counterpart). Float64 candidates get the course's 1e-10.
    """
    want64 = want64.detach()
    scale = max(1.0, float(want64.abs().max())) if want64.numel() else 1.0
    if dtype == torch.float64:
        return 1e-10 * scale
    floor = FLOOR_ULPS * eps(dtype) * scale
    if naive is None:
        return floor
    finite = torch.isfinite(want64)
    naive_err = float((naive.to(torch.float64) - want64)[finite].abs().max()) if finite.any() else 0.0
    return factor * naive_err + floor


def _fmt_index(idx) -> str:
    return "(" + ", ".join(str(int(i)) for i in idx) + ")"


def assert_close(name: str, got, want: torch.Tensor, tol: float, *, expect_dtype=None) -> None:
    """`got` matches `want` (float64) elementwise within `tol`; infinities must match exactly.
    Raises CaseFailure saying the shape, dtype, max error, where, and the tolerance."""
    if not isinstance(got, torch.Tensor):
        raise CaseFailure(f"{name} should be a torch.Tensor of shape {tuple(want.shape)}, got {type(got).__name__}")
    if tuple(got.shape) != tuple(want.shape):
        raise CaseFailure(f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    if expect_dtype is not None and got.dtype != expect_dtype:
        raise CaseFailure(f"{name} has dtype {got.dtype}, expected {expect_dtype}")
    g = got.detach().to("cpu", torch.float64)
    w = want.detach().to("cpu", torch.float64)
    nan = torch.isnan(g) & ~torch.isnan(w)
    if nan.any():
        idx = nan.nonzero()[0]
        raise CaseFailure(
            f"{name} {tuple(got.shape)} {got.dtype}: NaN at {_fmt_index(idx)} ({int(nan.sum())} NaNs), expected {w[tuple(idx)].item():.6g}"
        )
    inf_w, inf_g = torch.isinf(w), torch.isinf(g)
    bad_inf = (inf_w | inf_g) & ~((g == w) & inf_w)
    if bad_inf.any():
        idx = bad_inf.nonzero()[0]
        raise CaseFailure(
            f"{name} {tuple(got.shape)} {got.dtype}: got {g[tuple(idx)].item():.6g} at {_fmt_index(idx)}, expected {w[tuple(idx)].item():.6g}"
        )
    finite = ~inf_w
    err = torch.where(finite, (g - w).abs(), torch.zeros_like(g))
    if err.numel() == 0:
        return
    flat = int(err.argmax())
    idx = torch.unravel_index(torch.tensor(flat), err.shape)
    worst = float(err.reshape(-1)[flat])
    if worst > tol:
        raise CaseFailure(
            f"{name} {tuple(got.shape)} {got.dtype}: max error {worst:.3g} at {_fmt_index(idx)} "
            f"(got {g.reshape(-1)[flat].item():.6g}, expected {w.reshape(-1)[flat].item():.6g}), tolerance {tol:.3g}"
        )


def assert_scalar(name: str, got, want: float, rel: float = 1e-9) -> None:
    """A number (a count, a size, a ratio) equal to `want` within relative error `rel`."""
    try:
        value = float(got)
    except (TypeError, ValueError):
        raise CaseFailure(f"{name} should be a number, got {type(got).__name__}") from None
    if not (abs(value - want) <= rel * max(1.0, abs(want))):
        raise CaseFailure(f"{name} is {value:.6g}, expected {want:.6g}")


def run(exercise_id: str, grade, candidate) -> Verdict:
    """Grade `candidate` with `grade`; never raises for a wrong answer."""
    counter = _Counter()
    _current.append(counter)
    try:
        grade(candidate)
    except NotImplementedError:
        return Verdict(exercise_id, "not attempted", cases=counter.n)
    except CaseFailure as e:
        return Verdict(exercise_id, "fail", str(e), cases=counter.n)
    except Exception as e:  # a crash outside any case
        return Verdict(exercise_id, "fail", f"raised {type(e).__name__}: {e}", cases=counter.n)
    finally:
        _current.pop()
    if counter.n == 0:
        return Verdict(exercise_id, "fail", "the grader ran no case (a grader bug)", cases=0)
    return Verdict(exercise_id, "pass", cases=counter.n)
