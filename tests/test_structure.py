"""Issue 9's measures of the package's shape, checked on every test run (pure Python: ``ast`` and line windows).

- no file under src/ over 400 lines; no function over 60 lines (``def`` line to last line inclusive; a nested
  function counts on its own as well as inside its parent);
- no import cycle between deitlab modules, imports inside functions included;
- no private module (a file ``_name.py``) imported from outside its own package;
- no block of 6 or more identical non-trivial lines appearing twice within src/.

The checker itself is tested on small synthetic trees at the end, so that it cannot pass by finding nothing.
"""

from __future__ import annotations

import ast
import itertools
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
MIN_COPIED_LINES = 6

FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
DOCSTRING_OWNERS = (ast.Module, ast.ClassDef, *FUNCTIONS)
LONE_BRACKETS = re.compile(r"^[)\]}]+[,;:]?$")  # `)`, `]`, `})`, `),` ... end every multi-line call
FMT_DIRECTIVE = re.compile(r"\s*#\s*fmt:\s*(skip|off|on)\s*$")


@dataclass(frozen=True)
class Module:
    name: str  # dotted: deitlab.models.vit; a package is its __init__.py: deitlab.models
    path: Path
    is_package: bool


@dataclass(frozen=True)
class Edge:
    target: str
    line: int


# ---- the checker ---------------------------------------------------------------------------------------------------
def find_modules(root: Path) -> dict[str, Module]:
    """Every ``.py`` file under ``root`` by dotted module name."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        out[name] = Module(name, path, is_package)
    return out


def _existing(name: str, modules: dict[str, Module]) -> str | None:
    """``name`` or its longest prefix that is a module of the tree (``None`` for outside modules)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _import_targets(node: ast.Import | ast.ImportFrom, importer: Module, modules: dict[str, Module]) -> list[str]:
    """The modules an import names: ``from a.b import c`` is ``a.b.c`` when that is a module, else ``a.b``."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:  # relative: strip (level - 1) parts from the importer's package
            package = importer.name.split(".") if importer.is_package else importer.name.split(".")[:-1]
            base_parts = package[: len(package) - (node.level - 1)]
            base = ".".join([*base_parts, *([node.module] if node.module else [])])
        else:
            base = node.module or ""
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    return [t for t in (_existing(n, modules) for n in names) if t is not None]


def import_edges(modules: dict[str, Module]) -> dict[str, list[Edge]]:
    """Module -> the tree's modules it imports anywhere in its body (functions and ``if`` blocks included)."""
    edges: dict[str, list[Edge]] = {}
    for name, module in modules.items():
        tree = ast.parse(module.path.read_text(), filename=str(module.path))
        found = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                found += [Edge(t, node.lineno) for t in _import_targets(node, module, modules) if t != name]
        edges[name] = sorted(set(found), key=lambda e: (e.line, e.target))
    return edges


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the graph's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(components)


def _one_cycle(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first inside the component)."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {component}")  # a component always has one


def import_cycles(modules: dict[str, Module]) -> list[str]:
    """One line per cycle: ``a -> b (a.py:12) -> a (b.py:40)``, then the component's other members if any."""
    edges = import_edges(modules)
    graph = {m: {e.target for e in es} for m, es in edges.items()}
    out = []
    for component in strongly_connected(graph):
        cycle = _one_cycle(component, graph)
        hops = [cycle[0]]
        for a, b in itertools.pairwise(cycle):
            line = next(e.line for e in edges[a] if e.target == b)
            hops.append(f"{b} ({modules[a].path.name}:{line})")
        rest = sorted(set(component) - set(cycle))
        out.append(" -> ".join(hops) + (f"; also in this cycle: {', '.join(rest)}" if rest else ""))
    return out


def private_imports(modules: dict[str, Module]) -> list[str]:
    """Imports of a ``_name.py`` module from outside the package that holds it."""
    out = []
    for importer, edges in import_edges(modules).items():
        for e in edges:
            package, _, leaf = e.target.rpartition(".")
            private = leaf.startswith("_") and not leaf.endswith("__") and not modules[e.target].is_package
            if private and importer != package and not importer.startswith(package + "."):
                out.append(f"{_rel(modules[importer].path)}:{e.line} imports {e.target}")
    return out


def long_files(modules: dict[str, Module], limit: int = MAX_FILE_LINES) -> list[str]:
    counts = {m.path: len(m.path.read_text().splitlines()) for m in modules.values()}
    return [f"{_rel(p)}: {n} lines" for p, n in sorted(counts.items()) if n > limit]


def long_functions(modules: dict[str, Module], limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """Functions longer than ``limit`` lines, ``def`` line to last line; nested ones are checked on their own too."""
    out = []

    def walk(node: ast.AST, prefix: str, path: Path) -> None:
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (*FUNCTIONS, ast.ClassDef)):
                walk(child, prefix, path)
                continue
            length = child.end_lineno - child.lineno + 1
            if isinstance(child, FUNCTIONS) and length > limit:
                out.append(f"{_rel(path)}:{child.lineno} {prefix}{child.name} ({length} lines)")
            walk(child, f"{prefix}{child.name}.", path)

    for m in modules.values():
        walk(ast.parse(m.path.read_text()), "", m.path)
    return out


def significant_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, stripped text)`` of the lines a copied block is made of.

    Left out: blank lines, comments, docstrings, imports, lone closing brackets; ``# fmt: skip`` is stripped.
    """
    text = path.read_text()
    ignored: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            ignored.update(range(node.lineno, node.end_lineno + 1))
        if isinstance(node, DOCSTRING_OWNERS) and node.body and isinstance(node.body[0], ast.Expr):
            doc = node.body[0]
            if isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str):
                ignored.update(range(doc.lineno, doc.end_lineno + 1))
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = FMT_DIRECTIVE.sub("", raw).strip()
        if number not in ignored and line and not line.startswith("#") and not LONE_BRACKETS.match(line):
            out.append((number, line))
    return out


def copied_blocks(paths: list[Path], size: int = MIN_COPIED_LINES) -> list[str]:
    """Blocks of ``size`` or more identical significant lines found twice, as ``a.py:3-10 == b.py:40-47``."""
    lines = {p: significant_lines(p) for p in paths}
    windows: dict[tuple[str, ...], list[tuple[Path, int]]] = defaultdict(list)
    for p, ls in lines.items():
        for k in range(len(ls) - size + 1):
            windows[tuple(text for _, text in ls[k : k + size])].append((p, k))
    pairs = set()
    for places in windows.values():
        for (pa, ka), (pb, kb) in itertools.combinations(places, 2):
            if pa != pb or abs(ka - kb) >= size:  # overlapping windows of one run of repeated lines are no copy
                pairs.add((pa, ka, pb, kb))
    out = []
    for pa, ka, pb, kb in sorted(pairs):
        if (pa, ka - 1, pb, kb - 1) in pairs:
            continue  # inside a longer block, reported from its start
        n = size
        while (pa, ka + n - size + 1, pb, kb + n - size + 1) in pairs:
            n += 1
        a, b = lines[pa], lines[pb]
        out.append(f"{_rel(pa)}:{a[ka][0]}-{a[ka + n - 1][0]} == {_rel(pb)}:{b[kb][0]}-{b[kb + n - 1][0]} ({n} lines)")
    return out


def _rel(path: Path) -> str:
    return str(path.relative_to(SRC.parent)) if path.is_relative_to(SRC.parent) else path.name


def _check(what: str, offenders: list[str]) -> None:
    """Fail with one offender per line (no assertion rewriting noise)."""
    if offenders:
        pytest.fail(f"{len(offenders)} {what}:\n  " + "\n  ".join(offenders), pytrace=False)


# ---- the measures on src/ ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    found = find_modules(SRC)
    assert "deitlab" in found and "deitlab.config" in found, f"no package found under {SRC}"
    return found


def test_no_file_over_400_lines(modules: dict[str, Module]) -> None:
    _check(f"files over {MAX_FILE_LINES} lines", long_files(modules))


def test_no_function_over_60_lines(modules: dict[str, Module]) -> None:
    _check(f"functions over {MAX_FUNCTION_LINES} lines", long_functions(modules))


def test_no_import_cycles(modules: dict[str, Module]) -> None:
    _check("import cycles (function-local imports included)", import_cycles(modules))


def test_no_private_module_imported_from_another_package(modules: dict[str, Module]) -> None:
    _check("imports of a private module from outside its package", private_imports(modules))


def test_no_copied_blocks(modules: dict[str, Module]) -> None:
    _check(f"blocks of {MIN_COPIED_LINES}+ identical lines", copied_blocks([m.path for m in modules.values()]))


# ---- the checker on synthetic trees: each measure can fail -------------------------------------------------------
def _tree(root: Path, files: dict[str, str]) -> dict[str, Module]:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return find_modules(root)


def _function(name: str, lines: int, indent: str = "") -> str:
    """A function of exactly ``lines`` lines, ``def`` line included."""
    body = "".join(f"{indent}    x{i} = {i}\n" for i in range(lines - 2))
    return f"{indent}def {name}():\n{body}{indent}    return 0\n"


def test_checker_flags_a_401_line_file_and_not_a_400_line_one(tmp_path: Path) -> None:
    modules = _tree(tmp_path, {"pkg/__init__.py": "", "pkg/big.py": "x = 1\n" * 401, "pkg/ok.py": "x = 1\n" * 400})
    assert [line.split(":")[0] for line in long_files(modules)] == ["big.py"]


def test_checker_flags_a_61_line_function_and_not_a_60_line_one(tmp_path: Path) -> None:
    nested = "class C:\n    def method(self):\n" + _function("inner", 61, indent="        ") + "        return inner\n"
    text = _function("long", 61) + _function("fits", 60) + nested
    found = long_functions(_tree(tmp_path, {"pkg/__init__.py": "", "pkg/m.py": text}))
    assert [f.split(" ", 1)[1] for f in found] == [
        "long (61 lines)",
        "C.method (63 lines)",
        "C.method.inner (61 lines)",
    ]


def test_checker_finds_a_cycle_through_a_function_local_import(tmp_path: Path) -> None:
    modules = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg.b import helper\n",
            "pkg/b.py": "def helper():\n    from pkg import a  # hidden in a function\n    return a\n",
            "pkg/c.py": "import pkg.a\n",  # imports into the cycle, is not part of it
        },
    )
    assert import_cycles(modules) == ["pkg.a -> pkg.b (a.py:1) -> pkg.a (b.py:2)"]


def test_checker_resolves_relative_imports_and_package_edges(tmp_path: Path) -> None:
    modules = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/sub/__init__.py": "from .c import y\n",
            "pkg/sub/c.py": "from . import missing_name\nfrom ..d import z\ny = 1\n",  # -> pkg.sub, pkg.d
            "pkg/d.py": "from pkg.sub.c import y as z\nfrom pkg.sub import c\n",  # -> pkg.sub.c twice
        },
    )
    edges = {m: [e.target for e in es] for m, es in import_edges(modules).items()}
    assert edges["pkg.sub"] == ["pkg.sub.c"] and edges["pkg.sub.c"] == ["pkg.sub", "pkg.d"]
    assert edges["pkg.d"] == ["pkg.sub.c", "pkg.sub.c"]
    cycles = import_cycles(modules)
    assert len(cycles) == 1 and cycles[0].startswith("pkg.d -> pkg.sub.c (d.py:1) -> pkg.d (c.py:2)"), cycles
    assert "also in this cycle: pkg.sub" in cycles[0]


def test_checker_accepts_an_acyclic_tree(tmp_path: Path) -> None:
    files = {"pkg/__init__.py": "from pkg.a import f\n", "pkg/a.py": "from pkg.b import g\n", "pkg/b.py": "g = 1\n"}
    assert import_cycles(_tree(tmp_path, files)) == []


def test_checker_flags_a_private_module_imported_from_another_package(tmp_path: Path) -> None:
    modules = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/models/__init__.py": "from pkg.models._registry import r\n",
            "pkg/models/_registry.py": "r = 1\n",
            "pkg/models/vit.py": "from ._registry import r\n",  # inside its package: fine
            "pkg/models/deep/x.py": "from pkg.models._registry import r\n",  # a sub-package is inside too
            "pkg/io.py": "from pkg.models._registry import r\n",
            "pkg/engine/run.py": "def f():\n    from pkg.models import _registry\n",
            "pkg/__main__.py": "",  # dunder modules are not private
            "pkg/cli.py": "import pkg.__main__\n",
        },
    )
    assert private_imports(modules) == ["run.py:2 imports pkg.models._registry", "io.py:1 imports pkg.models._registry"]


COPIED = [
    "def f(a, b):",
    "    total = a + b",
    "    scaled = total * 2",
    "    shifted = scaled - a",
    "    squared = shifted**2",
    "    return squared / b",
]


def test_checker_flags_a_copied_6_line_block_and_not_a_5_line_one(tmp_path: Path) -> None:
    six = "\n".join(COPIED) + "\n"
    five = "\n".join(COPIED[:5])  # the same five lines, then different ones
    files = {
        "a.py": six,
        "b.py": "x = 1\n\n" + six,
        "c.py": five + "\n    return 0\n",
        "d.py": five + "\n    return 1\n",
    }
    modules = _tree(tmp_path, files)
    assert copied_blocks(sorted(m.path for m in modules.values())) == ["a.py:1-6 == b.py:3-8 (6 lines)"]


def _padded(code: list[str]) -> str:
    """``code`` (a function) after a module docstring and an import; a docstring, comment and blank line inside."""
    head = ['"""Module docstring.', "", "Over several lines.", '"""', "", "from os import path", ""]
    inside = ['    """The docstring of f."""', "    # a comment", ""]
    return "\n".join([*head, code[0], *inside, *code[1:]]) + "\n"


def test_checker_skips_docstrings_imports_comments_and_blank_lines(tmp_path: Path) -> None:
    # padding in between does not hide a copy ...
    modules = _tree(tmp_path / "copy", {"a.py": "\n".join(COPIED) + "\n", "b.py": _padded(COPIED)})
    assert copied_blocks(sorted(m.path for m in modules.values())) == ["a.py:1-6 == b.py:8-16 (6 lines)"]
    # ... and identical padding does not count towards the six lines
    five = [*COPIED[:5], "    return 0"]
    modules = _tree(tmp_path / "five", {"a.py": _padded(five), "b.py": _padded([*COPIED[:5], "    return 1"])})
    assert copied_blocks(sorted(m.path for m in modules.values())) == []


def test_significant_lines_drop_lone_brackets_and_fmt_skip(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text("call(\n    a,\n)\nitems = [\n    1,\n]  # fmt: skip\nd = {1: (\n    2,\n)}\n")
    assert [text for _, text in significant_lines(path)] == ["call(", "a,", "items = [", "1,", "d = {1: (", "2,"]
