"""``ignitrain.handlers`` hands on every handler class and ``attach_*`` function."""

import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
from ignite.engine import Engine

import ignitrain.handlers as handlers


def _public_handler_names():
    for info in pkgutil.iter_modules(handlers.__path__):
        module = importlib.import_module(f"ignitrain.handlers.{info.name}")
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if inspect.isclass(obj) or name.startswith("attach_"):
                yield info.name, name, obj


def test_every_handler_class_and_attach_function_is_exported_from_the_package():
    found = list(_public_handler_names())
    assert len(found) > 30  # the walk saw the modules (checkpoint, stopping, history...)
    missing = [f"{mod}.{name}" for mod, name, _ in found if name not in handlers.__all__]
    assert missing == []
    for mod, name, obj in found:
        assert getattr(handlers, name) is obj, f"ignitrain.handlers.{name} is not {mod}.{name}"


def test_the_package_exports_only_names_it_has():
    assert sorted(handlers.__all__) == sorted(set(handlers.__all__))
    for name in handlers.__all__:
        assert hasattr(handlers, name), name


def test_no_handler_module_imports_the_flavors():
    # the flavors build on the handlers; an import the other way (even inside a
    # function) would make ``ignitrain.handlers`` a cycle with ``ignitrain.flavors``
    root = Path(handlers.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n == "ignitrain.flavors" or n.startswith("ignitrain.flavors.") for n in names):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []


def test_importing_the_handlers_package_first_has_no_cycle():
    # a fresh interpreter whose first ignitrain import is the handlers package
    code = "import ignitrain.handlers as h; print(len(h.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == len(handlers.__all__)


def test_imported_names_work_on_a_plain_ignite_engine():
    from ignitrain.handlers import History, attach_history, attach_max_steps

    engine = Engine(lambda e, b: float(b))
    history = attach_history(engine, History(), log_every=1)
    attach_max_steps(engine, 3)
    engine.run(range(10), max_epochs=1)
    assert engine.state.iteration == 3
    assert history["train/batch_loss"] == [0.0, 1.0, 2.0]


def test_attach_functions_still_validate_their_arguments():
    from ignitrain.handlers import attach_max_steps

    with pytest.raises((TypeError, ValueError), match="max_steps"):
        attach_max_steps(Engine(lambda e, b: None), 0)
