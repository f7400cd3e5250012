"""Imports run one way (STYLE.md): config -> core math (models, attacks, objectives, data) -> training (learner,
mixing, loop) and evaluation side by side -> storage (run folder, metrics, reports) -> backends (distributed)
-> CLI. Read from the source with `ast`, lazy imports (inside functions) included.

Rules, each found to hold when this test was written:
- `ray` is imported only under generalist/distributed/;
- nothing in generalist/ imports `jobs`;
- config.py and threat.py import no generalist module but generalist.errors;
- every module has a layer below, and imports only from its own layer or lower ones; so models, attacks,
  losses and data never import learner, mixing, evaluation, training, storage, distributed or the CLI, and
  generalist.distributed is imported only inside generalist/distributed/ and by the CLI modules;
- no import cycle inside the package, lazy imports included;
- storage reads and writes what the loop records without the loop: nothing the run folder imports, however
  indirectly, is the training loop or a learner (the rows and types they share are in generalist.records).
A new module must be given a layer here. Under 1 s.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "generalist"

# The layer of every module (a package's modules share its layer). Same layer or lower may be imported.
LAYERS: dict[str, int] = {
    "generalist.errors": 0,
    "generalist.config": 1, "generalist.threat": 1,
    # core math: what a model, an attack, a loss and a batch need, and the file formats they are kept in
    "generalist.models": 2, "generalist.attacks": 2, "generalist.losses": 2, "generalist.data": 2,
    "generalist.objectives": 2, "generalist.baselines": 2, "generalist.autoattack_eval": 2, "generalist.repro": 2,
    "generalist.performance": 2,  # autocast, memory format, compile of a learner's step
    "generalist.graph_step": 2,  # a learner's step recorded once as a CUDA graph and replayed
    "generalist.adversarial_points": 2,  # a learner's training points: PGD of its attack in eval mode
    "generalist.packed_state": 2,  # a state dict in one buffer: what mixing and the collectives move
    "generalist.bn_stats": 2,  # BatchNorm statistics re-estimated from data (the global learner's)
    "generalist.storage": 2,  # local paths and pyarrow filesystems (data may read remote stores too)
    "generalist.checkpoint": 2,  # the tensors + JSON file format, checksummed and atomic (evaluation reads it)
    "generalist.remote_run": 2,  # local mirrors of remote run folders, for eval and report
    # training (one learner, the mixing rule, the loop, what it records) and evaluation, side by side
    "generalist.learner": 3, "generalist.mixing": 3, "generalist.training": 3, "generalist.records": 3,
    "generalist.evaluation": 3, "generalist.recipes": 3,
    # storage: a run folder, its metric tables, the reports read from it
    "generalist.run_folder": 4, "generalist.metrics": 4, "generalist.report": 4,
    "generalist.distributed": 5,
    "generalist.cli": 6, "generalist.eval_cli": 6,
}
STORAGE = ("generalist.run_folder", "generalist.metrics", "generalist.report", "generalist.checkpoint")
THE_LOOP = ("generalist.training", "generalist.learner")
ONLY_ERRORS = ("generalist.config", "generalist.threat")
CLI = ("generalist.cli", "generalist.eval_cli")


@dataclass(frozen=True)
class Import:
    name: str  # absolute dotted module name, e.g. "ray.train" or "generalist.data"
    line: int
    lazy: bool  # inside a function or class body rather than at module level


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, is_package: bool = False) -> list[Import]:
    """Every module `module`'s source imports: import/from statements (relative ones resolved) and
    importlib.import_module("...") / __import__("...") calls with a literal name."""
    tree = ast.parse(source)
    found: list[Import] = []
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend(Import(alias.name, child.lineno, lazy) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                if base in ("generalist", "generalist.distributed", "generalist.models") or child.level:
                    # `from generalist import checkpoint` imports the module generalist.checkpoint
                    found.extend(Import(f"{base}.{alias.name}", child.lineno, lazy) for alias in child.names)
                found.append(Import(base, child.lineno, lazy))
            elif isinstance(child, ast.Call):
                func = child.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called in ("import_module", "__import__") and child.args and \
                        isinstance(child.args[0], ast.Constant) and isinstance(child.args[0].value, str):
                    found.append(Import(child.args[0].value, child.lineno, True))
            visit(child, inner)

    visit(tree, False)
    return found


def layer_of(name: str) -> int | None:
    """The layer of a generalist module (its longest listed prefix), None if it has none."""
    parts = name.split(".")
    for end in range(len(parts), 1, -1):
        if ".".join(parts[:end]) in LAYERS:
            return LAYERS[".".join(parts[:end])]
    return None


def is_under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(module: str, imports: list[Import]) -> list[str]:
    """The import-direction rules `module` breaks, one message each."""
    problems = []
    own = layer_of(module)
    for imp in imports:
        where = f"{module}:{imp.line} imports {imp.name}" + (" (lazily)" if imp.lazy else "")
        if is_under(imp.name, "ray") and not is_under(module, "generalist.distributed"):
            problems.append(f"{where}: only generalist/distributed/ may import ray")
        if is_under(imp.name, "jobs"):
            problems.append(f"{where}: generalist/ never imports jobs/")
        if not is_under(imp.name, "generalist") or imp.name == "generalist":
            continue
        if module in ONLY_ERRORS and not is_under(imp.name, "generalist.errors"):
            problems.append(f"{where}: {module} may import only generalist.errors")
        if is_under(imp.name, "generalist.distributed") and not (
                is_under(module, "generalist.distributed") or module in CLI):
            problems.append(f"{where}: only generalist/distributed/ and the CLI may import generalist.distributed")
        target = layer_of(imp.name)
        if own is not None and target is not None and target > own:
            problems.append(f"{where}: layer {own} must not import layer {target}")
    return problems


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of a module -> imported-modules graph, each as a closed path [a, b, ..., a], one per cycle."""
    cycles, done = [], set()

    def walk(module: str, path: list[str]) -> None:
        for target in sorted(graph.get(module, ())):
            if target in path:
                cycle = path[path.index(target):] + [target]
                if not any(set(cycle) == set(c) for c in cycles):
                    cycles.append(cycle)
            elif target not in done:
                walk(target, path + [target])
        done.add(module)

    for module in sorted(graph):
        walk(module, [module])
    return cycles


def package_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (lazy imports too: a cycle is a cycle wherever it hides)."""
    modules = dict(package_modules())

    def module_of(imported: str) -> str | None:
        while imported and imported not in modules:
            imported = imported.rpartition(".")[0]
        return imported or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {module_of(imp.name) for imp in imports_of(path.read_text(), name, path.name == "__init__.py")
                   if is_under(imp.name, "generalist")}
        # A package's own __init__ and its parents are not edges: importing a.b runs a/__init__ first.
        graph[name] = {t for t in targets if t and t != name and t != "generalist" and not is_under(name, t)}
    return graph


def package_modules() -> list[tuple[str, Path]]:
    return [(module_name(path), path) for path in sorted(PACKAGE.rglob("*.py"))]


def test_every_module_of_the_package_has_a_layer():
    missing = [str(path.relative_to(PACKAGE.parent)) for name, path in package_modules()
               if name != "generalist" and layer_of(name) is None]
    assert not missing, f"give these modules a layer in tests/unit/test_imports.py LAYERS: {missing}"


def test_the_package_imports_run_one_way():
    modules = package_modules()
    assert len(modules) >= 20, f"found only {len(modules)} modules under {PACKAGE}"
    problems = [p for name, path in modules
                for p in violations(name, imports_of(path.read_text(), name, path.name == "__init__.py"))]
    assert not problems, "\n".join(problems)


def test_no_import_cycle_inside_the_package():
    cycles = import_cycles(package_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module `start` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def loop_reached_by_storage(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Storage module -> the loop modules it imports, directly or not (empty lists when the rule holds)."""
    return {module: sorted(reachable(graph, module) & set(THE_LOOP)) for module in STORAGE}


def test_storage_does_not_import_the_training_loop():
    problems = loop_reached_by_storage(package_graph())
    assert not any(problems.values()), f"storage reaches the loop (move what it needs to generalist.records): {problems}"


def test_the_storage_rule_catches_an_indirect_import_of_the_loop():
    # The shape before generalist.records: the run folder took its row builders from the loop's module.
    graph = {"generalist.run_folder": {"generalist.metrics", "generalist.training"},
             "generalist.training": {"generalist.learner"}, "generalist.metrics": {"generalist.storage"}}
    assert loop_reached_by_storage(graph)["generalist.run_folder"] == ["generalist.learner", "generalist.training"]


def test_reachable_follows_imports_through_other_modules():
    assert reachable({"a": {"b"}, "b": {"c"}, "c": set()}, "a") == {"b", "c"}


def test_the_cycle_finder_finds_a_cycle_and_passes_a_chain():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_ray_is_imported_where_the_rule_allows_and_nowhere_else():
    """The rule is not vacuous: Ray really is imported under distributed/, and only there."""
    importers = {name for name, path in package_modules()
                 for imp in imports_of(path.read_text(), name, path.name == "__init__.py") if is_under(imp.name, "ray")}
    assert importers, "no module imports ray: the ray rule checks nothing"
    assert all(is_under(name, "generalist.distributed") for name in importers), importers


@pytest.mark.parametrize("module, source, rule", [
    ("generalist.learner", "import ray\n", "only generalist/distributed/ may import ray"),
    ("generalist.learner", "def f():\n    from ray import train\n", "only generalist/distributed/ may import ray"),
    ("generalist.learner", "import importlib\nimportlib.import_module('ray.util')\n", "may import ray"),
    ("generalist.training", "from generalist.distributed import train\n", "may import generalist.distributed"),
    ("generalist.evaluation.run", "def f():\n    from generalist.distributed.local import train_local\n",
     "may import generalist.distributed"),
    ("generalist.cli", "from jobs.submit import main\n", "never imports jobs"),
    ("generalist.config", "from generalist.data import dataset_info\n", "may import only generalist.errors"),
    ("generalist.threat", "from generalist import losses\n", "may import only generalist.errors"),
    ("generalist.data", "from generalist.learner import Learner\n", "layer 2 must not import layer 3"),
    ("generalist.models.resnet", "from ..run_folder import RunFolder\n", "layer 2 must not import layer 4"),
    ("generalist.learner", "from generalist import run_folder\n", "layer 3 must not import layer 4"),
    ("generalist.attacks", "from . import mixing\n", "layer 2 must not import layer 3"),
    ("generalist.losses", "from generalist import cli\n", "layer 2 must not import layer 6"),
    ("generalist.mixing", "def f():\n    import generalist.distributed.coordinator\n",
     "layer 3 must not import layer 5"),
])
def test_the_checker_catches_a_wrong_import(module, source, rule):
    problems = violations(module, imports_of(source, module))
    assert any(rule in p for p in problems), problems


@pytest.mark.parametrize("module, source", [
    ("generalist.distributed.local", "import ray\nfrom generalist.learner import Learner\n"),
    ("generalist.cli", "def f():\n    from generalist.distributed import train\n"),
    ("generalist.learner", "from generalist.data import TrainStream\nfrom . import mixing\n"),
    ("generalist.config", "from generalist.errors import ConfigError\nimport json\n"),
    ("generalist.models.resnet", "from generalist.models.normalize import Normalize\n"),
])
def test_the_checker_accepts_an_allowed_import(module, source):
    assert violations(module, imports_of(source, module)) == []


def readme_package_map() -> str:
    """The package map of the README's Design section: the code block that starts with `generalist/`."""
    readme = (PACKAGE.parent / "README.md").read_text()
    start = readme.index("```\ngeneralist/")
    return readme[start: readme.index("```\n", start + 4)]


def test_the_readme_package_map_lists_every_module_and_only_real_ones():
    block = readme_package_map()
    listed = set(re.findall(r"[\w]+\.py", block))
    files = {path.name for path in PACKAGE.glob("*.py")} | {
        path.name for sub in ("distributed", "evaluation") for path in (PACKAGE / sub).glob("*.py")}
    files -= {"__init__.py"}
    assert not files - listed, f"modules missing from the README's package map: {sorted(files - listed)}"
    assert not listed - files, f"the README's package map names modules that do not exist: {sorted(listed - files)}"
    for folder in ("models/", "distributed/", "evaluation/"):
        assert folder in block and (PACKAGE / folder).is_dir()
