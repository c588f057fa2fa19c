"""The package's module-level imports form no cycle (issue 11).

A cycle works only while every module in it happens to define what the others need
before importing them (``config`` and ``registry`` once imported each other only for
``ConfigError``); the next import added to one of them breaks it. Imports inside
functions (optional dependencies) are not module-level and are not counted.
"""

import ast
from pathlib import Path

import ignitrain

ROOT = Path(ignitrain.__file__).parent


def _module_names():
    names = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names[name] = path
    return names


def _imports(name, path, known):
    """Modules of the package that importing ``name`` imports at module level."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # "from pkg import sub" imports pkg.sub when it is a module, else only pkg
            subs = [f"{base}.{alias.name}" for alias in node.names]
            targets.update(s for s in subs if s in known)
            if not any(s in known for s in subs):
                targets.add(base)
    found = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
        # importing a.b.c first runs a and a.b (unless they contain this module)
        parts = target.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if parent in known and parent != name and not name.startswith(parent + "."):
                found.add(parent)
    return found


def _cycle(graph):
    """One cycle of ``graph`` as a list of modules, or ``None``."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_at_module_level():
    known = _module_names()
    graph = {name: _imports(name, path, known) for name, path in known.items()}
    assert len(graph) > 50
    assert graph["ignitrain.config"] >= {"ignitrain.config_checks", "ignitrain.errors"}
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
