"""The shape of the package a newcomer reads: no import circle between blu's modules, no file
over 300 lines (DESIGN: a module that grows past that becomes a folder).

What counts as an import, for the circle test. Every `import` and `from ... import` in a file,
wherever it stands (inside a function or under `if TYPE_CHECKING:` too: a hidden import is
still a dependency, and the layering forbids it either way). An import reaches:

- the module it names, and every package above it that is not above the importer as well
  (`from .data.batches import X` in blu/train.py runs blu/data/__init__.py);
- for `from P import n`: P itself, even when P is the importer's own package, because the
  statement reads P's namespace, and what it finds there depends on how far P's __init__ has
  run; and P.n where that is a module.

The packages above a module, which Python runs before it, are not edges of their own (else
every package whose __init__ imports a submodule would be a circle). So a submodule that
imports its own package (`from . import x`, `from blu import __version__`) is a circle exactly
when that package's __init__ imports the submodule back, directly or through other modules;
`from .x import y` reads no package namespace and is never one.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 300


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Module name -> file, for every .py file of `package` under `root` (a package is its __init__.py)."""
    modules = {}
    for path in sorted((root / package.replace(".", "/")).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def ancestors(module: str) -> list[str]:
    """The packages above `module`, outermost first: blu.data.cache -> [blu, blu.data]."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that the imports of `module` (in file `path`) run or read, as the module docstring says."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    mine = set(ancestors(module))
    reached = set()

    def reach(target: str) -> None:
        for name in ancestors(target) + [target]:
            if name in known and name not in mine and name != module:
                reached.add(name)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                reach(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            reach(source)
            if source in known and source != module:
                reached.add(source)  # the namespace read, even of the importer's own package
            for alias in node.names:
                if f"{source}.{alias.name}" in known:
                    reach(f"{source}.{alias.name}")
    return reached


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    files = module_files(root, package)
    return {module: imported_modules(module, path, set(files)) for module, path in files.items()}


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Circles as [a, b, ..., a]: in each group of modules that reach each other (the strongly
    connected components of the graph with more than one module), the shortest circle through
    each module that no circle named before passes through."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def connect(v: str) -> None:  # Tarjan's algorithm; the package is small enough to recurse
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    circles = []
    for group in groups:
        named = set()
        for start in sorted(group):
            if start not in named:
                circles.append(shortest_circle(graph, group, start))
                named.update(circles[-1])
    return circles


def shortest_circle(graph: dict[str, set[str]], group: set[str], start: str) -> list[str]:
    """The shortest circle from `start` back to itself, found breadth first inside `group`."""
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in sorted(graph[path[-1]] & group):
            if w == start:
                return path + [start]
            if w not in seen:
                seen.add(w)
                paths.append(path + [w])
    raise AssertionError(f"{sorted(group)} is not strongly connected")


def test_no_import_circle_in_blu():
    """Guards against an import circle between blu's modules (tokenizer <-> bytelevel and runs -> blu were two)."""
    circles = import_circles(import_graph(SRC, "blu"))
    assert not circles, "import circles in src/blu:\n" + "\n".join(" -> ".join(c) for c in circles)


def write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_import_circles_are_found_in_every_form(tmp_path):
    """Guards against a circle test that cannot fail: circles through relative, absolute, hidden and package imports are named."""
    write_package(tmp_path, {
        "pkg/__init__.py": "from .runs import load\n",
        "pkg/runs.py": "from . import __version__\n",  # reads the package, whose __init__ imports runs
        "pkg/a.py": "def f():\n    from pkg.b import g\n",  # hidden in a function
        "pkg/b.py": "import pkg.a\n",
        "pkg/sub/__init__.py": "from .. import c\n",
        "pkg/c.py": "from .sub.d import x\n",  # runs pkg/sub/__init__.py on the way to pkg.sub.d
        "pkg/sub/d.py": "x = 1\n",
    })
    circles = {tuple(c) for c in import_circles(import_graph(tmp_path, "pkg"))}
    assert circles == {("pkg", "pkg.runs", "pkg"), ("pkg.a", "pkg.b", "pkg.a"), ("pkg.c", "pkg.sub", "pkg.c")}


def test_imports_that_are_no_circle_pass(tmp_path):
    """Guards against false alarms: a package __init__ importing its submodules, which import each other one way only."""
    write_package(tmp_path, {
        "pkg/__init__.py": "from .tokenizers import build\nfrom . import files\n",
        "pkg/files.py": "import os\n",
        "pkg/tokenizers/__init__.py": "from .char import Char\nfrom .base import Base\n",
        "pkg/tokenizers/base.py": "from ..files import write\nfrom ..errors import Error\n",
        "pkg/tokenizers/char.py": "from .base import Base\nimport pkg.errors\n",
        "pkg/errors.py": "class Error(Exception): ...\n",
    })
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.tokenizers.char"] == {"pkg.tokenizers.base", "pkg.errors"}
    assert import_circles(graph) == []


def test_no_file_in_blu_over_300_lines():
    """Guards against a module growing past ~300 lines instead of becoming a folder (DESIGN)."""
    lengths = {path.relative_to(SRC): len(path.read_text(encoding="utf-8").splitlines()) for path in SRC.rglob("*.py")}
    assert lengths, f"no Python files under {SRC}"
    over = {str(path): n for path, n in sorted(lengths.items()) if n > MAX_LINES}
    assert not over, f"files over {MAX_LINES} lines: " + ", ".join(f"{path} ({n})" for path, n in over.items())
