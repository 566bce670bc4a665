"""The layout of docs/architecture.md, checked: each room imports only rooms below it, no import
cycles, small files and functions. A change that breaks the picture fails here, not in review."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gpo"

#: Rooms from the bottom up (docs/architecture.md); a room may import the rooms listed before it.
LAYERS = [
    "io", "stats", "losses", "data", "models", "gold", "eval", "train", "experiments",
    "integrations", "cli",
]  # fmt: skip
#: Rooms at the same height that must not import each other (shared helpers).
INDEPENDENT = {"io": {"stats"}, "stats": {"io"}}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    """Every gpo module that ``path`` imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "gpo"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "gpo":
            for a in node.names:  # `from gpo.gold import build` imports a module
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in _modules() else str(node.module))
    return found


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "gpo"


def layering_violations(modules: dict[str, Path]) -> list[str]:
    wrong = []
    for module, path in modules.items():
        room = _room(module)
        if room == "gpo":  # gpo/__init__.py: the public API, the math only
            allowed = {"losses"}
        else:
            assert room in LAYERS, f"{module}: room {room!r} is not in docs/architecture.md"
            below = LAYERS[: LAYERS.index(room)]
            allowed = {room, *(r for r in below if r not in INDEPENDENT.get(room, set()))}
        for target in _imports(path):
            if _room(target) not in allowed:
                wrong.append(f"{module} imports {target}")
    return wrong


def test_every_room_imports_only_rooms_below_it() -> None:
    wrong = layering_violations(_modules())
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_import_graph_has_no_cycles() -> None:
    graph = {m: {t for t in _imports(p) if t != m} for m, p in _modules().items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(t) :], t]))
            if t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_files_and_functions_stay_small() -> None:
    entries = [p.name for p in PACKAGE.iterdir() if not p.name.startswith((".", "__pycache__"))]
    assert len(entries) <= 12, f"gpo/ has {len(entries)} entries: {sorted(entries)}"
    long_files, long_functions = [], []
    for module, path in _modules().items():
        source = path.read_text()
        if source.count("\n") > 400:
            long_files.append(f"{module}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if length > 80:
                    long_functions.append(f"{module}.{node.name}: {length} lines")
    assert not long_files, long_files
    assert not long_functions, long_functions


def test_the_layering_rule_catches_upward_imports(tmp_path: Path) -> None:
    """The checker itself: a data module importing the trainer (in a function) is reported, and
    so is io importing stats; a train module importing data is not."""
    up = tmp_path / "up.py"
    up.write_text("def f():\n    from gpo.train.trainer import train\n    import gpo.io\n")
    side = tmp_path / "side.py"
    side.write_text("from gpo.stats import mean_se\n")
    down = tmp_path / "down.py"
    down.write_text("from gpo.data import formats\n")
    found = layering_violations({"gpo.data.up": up, "gpo.io": side, "gpo.train.down": down})
    assert found == ["gpo.data.up imports gpo.train.trainer", "gpo.io imports gpo.stats"]
