"""The package graph: imports only go down, and the core knows none of the rooms above it.

Inside `trainer`, the evaluation library (`trainer.evaluation`) sits below the training job
and the evaluation CLI: it imports nothing of the rest of `trainer`.

Reads every module's imports with `ast` (nothing is imported), so the test sees imports
inside functions too. The checks run on the project tree and on planted trees, so a cycle
or a forbidden import cannot pass unnoticed.
"""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORE = "cxr_core"
# Each package and the project packages it may import; everything else in the project is off limits.
ALLOWED = {
    CORE: set(),
    "serving": {CORE},
    "trainer": {CORE, "serving"},
    "beam_pipelines": {CORE, "serving"},
    "synthetic": {CORE, "beam_pipelines"},
    "infra": set(),
    "benchmarks": {CORE, "serving", "trainer", "beam_pipelines", "synthetic"},
}
# Third-party modules the core must not import: it sits below Beam, TensorFlow and every room.
CORE_FORBIDDEN = {"apache_beam", "tensorflow", "keras", "tfx_bsl", "google"}
# The trainer's evaluation library: it may import the core, serving and third-party modules, nothing else of trainer.
EVALUATION = "trainer.evaluation"


def imported_modules(path: pathlib.Path) -> set[str]:
    """Top-level names of every module `path` imports, relative imports resolved to its package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(path.parent.name if node.level else node.module.split(".")[0])
    return names


def imported_names(root: pathlib.Path, path: pathlib.Path) -> set[str]:
    """Full dotted names of everything `path` (a module under `root`) imports, relative imports resolved.

    `import a.b` gives a.b; `from a import b` gives a.b, whether b is a module or a name defined in a.
    """
    package = path.relative_to(root).parts[:-1]  # A module's package, or the package of an __init__.py.
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level > len(package):
                    raise ValueError(f"{path}: relative import beyond the top-level package")
                module = ".".join(package[:len(package) - node.level + 1] + ((node.module,) if node.module else ()))
            else:
                module = node.module
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def subpackage_escapes(root: pathlib.Path, subpackage: str) -> list[str]:
    """Every import, by a module of `subpackage`, of its top-level package outside `subpackage`."""
    top = subpackage.split(".")[0]
    problems = []
    for path in sorted((root / subpackage.replace(".", "/")).rglob("*.py")):
        for name in sorted(imported_names(root, path)):
            inside = name == subpackage or name.startswith(f"{subpackage}.")
            if (name == top or name.startswith(f"{top}.")) and not inside:
                problems.append(f"{path.relative_to(root)} imports {name}")
    return problems


def package_graph(root: pathlib.Path, packages: set[str]) -> dict[str, dict[str, set[str]]]:
    """{package: {imported top-level module: the files that import it}} over every module of `packages`."""
    graph = {}
    for package in sorted(packages):
        for path in sorted((root / package).rglob("*.py")):
            for module in imported_modules(path) - {package}:
                graph.setdefault(package, {}).setdefault(module, set()).add(str(path.relative_to(root)))
    return graph


def find_cycle(graph: dict[str, dict[str, set[str]]]) -> list[str] | None:
    """One package-level cycle as a path [a, b, ..., a], or None."""
    edges = {package: {module for module in imports if module in graph} for package, imports in graph.items()}
    visiting, done = [], set()

    def visit(package: str) -> list[str] | None:
        if package in visiting:
            return visiting[visiting.index(package):] + [package]
        if package in done:
            return None
        visiting.append(package)
        for target in sorted(edges.get(package, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        visiting.pop()
        done.add(package)
        return None

    for package in sorted(edges):
        cycle = visit(package)
        if cycle:
            return cycle
    return None


def layering_problems(graph: dict[str, dict[str, set[str]]], allowed: dict[str, set[str]]) -> list[str]:
    """Every import of a project package that `allowed` does not permit, and every forbidden import of the core."""
    problems = []
    for package, imports in graph.items():
        for module, files in sorted(imports.items()):
            if module in allowed and module not in allowed[package]:
                problems.append(f"{package} imports {module} ({', '.join(sorted(files))})")
            if package == CORE and module in CORE_FORBIDDEN:
                problems.append(f"{CORE} imports {module} ({', '.join(sorted(files))})")
    return problems


def plant(root: pathlib.Path, modules: dict[str, str]) -> pathlib.Path:
    for name, source in modules.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root


def test_every_package_of_the_tree_is_listed():
    assert {path.parent.name for path in ROOT.glob("*/__init__.py")} == set(ALLOWED)


def test_the_project_has_no_package_cycle():
    assert find_cycle(package_graph(ROOT, set(ALLOWED))) is None


def test_imports_only_go_down():
    assert layering_problems(package_graph(ROOT, set(ALLOWED)), ALLOWED) == []


def test_the_evaluation_library_imports_nothing_else_of_the_trainer():
    # The check reads the real subpackage, not an empty or misspelt directory.
    modules = {path.name for path in (ROOT / EVALUATION.replace(".", "/")).glob("*.py")}
    assert {"__init__.py", "metrics.py", "report.py", "predictions.py"} <= modules
    assert subpackage_escapes(ROOT, EVALUATION) == []


def test_an_evaluation_module_importing_the_rest_of_the_trainer_is_refused(tmp_path):
    root = plant(tmp_path, {
        "trainer/__init__.py": "", "trainer/model.py": "", "trainer/config.py": "", "trainer/task.py": "",
        "trainer/evaluation/__init__.py": "from . import metrics\n",
        "trainer/evaluation/intervals.py": "", "trainer/evaluation/plots.py": "",
        # Within the subpackage, absolutely and relatively, and the layers below trainer: allowed.
        "trainer/evaluation/metrics.py": ("import numpy\nfrom cxr_core import contract\n"
                                          "from trainer.evaluation import intervals\nfrom .intervals import wilson\n"
                                          "from ..evaluation import plots\n"),
        # The rest of the trainer in each form an import takes, a function-level one too.
        "trainer/evaluation/report.py": ("from trainer import model\nfrom .. import config\nimport trainer.task\n"
                                         "def write():\n    from trainer.config import TrainConfig\n"),
        "trainer/evaluation/sub/__init__.py": "from ... import task\n",
    })
    assert imported_names(root, root / "trainer/evaluation/metrics.py") == {
        "numpy", "cxr_core.contract", "trainer.evaluation.intervals", "trainer.evaluation.intervals.wilson",
        "trainer.evaluation.plots"}
    assert subpackage_escapes(root, EVALUATION) == [
        "trainer/evaluation/report.py imports trainer.config",
        "trainer/evaluation/report.py imports trainer.config.TrainConfig",
        "trainer/evaluation/report.py imports trainer.model",
        "trainer/evaluation/report.py imports trainer.task",
        "trainer/evaluation/sub/__init__.py imports trainer.task",
    ]


def test_a_planted_cycle_is_found(tmp_path):
    root = plant(tmp_path, {
        "cxr_core/__init__.py": "", "cxr_core/contract.py": "import numpy\n",
        "serving/__init__.py": "", "serving/export.py": "from cxr_core import contract\n",
        # A function-level import, as a lazy one would be written.
        "serving/study.py": "def main():\n    from trainer import model\n",
        "trainer/__init__.py": "", "trainer/model.py": "from serving import export\n",
    })
    graph = package_graph(root, {"cxr_core", "serving", "trainer"})
    assert find_cycle(graph) in (["serving", "trainer", "serving"], ["trainer", "serving", "trainer"])
    assert layering_problems(graph, ALLOWED) == ["serving imports trainer (serving/study.py)"]


def test_the_core_importing_beam_tensorflow_or_a_room_is_refused(tmp_path):
    root = plant(tmp_path, {
        "cxr_core/__init__.py": "", "cxr_core/imaging.py": "import apache_beam as beam\nimport tensorflow\n",
        "cxr_core/contract.py": "from . import imaging\nfrom beam_pipelines import sources\n",
        "beam_pipelines/__init__.py": "", "beam_pipelines/sources.py": "from cxr_core import contract\n",
    })
    graph = package_graph(root, {"cxr_core", "beam_pipelines"})
    assert layering_problems(graph, ALLOWED) == [
        "cxr_core imports apache_beam (cxr_core/imaging.py)",
        "cxr_core imports beam_pipelines (cxr_core/contract.py)",
        "cxr_core imports tensorflow (cxr_core/imaging.py)",
    ]
    assert find_cycle(graph) in (["cxr_core", "beam_pipelines", "cxr_core"],
                                 ["beam_pipelines", "cxr_core", "beam_pipelines"])


@pytest.mark.parametrize("module", ["cxr_core.contract", "cxr_core.imaging", "cxr_core.rejection",
                                    "cxr_core.decision_rule", "cxr_core.augmentation"])
def test_importing_the_core_loads_neither_beam_nor_tensorflow(module):
    probe = (f"import sys; import {module}; "
             "print(sorted(m for m in ('apache_beam', 'tensorflow', 'keras') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert loaded.strip() == "[]"
