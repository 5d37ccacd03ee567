"""The import graph, read from the source (ast, nothing imported): no circle among the project's modules, and each
layer imports only what lies below it.

    cli/ (the programs)  ->  training/, service/  ->  imgcls/ (the library)

``imgcls/`` imports no other part of the project and no program machinery (argument parsing, HTTP clients or
servers, torch); ``service/`` (the serving path) imports neither torch nor training; ``training/`` imports no
service. ``bench/`` and ``tests/`` sit on top and may import anything.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("imgcls", "service", "training", "cli", "bench", "tests")
# What each layer must not import: project packages, and third-party or standard modules (top-level names).
FORBIDDEN = {
    "imgcls": {"service", "training", "cli", "bench", "tests", "argparse", "httpx", "requests", "aiohttp", "urllib3",
               "bentoml", "starlette", "fastapi", "uvicorn", "torch", "torchvision"},
    "service": {"training", "cli", "bench", "tests", "torch", "torchvision"},
    "training": {"service", "cli", "bench", "tests"},
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, is_package: bool) -> set[str]:
    """Every module ``module`` imports, anywhere in its file (lazy imports inside functions count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # a submodule, when it is one
    return found


def graph(root: Path) -> dict[str, set[str]]:
    """Project module -> the project modules it imports."""
    sources = {module_name(p, root): p for pkg in PACKAGES if (root / pkg).is_dir()
               for p in (root / pkg).rglob("*.py") if "__pycache__" not in p.parts}
    return {m: {i for i in imports_of(p.read_text(), m, p.name == "__init__.py") if i in sources and i != m}
            for m, p in sources.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One path for each circle found by a depth-first search."""
    found, state = [], {}  # state: 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def layer_violations(root: Path) -> list[str]:
    bad = []
    for layer, forbidden in FORBIDDEN.items():
        for path in (root / layer).rglob("*.py"):
            module = module_name(path, root)
            for name in imports_of(path.read_text(), module, path.name == "__init__.py"):
                if name.split(".")[0] in forbidden:
                    bad.append(f"{module} imports {name}")
    return sorted(set(bad))


def test_the_project_has_no_import_circle() -> None:
    assert cycles(graph(ROOT)) == []


def test_each_layer_imports_only_what_lies_below_it() -> None:
    assert layer_violations(ROOT) == []


def test_the_checks_see_a_lazy_circle_and_a_program_import(tmp_path: Path) -> None:
    """The checks themselves: a circle closed by an import inside a function (as registry -> reference -> onnx_model
    -> registry once was), and the library importing argparse and training."""
    (tmp_path / "imgcls").mkdir()
    (tmp_path / "imgcls" / "__init__.py").write_text("")
    (tmp_path / "imgcls" / "a.py").write_text("from imgcls.b import x\n")
    (tmp_path / "imgcls" / "b.py").write_text("def f():\n    from . import a\n\n"
                                              "import argparse\nimport training.train\n")
    assert cycles(graph(tmp_path)) == [["imgcls.a", "imgcls.b", "imgcls.a"]]
    assert layer_violations(tmp_path) == ["imgcls.b imports argparse", "imgcls.b imports training.train"]
