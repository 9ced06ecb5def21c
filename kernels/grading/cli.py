"""Grade notebooks from the command line.

    python -m kernels.grading lessons/02_online_softmax/02_online_softmax.ipynb
    python -m kernels.grading submissions/            # one table per student

Each notebook is executed top to bottom in a fresh kernel (errors do not stop it). Its check
cells record their verdicts; the report lists every exercise the notebook checks, with PASS,
FAIL and the reason, NOT ATTEMPTED, or NOT RUN (the check cell errored or never ran). The exit
status is 1 when any exercise did not pass.

In a folder, a student is a sub-folder (submissions/alice/*.ipynb) or a notebook file directly
in the folder (submissions/alice.ipynb).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import sys
import tempfile

CHECK_CALL = re.compile(r"""check\(\s*["']([0-9]{2}\.[A-Za-z0-9_]+)["']""")


def expected_exercises(nb: dict) -> list[str]:
    """Exercise ids the notebook's check cells grade, in order."""
    ids = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        for m in CHECK_CALL.finditer(src):
            if m.group(1) not in ids:
                ids.append(m.group(1))
    return ids


def grade_notebook(path: pathlib.Path, timeout: int = 600) -> list[dict]:
    """Execute one notebook and return one row per exercise: id, status, message."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    ids = expected_exercises(nb)
    with tempfile.TemporaryDirectory() as tmp:
        report = pathlib.Path(tmp) / "verdicts.jsonl"
        report.touch()
        old = {k: os.environ.get(k) for k in ("KERNELS_GRADE_REPORT", "KERNELS_STRICT_CHECKS")}
        os.environ["KERNELS_GRADE_REPORT"] = str(report)
        os.environ.pop("KERNELS_STRICT_CHECKS", None)
        try:
            client = NotebookClient(
                nb, timeout=timeout, allow_errors=True, kernel_name="python3",
                resources={"metadata": {"path": str(path.parent.resolve())}},
            )
            client.execute()
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        seen = {}
        for line in report.read_text().splitlines():
            v = json.loads(line)
            seen[v["exercise"]] = v  # the last verdict of an exercise counts
    rows = []
    for ex in ids:
        if ex in seen:
            rows.append({"exercise": ex, "status": seen[ex]["status"], "message": seen[ex]["message"]})
        else:
            rows.append({"exercise": ex, "status": "not run",
                         "message": "its check cell raised or did not run (see the notebook's errors)"})
    for ex, v in seen.items():
        if ex not in ids:
            rows.append({"exercise": ex, "status": v["status"], "message": v["message"]})
    return rows


def submissions(target: pathlib.Path) -> list[tuple[str, list[pathlib.Path]]]:
    """(student, notebooks) pairs for a notebook file or a folder of submissions."""
    if target.is_file():
        return [(target.stem, [target])]
    found = []
    for entry in sorted(target.iterdir()):
        if entry.is_dir() and not entry.name.startswith("."):
            nbs = sorted(p for p in entry.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
            if nbs:
                found.append((entry.name, nbs))
        elif entry.suffix == ".ipynb":
            found.append((entry.stem, [entry]))
    return found


def print_table(student: str, rows: list[tuple[str, dict]], out=None) -> None:
    out = out or sys.stdout
    passed = sum(r["status"] == "pass" for _, r in rows)
    print(f"\n== {student}: {passed}/{len(rows)} exercises pass", file=out)
    width = max([len(r["exercise"]) for _, r in rows] + [8])
    for nb, r in rows:
        status = r["status"].upper()
        reason = f"  {r['message']}" if r["message"] and r["status"] != "pass" else ""
        print(f"  {r['exercise']:<{width}}  {status:<13}{nb}{reason}", file=out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.grading", description="Grade course notebooks.")
    parser.add_argument("target", type=pathlib.Path, help="a notebook, or a folder of submissions")
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell")
    parser.add_argument("--json", type=pathlib.Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if not args.target.exists():
        parser.error(f"{args.target} does not exist")
    results, ok = {}, True
    for student, nbs in submissions(args.target):
        rows = []
        for nb in nbs:
            for r in grade_notebook(nb, args.timeout):
                rows.append((nb.name, r))
        if not rows:
            rows.append(("-", {"exercise": "(none)", "status": "fail", "message": "no graded exercise found"}))
        print_table(student, rows)
        ok &= all(r["status"] == "pass" for _, r in rows)
        results[student] = [dict(r, notebook=nb) for nb, r in rows]
    if not results:
        print(f"no notebooks found in {args.target}")
        ok = False
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
