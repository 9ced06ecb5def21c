"""Student notebooks are generated from the instructor's solution notebooks.

In solutions/, each exercise's answer sits between `### BEGIN SOLUTION` and `### END SOLUTION`
inside a function body (nbgrader's markers). The student copy in lessons/ replaces each marked
region by a line that raises NotImplementedError, and drops all outputs. Because answers live
inside functions, a student notebook with no answers still runs top to bottom: the check cells
report "not attempted" and later cells use `kernels`, not the learner's code.

    python -m kernels.grading.notebooks            # write lessons/ from solutions/
    python -m kernels.grading.notebooks --check    # exit 1 if lessons/ drifted from solutions/
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import sys

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
STUB = 'raise NotImplementedError("Exercise: write your answer here")'

ROOT = pathlib.Path(__file__).resolve().parents[2]


def cell_source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def strip_solutions(source: str, where: str = "cell") -> str:
    """Replace each BEGIN/END SOLUTION region by an indented NotImplementedError stub."""
    out, inside, indent = [], False, ""
    for lineno, line in enumerate(source.split("\n"), 1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"{where}, line {lineno}: nested {BEGIN}")
            indent = line[: len(line) - len(line.lstrip())]
            if not indent:
                raise ValueError(
                    f"{where}, line {lineno}: {BEGIN} must be inside a function body, so that the "
                    "student notebook still runs with the exercise unanswered"
                )
            inside = True
            out.append(indent + STUB)
        elif stripped == END:
            if not inside:
                raise ValueError(f"{where}, line {lineno}: {END} without {BEGIN}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: {BEGIN} without {END}")
    return "\n".join(out)


def clean(nb: dict) -> dict:
    """A copy without outputs, execution counts or per-run metadata."""
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k in ("tags",)}
    nb["metadata"] = {k: v for k, v in nb.get("metadata", {}).items() if k in ("kernelspec", "language_info")}
    if "language_info" in nb["metadata"]:
        nb["metadata"]["language_info"] = {"name": "python"}
    return nb


def student_version(solution_nb: dict, where: str = "notebook") -> dict:
    """The student notebook made from a solution notebook."""
    nb = clean(solution_nb)
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            src = cell_source(cell)
            if BEGIN in src:
                cell["source"] = strip_solutions(src, f"{where}, cell {i}")
    return nb


def count_exercises(nb: dict) -> int:
    return sum(cell_source(c).count(BEGIN) for c in nb["cells"] if c["cell_type"] == "code")


def dumps(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def pairs(root: pathlib.Path = ROOT):
    """(solution path, lesson path) for every solution notebook."""
    for sol in sorted((root / "solutions").glob("*/*.ipynb")):
        if ".ipynb_checkpoints" in sol.parts:
            continue
        yield sol, root / "lessons" / sol.relative_to(root / "solutions")


def drift(root: pathlib.Path = ROOT) -> list[str]:
    """Problems that make lessons/ differ from what solutions/ generates (empty when in sync)."""
    problems = []
    expected = set()
    for sol, les in pairs(root):
        expected.add(les)
        want = dumps(student_version(json.loads(sol.read_text()), str(sol.relative_to(root))))
        if not les.exists():
            problems.append(f"{les.relative_to(root)} is missing: run `python -m kernels.grading.notebooks`")
        elif json.loads(les.read_text()) != json.loads(want):
            problems.append(
                f"{les.relative_to(root)} differs from what {sol.relative_to(root)} generates: "
                "edit the solution notebook, then run `python -m kernels.grading.notebooks`"
            )
    for les in sorted((root / "lessons").glob("*/*.ipynb")):
        if les not in expected and ".ipynb_checkpoints" not in les.parts:
            problems.append(f"{les.relative_to(root)} has no solution notebook in solutions/")
    return problems


def generate(root: pathlib.Path = ROOT) -> list[pathlib.Path]:
    """Write every student notebook; also strip outputs from the solution notebooks."""
    written = []
    for sol, les in pairs(root):
        nb = json.loads(sol.read_text())
        sol.write_text(dumps(clean(nb)))
        les.parent.mkdir(parents=True, exist_ok=True)
        les.write_text(dumps(student_version(nb, str(sol.relative_to(root)))))
        written.append(les)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report drift instead of writing")
    args = parser.parse_args(argv)
    if args.check:
        problems = drift()
        for p in problems:
            print(p)
        print("lessons/ in sync with solutions/" if not problems else f"{len(problems)} problem(s)")
        return 1 if problems else 0
    for path in generate():
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
