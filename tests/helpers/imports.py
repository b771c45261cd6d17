"""Static import closures of roadwork modules, for checking ``dvc.yaml``'s code deps.

Every ``import`` / ``from ... import`` of a ``roadwork`` module anywhere in a file counts, inside functions
too (the CLI and the stages import heavy modules lazily, and a lazy import is still code the stage runs),
as do the ``__init__`` of every package on the way. The result over-approximates what one run executes,
which is the safe side for DVC: a file listed needlessly costs a rerun, a file missed costs a stale result.

``python -m tests.helpers.imports [STAGE ...]`` prints the files each stage reaches that dvc.yaml misses;
``--write`` replaces every stage's ``src/`` deps in dvc.yaml with its closure (a package folder where the
stage reaches all of it), leaving the other deps and the rest of the file as they are.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
DVC_YAML = ROOT / "dvc.yaml"


def module_file(module: str) -> Path | None:
    """The source file of ``module`` under src/ (a module or a package's ``__init__``), None if none."""
    base = SRC / module.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, module: str, *, module_level_only: bool = False) -> set[str]:
    """roadwork modules ``path`` (the file of ``module``) imports; ``from pkg import name`` adds
    ``pkg.name`` when that is a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = tree.body if module_level_only else ast.walk(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "roadwork")
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            source = node.module or ""
            if node.level:
                source = ".".join(
                    parts[: len(parts) - node.level + 1] + ([node.module] if node.module else [])
                )
            if source.split(".")[0] != "roadwork":
                continue
            found.add(source)
            found.update(f"{source}.{a.name}" for a in node.names if module_file(f"{source}.{a.name}"))
    return found


def closure(roots: set[str]) -> set[str]:
    """Every roadwork module reachable from ``roots`` (packages' ``__init__`` included)."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        path = module_file(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(imported_modules(path, module))
    return seen


def stage_files(command: str) -> set[Path]:
    """Files (relative to the repository) that ``roadwork <command>`` runs: the closure of its stage module.
    The CLI that dispatches to it is left out: it parses arguments and reaches every command."""
    files = {module_file(m) for m in closure({f"roadwork.stages.{command}"})}
    return {f.relative_to(ROOT) for f in files if f is not None}


def missing_deps(stage: str, body: dict) -> list[str]:
    """Files the stage's ``roadwork`` command reaches that none of its ``deps`` covers (file or folder)."""
    words = str(body.get("cmd", "")).split()
    if len(words) < 2 or words[0] != "roadwork":
        raise ValueError(f"dvc.yaml stage {stage!r}: cmd {body.get('cmd')!r} is not `roadwork <command>`.")
    deps = [(d if isinstance(d, str) else next(iter(d))).rstrip("/") for d in body.get("deps") or []]

    def covered(path: str) -> bool:
        return any(path == d or path.startswith(d + "/") for d in deps)

    return sorted(str(p) for p in stage_files(words[1]) if not covered(str(p)))


def code_deps(command: str) -> list[str]:
    """``roadwork <command>``'s closure as dvc.yaml deps: a package folder where every file of it
    (sub-packages included) is reached, else the files."""
    files = {str(p) for p in stage_files(command)}
    folders = {
        str(d.relative_to(ROOT))
        for d in (SRC / "roadwork").rglob("*")
        if d.is_dir()
        and d.name != "__pycache__"
        and {str(f.relative_to(ROOT)) for f in d.rglob("*.py")} <= files
        and any(d.rglob("*.py"))
    }
    folders = {d for d in folders if not any(d.startswith(o + "/") for o in folders)}
    return sorted(folders | {f for f in files if not any(f.startswith(d + "/") for d in folders)})


def write_code_deps(dvc_yaml: Path) -> None:
    """Rewrite the ``src/`` entries of every stage's ``deps`` with :func:`code_deps` of its command."""
    lines, out = dvc_yaml.read_text().splitlines(), []
    command, in_deps, indent = None, False, ""
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("cmd: roadwork "):
            command = stripped.split()[2]
        if stripped == "deps:":
            in_deps, indent = True, line[: len(line) - len(line.lstrip())] + "  "
            out.append(line)
            continue
        if in_deps and not stripped.startswith("- "):
            out.extend(f"{indent}- {dep}" for dep in code_deps(str(command)))
            in_deps = False
        if in_deps and stripped.startswith("- src/"):
            continue
        out.append(line)
    dvc_yaml.write_text("\n".join(out) + "\n")


def main(argv: list[str]) -> int:
    from roadwork.stages.common import dvc_stages

    if argv == ["--write"]:
        write_code_deps(DVC_YAML)
        argv = []
    stages = dvc_stages(DVC_YAML)
    bad = 0
    for name, body in stages.items():
        if argv and name.split("@")[0] not in argv and name not in argv:
            continue
        missing = missing_deps(name, body)
        bad += bool(missing)
        print(f"{name}: " + (", ".join(missing) if missing else "complete"))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
