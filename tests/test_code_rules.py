"""Rules the code keeps, checked on its syntax tree: every file write goes through :mod:`roadwork.atomic`;
no test module imports another test module (shared scaffolding lives in ``tests/helpers/`` and
``tests/conftest.py``).

A write counts as routed through roadwork.atomic when it sits in a lambda or function handed to
``atomic_write`` (which gives it a temporary path), in the body of ``with atomic_dir(...)``, or in a function
of the same module that such a place calls by name; or when it writes to memory (an ``io.BytesIO`` /
``io.StringIO`` made in the same function, ``sys.stdout``). Everything else is listed by file and line.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "roadwork"
TESTS = REPO / "tests"

# "file::function::call" -> why the direct write is right there
ALLOWED = {
    "data/check.py::move_aside::os.rename": "moves a user's own input aside into quarantine: one rename of "
    "an existing file, nothing written",
    "deploy/onnx_export.py::_run_exporter::torch.onnx.export": "the exporter writes a scratch file in a "
    "temporary folder; export_onnx writes the checked model to its path through atomic_write",
    "deploy/predictor.py::save::self.backbone.save": "Backbone.save writes its folder through atomic_dir",
    "train/finetune.py::_save::merged.save": "Backbone.save writes its folder through atomic_dir",
    "adapt/explora.py::_write_outputs::merged.save": "Backbone.save writes its folder through atomic_dir",
    "stages/bundle.py::_build_model::predictor.save": "Predictor.save writes each file through "
    "roadwork.atomic",
    "stages/bundle.py::_probe_fallback::predictor.save": "Predictor.save writes each file through "
    "roadwork.atomic",
    "stages/train.py::_refit::os.replace": "moves the refit's head files, already written whole by "
    "save_head, within outputs/: the rename is the atomic step",
    "stages/train.py::main::os.replace": "moves history.csv, already written whole by save_head, within "
    "outputs/: the rename is the atomic step",
}

# methods that write the file named by their first argument
_WRITING_METHODS = {
    "write_text",
    "write_bytes",
    "to_csv",
    "to_parquet",
    "to_feather",
    "to_pickle",
    "savefig",
    "save_pretrained",
    "save",
    "touch",
    "symlink_to",
    "hardlink_to",
}
# qualified functions that write a file, and which positional argument is the destination
_WRITING_FUNCTIONS = {
    "save_file": 1,
    "json.dump": 1,
    "pickle.dump": 1,
    "yaml.dump": 1,
    "yaml.safe_dump": 1,
    "torch.save": 1,
    "onnx.save": 1,
    "onnx.save_model": 1,
    "torch.onnx.export": 2,
    "np.save": 0,
    "np.savez": 0,
    "np.savez_compressed": 0,
    "np.savetxt": 0,
    "shutil.copy": 1,
    "shutil.copy2": 1,
    "shutil.copyfile": 1,
    "shutil.copytree": 1,
    "shutil.move": 1,
    "os.replace": 1,
    "os.rename": 1,
    "os.link": 1,
    "os.symlink": 1,
}
_WRITE_MODE = re.compile(r"^[rwxabt+U]*[wxa+][rwxabt+U]*$")
_MEMORY_FILES = {"BytesIO", "StringIO"}


@dataclass(frozen=True)
class Write:
    path: Path
    line: int
    function: str  # the innermost enclosing def, "<module>" at module level
    call: str  # the called expression, e.g. "frame.to_csv"

    @property
    def key(self) -> str:
        return f"{self.path.relative_to(PACKAGE).as_posix()}::{self.function}::{self.call}"


def _name(node: ast.expr) -> str:
    return ast.unparse(node)


def _is_mode(node: ast.expr | None) -> bool:
    return (
        isinstance(node, ast.Constant) and isinstance(node.value, str) and bool(_WRITE_MODE.match(node.value))
    )


def _destination(call: ast.Call) -> ast.expr | None:
    """The argument naming what ``call`` writes, or None when ``call`` writes no file."""
    func = call.func
    name = _name(func)
    mode = next((k.value for k in call.keywords if k.arg == "mode"), None)
    if name == "open" or (isinstance(func, ast.Attribute) and func.attr == "open" and name != "os.open"):
        positional = call.args[:2] if name == "open" or len(call.args) > 1 else call.args[:1]
        if _is_mode(mode) or any(_is_mode(a) for a in positional):
            return call.args[0] if call.args and name == "open" else func
        return None
    if name == "os.open":
        flags = _name(call.args[1]) if len(call.args) > 1 else ""
        return call.args[0] if re.search(r"O_(WRONLY|RDWR|CREAT|APPEND|TRUNC)", flags) else None
    if name in _WRITING_FUNCTIONS:
        index = _WRITING_FUNCTIONS[name]
        return call.args[index] if len(call.args) > index else func
    if name.rsplit(".", 1)[-1] == "save_file":
        return call.args[1] if len(call.args) > 1 else func
    if isinstance(func, ast.Attribute):
        if func.attr in _WRITING_METHODS and (call.args or func.attr in ("touch", "savefig")):
            return call.args[0] if call.args else func
        # Path.rename / Path.replace take one argument; str.replace and DataFrame.rename do not
        if func.attr in ("rename", "replace") and len(call.args) == 1 and not call.keywords:
            return func
    return None


class _Module:
    """One source file: its nodes' parents, its defs by name and the places that write through atomic."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tree = ast.parse(path.read_text(), filename=str(path))
        self.parent: dict[ast.AST, ast.AST] = {}
        self.defs: dict[str, list[ast.AST]] = {}
        for node in ast.walk(self.tree):
            for child in ast.iter_child_nodes(node):
                self.parent[child] = node
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.defs.setdefault(node.name, []).append(node)
        self.routed = self._routed_regions()

    def _routed_regions(self) -> set[ast.AST]:
        """Lambdas and defs handed to atomic_write, ``with atomic_dir`` statements, and every def of this
        module that one of them calls by name."""
        regions: set[ast.AST] = set()
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Call) and _name(node.func).rsplit(".", 1)[-1] == "atomic_write":
                for arg in [*node.args[1:], *(k.value for k in node.keywords)]:
                    if isinstance(arg, ast.Call) and _name(arg.func).endswith("partial") and arg.args:
                        arg = arg.args[0]
                    if isinstance(arg, ast.Lambda):
                        regions.add(arg)
                    elif isinstance(arg, ast.Name):
                        regions.update(self.defs.get(arg.id, []))
            elif isinstance(node, ast.With) and any(
                isinstance(item.context_expr, ast.Call)
                and _name(item.context_expr.func).rsplit(".", 1)[-1] == "atomic_dir"
                for item in node.items
            ):
                regions.add(node)
        todo = list(regions)
        while todo:
            for node in ast.walk(todo.pop()):
                if isinstance(node, ast.Call):
                    called = (
                        node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                    )
                    for target in self.defs.get(called, []):
                        if target not in regions:
                            regions.add(target)
                            todo.append(target)
        return regions

    def _ancestors(self, node: ast.AST) -> list[ast.AST]:
        chain = []
        while node in self.parent:
            node = self.parent[node]
            chain.append(node)
        return chain

    def _in_memory(self, destination: ast.expr, ancestors: list[ast.AST]) -> bool:
        if _name(destination) in ("sys.stdout", "sys.stderr"):
            return True
        if isinstance(destination, ast.Call):
            return _name(destination.func).rsplit(".", 1)[-1] in _MEMORY_FILES
        if not isinstance(destination, ast.Name):
            return False
        scope = next(
            (a for a in ancestors if isinstance(a, (ast.FunctionDef, ast.AsyncFunctionDef))), self.tree
        )
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
                made = _name(node.value.func).rsplit(".", 1)[-1]
                if destination.id in targets and made in _MEMORY_FILES:
                    return True
        return False

    def writes(self) -> list[Write]:
        """Every direct file write that is not routed through roadwork.atomic, in line order."""
        found = []
        for node in ast.walk(self.tree):
            if not isinstance(node, ast.Call) or (destination := _destination(node)) is None:
                continue
            ancestors = self._ancestors(node)
            if self.routed.intersection(ancestors) or self._in_memory(destination, ancestors):
                continue
            function = next(
                (a.name for a in ancestors if isinstance(a, (ast.FunctionDef, ast.AsyncFunctionDef))),
                "<module>",
            )
            found.append(Write(self.path, node.lineno, function, _name(node.func)))
        return sorted(found, key=lambda w: w.line)


def direct_writes(root: Path = PACKAGE) -> list[Write]:
    """The unrouted writes of every module under ``root`` but roadwork/atomic.py."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel == "atomic.py":
            continue
        found.extend(_Module(path).writes())
    return found


def test_every_file_write_goes_through_roadwork_atomic() -> None:
    writes = direct_writes()
    unexplained = [w for w in writes if w.key not in ALLOWED]
    assert not unexplained, (
        "write these through roadwork.atomic (atomic_write, atomic_dir, ...):\n"
        + "\n".join(
            f"{w.path.relative_to(REPO)}:{w.line}: {w.call}(...) in {w.function}" for w in unexplained
        )
    )
    stale = sorted(set(ALLOWED) - {w.key for w in writes})
    assert not stale, f"ALLOWED names writes that are no longer there: {stale}"


SAMPLE = """
import io, json, os, shutil, sys
from roadwork.atomic import atomic_dir, atomic_write

def direct(path, frame, image):
    path.write_text("x")                                  # 6
    frame.to_csv(path, index=False)                       # 7
    with open(path, "w") as handle:                       # 8
        json.dump({}, handle)                             # 9
    shutil.copyfile(path, path.with_suffix(".bak"))       # 10
    image.save(path, format="PNG")                        # 11
    os.replace(path, path.with_suffix(".old"))            # 12
    path.open("ab").close()                               # 13
    path.rename(path.with_suffix(".x"))                   # 14

def routed(path, frame, image):
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
    atomic_write(path, fill)
    with atomic_dir(path) as tmp:
        helper(tmp)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    frame.to_csv(sys.stdout)
    "a-b".replace("-", "_")
    frame.rename(columns={"a": "b"})
    with open(path) as handle, path.open("rb") as binary:
        return handle.read(), binary.read()

def fill(tmp):
    tmp.write_bytes(b"x")

def helper(folder):
    (folder / "a").write_text("y")
"""


def test_the_write_scan_names_direct_writes_and_passes_routed_ones(tmp_path: Path) -> None:
    (tmp_path / "sample.py").write_text(SAMPLE)
    found = [(w.line, w.call, w.function) for w in direct_writes(tmp_path)]
    assert found == [
        (6, "path.write_text", "direct"),
        (7, "frame.to_csv", "direct"),
        (8, "open", "direct"),
        (9, "json.dump", "direct"),
        (10, "shutil.copyfile", "direct"),
        (11, "image.save", "direct"),
        (12, "os.replace", "direct"),
        (13, "path.open", "direct"),
        (14, "path.rename", "direct"),
    ]


def test_no_test_module_imports_another() -> None:
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.rsplit(".", 1)[-1].startswith(("test_", "conftest")):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: imports {name}")
    assert not offenders, "move shared helpers to tests/helpers/ (fixtures to conftest.py):\n" + "\n".join(
        offenders
    )
