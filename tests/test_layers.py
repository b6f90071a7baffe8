"""The package's layers: no module imports one of a higher layer, and no imports go in a circle.

Every import counts, at module level or inside a function, so a lazy import cannot hide a
dependency that points the wrong way. A new module must be placed in LAYERS to pass.
"""

import ast
import os

from conftest import REPO

# Lowest first; a module may import modules of its own layer or of lower ones
LAYERS = {
    "pycls.core.errors": 0,
    "pycls.core.io": 0,
    "pycls.core.config": 0,
    "pycls.core.timer": 0,
    "pycls.core.device": 1,
    "pycls.core.distributed": 1,
    "pycls.core.logging": 1,
    "pycls.core.amp": 1,
    "pycls.core.outdir": 1,
    "pycls.models.blocks": 2,
    "pycls.models.anynet": 2,
    "pycls.models.effnet": 2,
    "pycls.models.regnet": 2,
    "pycls.models.resnet": 2,
    "pycls.datasets": 2,
    "pycls.core.net": 3,
    "pycls.core.builders": 3,
    "pycls.core.optimizer": 3,
    "pycls.core.meters": 3,
    "pycls.core.checkpoint": 3,
    "pycls.core.benchmark": 3,
    "pycls.core.trainer": 3,
    "pycls.models.model_zoo": 3,
    "pycls.launch": 4,
}
NAMES = ["ground", "runtime", "models and datasets", "training", "process shell"]

# Models are built from explicit params and the config alone: no devices, files or processes
MODELS_MAY_IMPORT = {"pycls.core.config", "pycls.core.errors"}


def _modules():
    """Returns {module name: path} of every module of the pycls package."""
    found = {}
    for folder, _, files in os.walk(os.path.join(REPO, "pycls")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, REPO)[: -len(".py")].split(os.sep)
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path, modules):
    """Returns the pycls modules that a file imports anywhere in it."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(node.module + "." + a.name for a in node.names)
    return {n for n in names if n in modules and n.startswith("pycls.")}


def _layer(module):
    """Returns a module's layer: its own entry, else its package's."""
    while module not in LAYERS and "." in module:
        module = module.rsplit(".", 1)[0]
    return LAYERS.get(module)


def _graph():
    """Returns {module: modules it imports} over the package (packages' faces left out)."""
    modules = _modules()
    graph = {m: _imports(p, modules) for m, p in modules.items()}
    faces = {m for m, p in modules.items() if p.endswith("__init__.py")}
    return {m: {d for d in deps if d not in faces} for m, deps in graph.items() if m not in faces}


def test_every_module_has_a_layer():
    missing = sorted(m for m in _graph() if _layer(m) is None)
    assert not missing, "place these modules in LAYERS: {}".format(missing)


def test_no_module_imports_a_higher_layer():
    upward = []
    for module, deps in sorted(_graph().items()):
        for dep in sorted(deps):
            if None not in (_layer(dep), _layer(module)) and _layer(dep) > _layer(module):
                what = "{} ({}) imports {} ({})"
                upward.append(what.format(module, NAMES[_layer(module)], dep, NAMES[_layer(dep)]))
    assert not upward, "\n".join(upward)


def test_models_touch_only_the_config():
    graph = _graph()
    for module, deps in graph.items():
        if _layer(module) == 2 and module.startswith("pycls.models."):
            assert deps <= MODELS_MAY_IMPORT | {m for m in graph if m.startswith("pycls.models.")}


def test_no_import_circle():
    graph, state, circles = _graph(), {}, []

    def visit(module, path):
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == "open":
                circles.append(" -> ".join(path[path.index(dep) :] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, "\n".join(circles)


def test_the_check_sees_lazy_imports(tmp_path):
    # An import inside a function counts as much as one at the top of the file
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from pycls.core import trainer\n    import pycls.core.io\n")
    modules = {"pycls.core.trainer": "", "pycls.core.io": "", "pycls.core": ""}
    assert _imports(str(path), modules) == {"pycls.core.trainer", "pycls.core.io", "pycls.core"}
