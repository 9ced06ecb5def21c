"""The notebook pipeline: lessons/ are generated from solutions/ and have not drifted; notebooks
are committed without outputs; every exercise has a check cell that names a registered exercise."""

import json
import pathlib
import shutil

import pytest

from kernels import device
from kernels.grading import notebooks, registry
from kernels.grading.cli import expected_exercises

ROOT = notebooks.ROOT
LESSON_DIRS = ["01_memory_hierarchy", "02_online_softmax", "03_tiling", "04_backward", "05_flex_attention"]
ALL_NOTEBOOKS = sorted(
    p for d in ("lessons", "solutions") for p in (ROOT / d).glob("*/*.ipynb") if ".ipynb_checkpoints" not in p.parts
)


def test_strip_solutions_keeps_indentation_and_the_rest():
    src = "def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\n\nprint(f)"
    out = notebooks.strip_solutions(src)
    assert out == "def f(x):\n    y = 1\n    " + notebooks.STUB + "\n\nprint(f)"


@pytest.mark.parametrize(
    "src,message",
    [
        ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION", "must be inside a function body"),
        ("def f():\n    ### BEGIN SOLUTION\n    return 1", "without ### END SOLUTION"),
        ("def f():\n    return 1\n    ### END SOLUTION", "without ### BEGIN SOLUTION"),
        ("def f():\n    ### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n", "nested"),
    ],
)
def test_strip_solutions_rejects_malformed_markers(src, message):
    with pytest.raises(ValueError, match=message):
        notebooks.strip_solutions(src)


@pytest.mark.parametrize("lesson", LESSON_DIRS)
def test_every_lesson_has_a_solution_notebook_with_exercises(lesson):
    sols = sorted((ROOT / "solutions" / lesson).glob("*.ipynb"))
    assert sols, f"solutions/{lesson} has no notebook"
    assert sum(notebooks.count_exercises(json.loads(p.read_text())) for p in sols) > 0


def test_lessons_in_sync_with_solutions():
    problems = notebooks.drift()
    assert not problems, "\n".join(problems)


def test_drift_is_detected(tmp_path):
    """The drift check itself can fail: edit a solution in a copy and it must complain."""
    for d in ("solutions", "lessons"):
        shutil.copytree(ROOT / d, tmp_path / d)
    sol = next((tmp_path / "solutions").glob("*/*.ipynb"))
    nb = json.loads(sol.read_text())
    nb["cells"].append({"cell_type": "markdown", "metadata": {}, "source": "an edit nobody regenerated"})
    sol.write_text(json.dumps(nb))
    assert any("differs" in p for p in notebooks.drift(tmp_path))
    (tmp_path / "lessons" / "99_orphan").mkdir()
    (tmp_path / "lessons" / "99_orphan" / "x.ipynb").write_text(json.dumps(nb))
    assert any("has no solution notebook" in p for p in notebooks.drift(tmp_path))


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=[str(p.relative_to(ROOT)) for p in ALL_NOTEBOOKS])
def test_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.relative_to(ROOT)}: cells {dirty} keep outputs; run `python -m kernels.grading.notebooks`"


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=[str(p.relative_to(ROOT)) for p in ALL_NOTEBOOKS])
def test_check_cells_name_registered_exercises(path):
    nb = json.loads(path.read_text())
    ids = expected_exercises(nb)
    known = registry.load_all()
    unknown = set(ids) - set(known)
    if not device.HAS_TRITON:  # Triton exercises register only where triton is installed
        unknown = {i for i in unknown if "triton" not in i}
    assert not unknown, f"unknown exercise ids {unknown}"
    if notebooks.count_exercises(nb):
        assert ids, f"{path.name} has exercises but no check cell"


@pytest.mark.parametrize("path", [p for p in ALL_NOTEBOOKS if "lessons" in p.parts])
def test_student_notebooks_hide_the_answers(path):
    text = path.read_text()
    assert notebooks.BEGIN not in text and notebooks.END not in text
    sol = json.loads((ROOT / "solutions" / path.relative_to(ROOT / "lessons")).read_text())
    assert text.count("NotImplementedError(\\\"Exercise") == notebooks.count_exercises(sol)


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=[str(p.relative_to(ROOT)) for p in ALL_NOTEBOOKS])
def test_no_pip_cells(path):
    nb = json.loads(path.read_text())
    for c in nb["cells"]:
        src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        assert "!pip" not in src and "%pip" not in src, f"{path.name}: the environment comes from the project's install"
