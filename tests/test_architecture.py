"""The package's layout rules (docs/architecture.md), read from the code's own imports.

Dependencies run one way: the stages' maths import no models, tools or pipeline; the model loaders import no
stages; the test-model factory is reached from production code in one place only (the model-name resolver) and
imports no production module but the preview's colour map; nothing imports a private name of another module; and no
two modules import each other, directly or around a circle.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "stylegallery"
WIDGETS = ROOT / "widgets"


def _module_name(path: Path) -> str:
    if not path.is_relative_to(PACKAGE) and not path.is_relative_to(WIDGETS):  # a test or benchmark script
        return path.stem
    if path.is_relative_to(WIDGETS):
        parts = ("stylegallery", "widgets") + path.relative_to(WIDGETS).with_suffix("").parts
    else:
        parts = ("stylegallery",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import in ``path``, relative ones resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            names = [alias.name for alias in node.names]
            found.append((module, names))
            # ``from . import x`` imports the submodule x
            found += [(f"{module}.{n}", []) for n in names if (PACKAGE.parent / f"{module}.{n}".replace(".", "/")).with_suffix(".py").exists()]
    return found


def _graph() -> dict[str, set[str]]:
    files = list(PACKAGE.rglob("*.py")) + list(WIDGETS.rglob("*.py"))
    modules = {_module_name(p): p for p in files}
    graph = {}
    for module, path in modules.items():
        targets = set()
        for imported, _ in _imports(path):
            # a module, or its closest enclosing package of ours
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != module and not module.startswith(imported + "."):
                targets.add(imported)
        graph[module] = targets
    return graph


def test_no_import_cycle():
    graph = _graph()
    visiting, done, cycles = [], set(), []

    def visit(node):
        if node in visiting:
            cycles.append(visiting[visiting.index(node):] + [node])
            return
        if node in done:
            return
        visiting.append(node)
        for target in sorted(graph.get(node, ())):
            visit(target)
        visiting.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
    assert not cycles, cycles


@pytest.mark.parametrize("layer, forbidden", [
    ("stylegallery.stages", ("stylegallery.models", "stylegallery.tools", "stylegallery.pipeline", "stylegallery.session",
                             "stylegallery.analysis", "stylegallery.testing", "stylegallery.widgets")),
    ("stylegallery.models", ("stylegallery.stages", "stylegallery.tools", "stylegallery.pipeline", "stylegallery.session",
                             "stylegallery.widgets")),
    ("stylegallery.analysis", ("stylegallery.tools", "stylegallery.pipeline", "stylegallery.session", "stylegallery.testing",
                               "stylegallery.widgets", "stylegallery.models")),
    ("stylegallery.testing", ("stylegallery.models", "stylegallery.stages", "stylegallery.pipeline", "stylegallery.session",
                              "stylegallery.tools", "stylegallery.widgets")),
])
def test_dependencies_run_one_way(layer, forbidden):
    graph = _graph()
    wrong = {m: sorted(t for t in targets if t.startswith(forbidden)) for m, targets in graph.items() if m.startswith(layer)}
    assert not {m: t for m, t in wrong.items() if t}, wrong


def test_the_test_models_enter_production_code_in_one_place():
    graph = _graph()
    users = sorted(m for m, targets in graph.items()
                   if any(t.startswith("stylegallery.testing") for t in targets)
                   and not m.startswith(("stylegallery.testing", "stylegallery.tools.cli")))
    assert users == ["stylegallery.models.sources"], users


def test_no_private_name_is_imported_from_another_module():
    files = list(PACKAGE.rglob("*.py")) + list(WIDGETS.rglob("*.py")) + list((ROOT / "benchmarks").glob("*.py")) \
        + list((ROOT / "tests").glob("*.py"))
    private = [(str(p.relative_to(ROOT)), module, name) for p in files for module, names in _imports(p)
               for name in names if name.startswith("_") and not name.startswith("__") and (module or "").startswith("stylegallery")]
    assert not private, private


def test_the_core_never_imports_jupyter():
    jupyter = ("IPython", "ipywidgets", "anywidget", "ipykernel", "jupyter", "voila")
    found = [(str(p.relative_to(ROOT)), m) for p in PACKAGE.rglob("*.py") for m, _ in _imports(p)
             if m and m.split(".")[0] in jupyter]
    # the one exception: a notebook progress bar, imported only once tqdm has found a Jupyter kernel
    assert found == [("stylegallery/progress.py", "IPython.display")], found
