"""The command-line grader executes notebooks, names each exercise with its verdict and reason,
tabulates a folder of submissions per student, and exits non-zero when anything fails."""

import json
import pathlib
import re

import nbformat
import pytest

from kernels.grading import cli, notebooks

ROOT = notebooks.ROOT

TOY = '''
from kernels.grading import core, registry

def grade(candidate):
    for n in (1, 2, 3):
        with core.case(f"n={n}"):
            core.assert_scalar("square", candidate(n), n * n)

registry.load_all()
registry.EXERCISES.pop("99.square", None)
registry.exercise("99.square", "square", lambda n: n * n, {"double": lambda n: 2 * n})(grade)
'''


def toy_notebook(path: pathlib.Path, body: str) -> pathlib.Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(TOY),
        nbformat.v4.new_code_cell(f"def square(n):\n    {body}"),
        nbformat.v4.new_code_cell('from kernels.grading import check\ncheck("99.square", square)'),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_folder_of_submissions_gives_a_table_per_student(tmp_path, capsys):
    toy_notebook(tmp_path / "subs" / "alice" / "hw.ipynb", "return n * n")
    toy_notebook(tmp_path / "subs" / "bob.ipynb", "return n + n")
    toy_notebook(tmp_path / "subs" / "carol" / "hw.ipynb", "raise NotImplementedError")
    out_json = tmp_path / "results.json"
    code = cli.main([str(tmp_path / "subs"), "--json", str(out_json), "--timeout", "120"])
    out = capsys.readouterr().out
    assert code == 1
    assert re.search(r"== alice: 1/1 exercises pass", out)
    assert re.search(r"== bob: 0/1 exercises pass", out)
    assert re.search(r"99\.square\s+FAIL.*case n=1: square is 2, expected 1", out)
    assert re.search(r"== carol: 0/1.*\n.*99\.square\s+NOT ATTEMPTED", out)
    results = json.loads(out_json.read_text())
    assert [r["status"] for r in results["alice"]] == ["pass"]


def test_a_passing_notebook_exits_zero(tmp_path, capsys):
    assert cli.main([str(toy_notebook(tmp_path / "ok.ipynb", "return n * n"))]) == 0
    assert "1/1 exercises pass" in capsys.readouterr().out


def test_a_check_cell_that_never_runs_is_reported(tmp_path, capsys):
    path = toy_notebook(tmp_path / "broken.ipynb", "return n * n")
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(2, nbformat.v4.new_code_cell("raise RuntimeError('the learner broke a cell')"))
    nb.cells[3].source = "import sys; sys.exit_not_a_function()\n" + nb.cells[3].source
    nbformat.write(nb, path)
    assert cli.main([str(path)]) == 1
    assert re.search(r"99\.square\s+NOT RUN", capsys.readouterr().out)


def smallest_solution_notebook():
    sols = sorted((ROOT / "solutions").glob("02_*/*.ipynb")) or sorted((ROOT / "solutions").glob("*/*.ipynb"))
    if not sols:
        pytest.fail("no solution notebook to grade")
    return sols[0]


def test_solution_notebook_passes_and_a_wrong_answer_fails(tmp_path, capsys):
    """On a real lesson: the solution passes; swapping one answer for a mutant from the bank
    makes the grader fail that exercise and name the reason."""
    from kernels.grading import registry

    sol = smallest_solution_notebook()
    assert cli.main([str(sol)]) == 0, capsys.readouterr().out
    capsys.readouterr()

    nb = nbformat.read(sol, as_version=4)
    for i, cell in enumerate(nb.cells):
        m = re.search(r"""check\(\s*["']([0-9]{2}\.\w+)["']\s*,\s*(\w+)\s*\)""", cell.source)
        if cell.cell_type == "code" and m:
            exercise_id, name = m.groups()
            mutant = sorted(registry.get(exercise_id).mutants)[0]
            nb.cells.insert(i, nbformat.v4.new_code_cell(
                f"from kernels.grading import get\n{name} = get({exercise_id!r}).mutants[{mutant!r}]"))
            break
    else:
        pytest.fail(f"{sol.name} has no check cell")
    wrong = tmp_path / sol.name
    nbformat.write(nb, wrong)
    assert cli.main([str(wrong)]) == 1
    out = capsys.readouterr().out
    assert re.search(rf"{re.escape(exercise_id)}\s+FAIL\s+\S+\s+\S", out), out
