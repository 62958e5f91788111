"""The layout shows the architecture (issue 30): the README's tree is the package tree, each package
says what it may import and imports only that, and the import graph has no cycle and no private name
imported from another module.

The graph is read from the source (ast), every import counted, also those inside functions: a lazy
import still couples two modules. Imports under `if TYPE_CHECKING:` are left out (types only).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "boxloop"
MAX_ROOT_MODULES = 8
# The root modules are the base every stage stands on: they may import each other, formats/ and store/.
ROOT_MAY_IMPORT = {"formats/", "store/"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _imports(path: Path, name: str, modules: dict[str, Path]) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) of every boxloop import in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            node.body = []
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name in modules]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(parts + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for a in node.names:
                full = f"{source}.{a.name}"
                if full in modules:
                    found.append((full, None))
                elif source in modules:
                    found.append((source, a.name))
    return found


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    """Edges between modules (a package's __init__ importing its own modules left out) and the
    private names imported across modules."""
    modules = _modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for m, path in modules.items():
        for target, name in _imports(path, m, modules):
            if target == m or (path.name == "__init__.py" and target.startswith(m + ".")):
                continue
            edges[m].add(target)
            if name and name.startswith("_") and not name.startswith("__"):
                private.append(f"{m} imports {target}.{name}")
    return edges, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def _package(module: str) -> str:
    """'train/' for boxloop.train.fit, '' for a root module."""
    parts = module.split(".")
    return f"{parts[1]}/" if len(parts) > 2 or (len(parts) == 2 and (SRC / parts[1]).is_dir()) else ""


def _packages() -> list[str]:
    return sorted(p.name for p in SRC.iterdir() if (p / "__init__.py").is_file())


def _may_import(package: str) -> tuple[set[str], set[str]] | None:
    """What the package's docstring allows: (whole packages 'x/', single modules 'x.y'); None: anything."""
    doc = ast.get_docstring(ast.parse((SRC / package / "__init__.py").read_text(encoding="utf-8"))) or ""
    assert "Owns:" in doc and "May import:" in doc, f"{package}/__init__.py: say what it owns ('Owns:') and " \
                                                   f"what it may import ('May import:')"
    allowed = doc.split("May import:", 1)[1]
    if "every other package" in allowed:
        return None
    names = "|".join(_packages())
    whole = {f"{m}/" for m in re.findall(rf"\b({names})/", allowed)}
    single = set(re.findall(rf"\b((?:{names})\.\w+)", allowed))
    if "root modules" in allowed:
        whole.add("")
    return whole, single


def _readme_tree() -> tuple[set[str], dict[str, set[str]]]:
    """The README layout block: root modules, and each package's modules."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    root: set[str] = set()
    packages: dict[str, set[str]] = {}
    current = None
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        words = line.split()
        if not words or indent == 0:
            current = None if words and words[0] != "src/boxloop/" else current
            continue
        if indent == 2:
            current = words[0] if words[0].endswith("/") else None
            if current:
                packages[current] = set()
            else:
                root.add(words[0])
        elif indent == 4 and current and words[0].endswith(".py"):
            names = [w for w in words if w.endswith(".py")]
            listing = len(names) == len(words)
            packages[current].update(names if listing else names[:1])
    return root, packages


def test_the_root_holds_at_most_eight_modules() -> None:
    root = sorted(p.name for p in SRC.glob("*.py") if p.name != "__init__.py")
    assert len(root) <= MAX_ROOT_MODULES, f"{len(root)} modules in src/boxloop/ (move some into a stage): {root}"


def test_the_readme_tree_is_the_package_tree() -> None:
    root, packages = _readme_tree()
    assert root == {p.name for p in SRC.glob("*.py") if p.name != "__init__.py"}
    assert set(packages) == {f"{p}/" for p in _packages()}
    for package, listed in packages.items():
        actual = {p.name for p in (SRC / package).glob("*.py") if p.name != "__init__.py"}
        assert listed == actual, f"README's {package}: lists {sorted(listed)}, the package holds {sorted(actual)}"


def test_no_import_cycle() -> None:
    edges, _ = _graph()
    assert _cycles(edges) == []


def test_no_private_name_imported_from_another_module() -> None:
    _, private = _graph()
    assert private == [], "make the name public where it is shared, or move it to its one user:\n" + "\n".join(private)


def test_every_package_imports_only_what_its_docstring_allows() -> None:
    edges, _ = _graph()
    wrong = []
    for source, targets in sorted(edges.items()):
        package = _package(source)
        for target in sorted(targets):
            into = _package(target)
            if into == package:
                continue
            if package == "":
                if into not in ROOT_MAY_IMPORT:
                    wrong.append(f"{source} -> {target} (root modules may import {sorted(ROOT_MAY_IMPORT)})")
                continue
            allowed = _may_import(package.rstrip("/"))
            if allowed is None:
                continue
            whole, single = allowed
            short = target.split(".", 1)[1]
            if into not in whole and not any(short == s or short.startswith(s + ".") for s in single):
                wrong.append(f"{source} -> {target} (not in {package}__init__.py's 'May import:')")
    assert not wrong, "\n".join(wrong)


def test_the_checks_see_what_they_forbid() -> None:
    """The cycle finder finds a two- and a three-module cycle and passes a chain."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
