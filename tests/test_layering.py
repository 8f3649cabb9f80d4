"""The package's floors: every import points down, pure math loads without Ray, vLLM or DeepSpeed.

A module may import its own package and any package on a lower floor, never a
sibling on its floor or anything above; the table below is the architecture
(docs/architecture.md draws it). A new package must be given a floor here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import REPO

PACKAGE = REPO / "aharl"

# Lowest first. "" is the top-level modules (config, types, errors, device, ...).
FLOORS: list[set[str]] = [
    {""},
    {"grpo", "sync"},
    {"data", "rewards", "tracking", "planning"},
    {"rollout", "learner"},
    {"evaluation"},
    {"runtime"},
    {"trainer"},
    {"bench"},
    {"launch"},
]
FLOOR_OF = {package: level for level, packages in enumerate(FLOORS) for package in packages}
# Floors whose modules run inside actors or are pure computation: no Ray there.
RAY_FREE = {"", "grpo", "sync", "data", "rewards", "tracking", "planning", "rollout", "learner", "evaluation"}


def package_of(module: str) -> str:
    """``aharl.grpo.loss`` -> ``grpo``; ``aharl.config`` -> ``""``."""
    parts = module.split(".")
    if len(parts) == 1:
        return ""
    if len(parts) > 2 or (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return ""


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def imports_of(path: Path) -> list[str]:
    """Every module ``path`` imports, at the top or inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found += [
                f"{node.module}.{alias.name}"
                for alias in node.names
                if (PACKAGE / node.module.replace("aharl.", "").replace(".", "/") / alias.name).is_dir()
            ]
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_package_has_a_floor():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages <= set(FLOOR_OF), f"give these a floor in FLOORS: {sorted(packages - set(FLOOR_OF))}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_point_down(path):
    own = package_of(module_name(path))
    upward = []
    for target in imports_of(path):
        if not target.startswith("aharl.") or target == "aharl":
            continue
        other = package_of(target)
        if other == own and other != "":
            continue
        if other == "" and own == "":
            continue  # the base modules build on each other (config -> system_prompts, device -> config)
        if FLOOR_OF[other] >= FLOOR_OF[own]:
            upward.append(f"{target} (floor {FLOOR_OF[other]}: {other or 'base'})")
    assert not upward, (
        f"{module_name(path)} (floor {FLOOR_OF[own]}: {own or 'base'}) imports from its floor or above: {upward}"
    )


@pytest.mark.parametrize(
    "path", [p for p in SOURCES if package_of(module_name(p)) in RAY_FREE], ids=lambda p: str(p.relative_to(REPO))
)
def test_actor_bodies_and_math_know_nothing_of_ray(path):
    assert not [t for t in imports_of(path) if t == "ray" or t.startswith("ray.")]


def test_pure_grpo_math_imports_without_ray_vllm_or_deepspeed():
    probe = (
        "import sys; import aharl.grpo.advantages, aharl.grpo.loss, aharl.grpo.logprobs, aharl.grpo.batch; "
        "print(sorted(m for m in ('ray', 'vllm', 'deepspeed') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == "[]"


def import_cycle(package: Path) -> list[str] | None:
    """A cycle among the modules of one package (imports inside functions count), or None."""
    modules = {module_name(p): p for p in sorted(package.glob("*.py"))}
    edges = {name: [t for t in imports_of(path) if t in modules and t != name] for name, path in modules.items()}
    state: dict[str, str] = {}  # "open" while on the path being walked, "done" after

    def walk(name: str, path: list[str]) -> list[str] | None:
        state[name] = "open"
        for target in edges[name]:
            if state.get(target) == "open":
                return path[path.index(target) :] + [target] if target in path else [name, target]
            if target not in state and (cycle := walk(target, [*path, target])):
                return cycle
        state[name] = "done"
        return None

    for name in modules:
        if name not in state and (cycle := walk(name, [name])):
            return cycle
    return None


@pytest.mark.parametrize(
    "package", [PACKAGE, *sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())], ids=lambda p: p.name
)
def test_no_package_has_an_import_cycle_among_its_modules(package):
    # A cycle makes the import order matter and the modules one unit in disguise (a backend and its registry, say).
    assert import_cycle(package) is None, f"import cycle: {' -> '.join(import_cycle(package))}"


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    pkg = tmp_path / "aharl" / "demo"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from aharl.demo.b import g\n")
    (pkg / "b.py").write_text("from aharl.demo.a import f\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "aharl")
    assert import_cycle(pkg) in (
        ["aharl.demo.a", "aharl.demo.b", "aharl.demo.a"],
        ["aharl.demo.b", "aharl.demo.a", "aharl.demo.b"],
    )
