"""The shape of the house: package directions, no import circles, files a newcomer can read."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "scheduling", "storage", "cogs", "botcore", "webapi")
MAX_LINES = 450
# Who may import whom (first-party only); bot.py wires everything and may import any. Cogs
# name the bot's class (ImageBot) in their types; bot.py loads them by name, never imports them.
ALLOWED = {
    "engine": {"engine"},
    "scheduling": {"scheduling", "engine"},
    "storage": {"storage", "scheduling", "engine"},
    "botcore": {"botcore", "scheduling", "engine", "storage", "webapi"},
    # The HTTP API is a front end like the cogs, without Discord; of botcore it uses only the
    # log redaction (botcore/redact.py imports nothing of Discord).
    "webapi": {"webapi", "scheduling", "engine", "storage", "botcore"},
    "cogs": {"cogs", "botcore", "scheduling", "engine", "storage", "bot"},
}


def _modules(*extra: str) -> dict[str, Path]:
    found = {"bot": ROOT / "bot.py"}
    for package in (*PACKAGES, *extra):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every first-party module this file imports, anywhere in it (type-only imports too)."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _graph(*extra: str) -> dict[str, set[str]]:
    modules = _modules(*extra)
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items()}


def test_no_import_circles() -> None:
    graph = _graph("bench")
    # A package's __init__ importing its own modules is not a circle a reader trips over.
    edges = {
        name: {
            t for t in targets if not (name in (*PACKAGES, "bench") and t.startswith(name + "."))
        }
        for name, targets in graph.items()
    }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert cycles == [], "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_packages_import_only_downwards() -> None:
    wrong = []
    for name, targets in _graph().items():
        top = name.split(".")[0]
        if top == "bot":
            continue
        for target in targets:
            if target.split(".")[0] not in ALLOWED[top]:
                wrong.append(f"{name} imports {target}")
    assert wrong == []


def test_no_production_file_is_too_long() -> None:
    long = [
        f"{path.relative_to(ROOT)}: {n} lines"
        for path in _modules().values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    ]
    assert long == []


def test_the_checker_sees_a_circle(tmp_path: Path) -> None:
    """The circle finder is not blind: two modules importing each other are found."""
    (tmp_path / "a.py").write_text("from engine import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from engine.a import x\n")
    known = {"engine.a", "engine.b"}
    assert _imports(tmp_path / "a.py", "engine.a", known) == {"engine.b"}
    assert _imports(tmp_path / "b.py", "engine.b", known) == {"engine.a"}


def test_the_http_api_takes_only_log_redaction_from_botcore() -> None:
    """webapi/ runs without Discord (python -m engine serve): botcore's Discord parts stay out."""
    used = {
        target
        for name, targets in _graph().items()
        if name.split(".")[0] == "webapi"
        for target in targets
        if target.split(".")[0] == "botcore"
    }
    assert used <= {"botcore.redact"}
