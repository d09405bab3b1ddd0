"""What a fresh install needs is declared: every third-party module the four packages import belongs to a
distribution named in pyproject.toml (core, or the extra whose code uses it), and every module imports."""
from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import sys
import tomllib
from fnmatch import fnmatchcase
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ofa_core", "agents", "devices", "bench")
# Import names whose distribution may be absent from this environment (an extra not installed).
KNOWN_DISTRIBUTIONS = {"litert_torch": "litert-torch", "ai_edge_litert": "ai-edge-litert", "yaml": "pyyaml",
                       "ai_edge_quantizer": "ai-edge-quantizer",
                       "flatbuffers": "flatbuffers", "usb1": "libusb1", "adb_shell": "adb-shell"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> dict[str, set[str]]:
    """{normalised distribution: {"core"} and/or the extras that name it}."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out: dict[str, set[str]] = {}
    groups = {"core": project["dependencies"], **project.get("optional-dependencies", {})}
    for group, reqs in groups.items():
        for req in reqs:
            out.setdefault(_norm(re.match(r"[A-Za-z0-9._-]+", req).group(0)), set()).add(group)
    return out


def _third_party_imports() -> dict[str, set[str]]:
    """{top-level import name: {files importing it}} over every module of the four packages, in functions too."""
    found: dict[str, set[str]] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in PACKAGES and top not in sys.stdlib_module_names:
                        found.setdefault(top, set()).add(path.relative_to(ROOT).as_posix())
    return found


def test_every_imported_third_party_module_is_declared():
    declared = _declared()
    installed = packages_distributions()
    missing = []
    for name, files in sorted(_third_party_imports().items()):
        dists = installed.get(name) or [KNOWN_DISTRIBUTIONS.get(name, "")]
        if not any(_norm(d) in declared for d in dists if d):
            missing.append(f"{name} (distribution {', '.join(dists) or '?'}) imported by {sorted(files)}")
    assert not missing, "undeclared imports: " + "; ".join(missing)


def test_extras_are_imported_only_where_their_command_needs_them():
    """Core modules must import without the extras: an extra's package is imported inside a function, or by a
    runtime plugin module that fails with a one-line install hint."""
    declared = _declared()
    core_only = {d for d, groups in declared.items() if "core" in groups}
    plugins = {"agents/runtimes/litert.py"}
    offenders = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for node in ast.parse(path.read_text()).body:  # module level only
                if isinstance(node, ast.Try):
                    continue
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module else [])
                for name in names:
                    dist = _norm(KNOWN_DISTRIBUTIONS.get(name.split(".")[0], name.split(".")[0]))
                    if dist in declared and dist not in core_only and rel not in plugins:
                        offenders.append(f"{rel} imports {name} at module level")
    assert not offenders, offenders


def test_benchmarks_are_left_out_of_the_installation():
    """bench/perf holds the benchmarks, run from a clone (`python -m bench.perf AREA`): every other package of
    the four goes into the wheel, none of bench.perf (setuptools matches the patterns with fnmatchcase)."""
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = sorted(".".join(d.relative_to(ROOT).parts) for pkg in PACKAGES
                      for d in [ROOT / pkg, *(ROOT / pkg).rglob("*")] if (d / "__init__.py").is_file())

    def installed(name: str) -> bool:
        return (any(fnmatchcase(name, p) for p in find["include"])
                and not any(fnmatchcase(name, p) for p in find.get("exclude", [])))

    benchmarks = [p for p in packages if p == "bench.perf" or p.startswith("bench.perf.")]
    assert benchmarks == ["bench.perf"]
    assert [p for p in packages if not installed(p)] == benchmarks


def test_requires_python_matches_what_the_code_uses():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"  # tomllib, used unconditionally, is 3.11+


@pytest.mark.parametrize("pkg", PACKAGES)
def test_every_module_imports(pkg):
    """Every module of the package as imported here: from a clone that includes bench.perf (the benchmarks),
    from an installation it does not (`test_benchmarks_are_left_out_of_the_installation`)."""
    failures = []
    package = importlib.import_module(pkg)
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{pkg}."):
        try:
            importlib.import_module(info.name)
        except ImportError as exc:  # an extra not installed here: the message must say what to install
            if "pip install" not in str(exc) or "\n" in str(exc):
                failures.append(f"{info.name}: {exc!r}")
    assert not failures, failures
