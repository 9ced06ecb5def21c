"""The environment: pyproject.toml and environment.yml agree, every dependency is bounded, and
the installed versions satisfy the bounds."""

import pathlib
import re
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[1]


def pyproject_requirements() -> dict[str, Requirement]:
    text = (ROOT / "pyproject.toml").read_text()
    try:
        import tomllib  # Python 3.11+

        deps = tomllib.loads(text)["project"]["dependencies"]
    except ModuleNotFoundError:  # Python 3.10: the dependencies array, one quoted spec a line
        block = re.search(r"^dependencies = \[(.*?)^\]", text, re.M | re.S).group(1)
        deps = re.findall(r'^\s*"([^"]+)",', block, re.M)
    return {Requirement(r).name.lower(): Requirement(r) for r in deps}


def environment_yml_requirements() -> dict[str, Requirement]:
    """The pip section of environment.yml (read without a YAML library: one '- spec' a line)."""
    reqs, in_pip = {}, False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        stripped = line.split(" #", 1)[0].rstrip()
        if re.match(r"^\s*- pip:\s*$", stripped):
            in_pip = True
            continue
        if in_pip:
            m = re.match(r"^\s{6,}- (.+)$", stripped)
            if not m:
                if stripped.strip():
                    in_pip = False
                continue
            spec = m.group(1).strip()
            if spec.startswith("-e"):
                continue
            r = Requirement(spec)
            reqs[r.name.lower()] = r
    return reqs


def test_environment_yml_agrees_with_pyproject():
    py, env = pyproject_requirements(), environment_yml_requirements()
    assert set(env) == set(py), f"only in pyproject: {set(py) - set(env)}; only in environment.yml: {set(env) - set(py)}"
    for name, r in py.items():
        assert str(env[name].specifier) == str(r.specifier), f"{name}: {env[name].specifier} != {r.specifier}"
        assert str(env[name].marker) == str(r.marker), f"{name}: marker {env[name].marker} != {r.marker}"


def test_environment_yml_installs_the_project():
    assert re.search(r"^\s+- -e \.\s*$", (ROOT / "environment.yml").read_text(), re.M)


@pytest.mark.parametrize("name", sorted(pyproject_requirements()))
def test_dependency_bounded_above(name):
    r = pyproject_requirements()[name]
    assert any(s.operator in ("<", "<=", "==", "~=") for s in r.specifier), f"{name} has no upper bound: {r}"


@pytest.mark.parametrize("name", sorted(pyproject_requirements()))
def test_installed_version_within_bounds(name):
    r = pyproject_requirements()[name]
    if r.marker is not None and not r.marker.evaluate():
        pytest.skip(f"{name} is not installed on this platform ({r.marker})")
    installed = Version(metadata.version(name).split("+")[0])
    assert installed in r.specifier, f"{name} {installed} outside {r.specifier}"


def test_readme_quick_start_commands_exist():
    """The README's two commands are Makefile targets and .ci/run calls the test one."""
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("lab", "test"):
        assert f"make {target}" in readme
        assert re.search(rf"^{target}:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
