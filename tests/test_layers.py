"""The package's layers: no module imports a module of a layer above its own.

Every module under ``src/mqtt_anomaly`` is parsed with :mod:`ast` (nothing is imported) and
each of its imports of the package is checked against ``LAYERS``: module-level imports and
imports inside functions alike (those are how cycles get hidden), and
``importlib.import_module("mqtt_anomaly...")`` with a literal name. Imports under
``if TYPE_CHECKING:`` are exempt: they never run.

``from pkg import name`` targets the module ``pkg.name`` when there is one, else ``pkg``.
Importing ``pkg.mod`` also runs ``pkg/__init__.py``: what that imports at module level counts
as imported by the importer too. The root package is the public facade (top layer, its names
load on first use); what it binds eagerly (``__version__``) may be imported from anywhere.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "mqtt_anomaly"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# Lowest first. A module belongs to the entry naming it or its longest enclosing package
# (names relative to the package; "" is the root package itself).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        # web.settings is the [http] section of the configuration.
        (
            "errors",
            "_lifecycle",
            "config",
            "web.settings",
            "messages",
            "topics",
            "console",
            "statefile",
            "pki",
            "retry",
            "mapping",
            "inherit",
            "routeconf",
            "maintenance",
            "gates",
            "sparkplug",
            "_proto",
            "liveconf",
            "clusterconf",
        ),
    ),
    ("detection", ("detectors", "mvdetectors", "alerting", "floods")),
    ("pipeline", ("pipeline", "view", "assets", "drift", "swap", "shadow")),
    (
        "io",
        (
            "transport",
            "store",
            "sinks",
            "writebehind",
            "routing",
            "journal",
            "outbox",
            "models.format",
            "models.registry",
        ),
    ),
    # The web views get the running service handed in (typed under TYPE_CHECKING only); the
    # service mounts them.
    ("web", ("web",)),
    ("service", ("delivery", "reloading", "service", "cluster")),
    # What every command takes: the shared options and settings_from_cli.
    ("command plumbing", ("cli.options", "cli.settings")),
    ("commands", ("replay", "evaluate", "simulate", "bench", "certs", "demo", "models")),
    ("cli", ("cli", "__main__", "")),
]


@dataclass(frozen=True)
class Import:
    importer: str
    target: str
    line: int
    eager: bool  # runs when the importer is imported (not inside a function)


def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def all_modules(root: Path = SRC) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (not its ``else``)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            for stmt in node.body:
                inside.update(id(n) for n in ast.walk(stmt))
    return inside


def _resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([module] if module else [])])


def imports_of(name: str, source: str, is_package: bool, known: set[str]) -> list[Import]:
    """The package imports ``name`` makes at run time (TYPE_CHECKING-only ones left out)."""
    tree = ast.parse(source)
    skip = _type_checking_nodes(tree)
    deferred = {
        id(n)
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for n in ast.walk(fn)
    }
    found: list[Import] = []

    def add(target: str, line: int) -> None:
        if target == PACKAGE or target.startswith((PACKAGE + ".", PACKAGE + ":")):
            found.append(Import(name, target, line, id(node) not in deferred))

    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(name, is_package, node.level, node.module)
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                if sub in known:
                    add(sub, node.lineno)
                elif mod == PACKAGE:
                    add(f"{PACKAGE}:{alias.name}", node.lineno)  # a name of the root package
                else:
                    add(mod, node.lineno)
        elif (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) in ("importlib.import_module", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            add(node.args[0].value, node.lineno)
    return found


def eager_root_names(root: Path = SRC) -> set[str]:
    """Names the root package binds when imported (assignments at module level)."""
    tree = ast.parse((root / "__init__.py").read_text())
    names: set[str] = set()
    for stmt in tree.body:
        targets = (
            stmt.targets
            if isinstance(stmt, ast.Assign)
            else [stmt.target]
            if isinstance(stmt, ast.AnnAssign) and stmt.value is not None
            else []
        )
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def layer_of(module: str, eager: set[str]) -> int:
    """Index in LAYERS of a module (``mqtt_anomaly:NAME`` is a name of the root package)."""
    if ":" in module:
        name = module.split(":", 1)[1]
        return 0 if name in eager else layer_of(PACKAGE, eager)
    rel = module.removeprefix(PACKAGE).removeprefix(".")
    best: tuple[int, int] | None = None  # (length of the matching entry, layer)
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            matches = rel == entry if entry == "" else rel == entry or rel.startswith(entry + ".")
            if matches and (best is None or len(entry) > best[0]):
                best = (len(entry), index)
    if best is None:
        raise LookupError(f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}")
    return best[1]


def violations(modules: dict[str, str], packages: set[str], eager: set[str]) -> list[str]:
    """One line per import of a higher layer, for modules given as {name: source}."""
    known = set(modules)
    found = {
        name: imports_of(name, source, name in packages, known)
        for name, source in sorted(modules.items())
    }
    lines = []
    for name, imports in found.items():
        own = layer_of(name, eager)
        for imp in imports:
            target_layer = layer_of(imp.target, eager)
            if target_layer > own:
                lines.append(
                    f"{name}:{imp.line} ({LAYERS[own][0]}) imports {imp.target} "
                    f"({LAYERS[target_layer][0]}, a layer above)"
                )
            # the packages the target sits in run first, with their module-level imports
            parts = imp.target.split(":")[0].split(".")
            for depth in range(2, len(parts)):
                parent = ".".join(parts[:depth])
                for run in (i for i in found.get(parent, ()) if i.eager):
                    run_layer = layer_of(run.target, eager)
                    if run_layer > own:
                        lines.append(
                            f"{name}:{imp.line} ({LAYERS[own][0]}) imports {imp.target}, "
                            f"so {parent} and its import of {run.target} "
                            f"({LAYERS[run_layer][0]}, a layer above)"
                        )
    return lines


def _package_sources() -> tuple[dict[str, str], set[str]]:
    found = all_modules()
    sources = {name: path.read_text() for name, path in found.items()}
    packages = {name for name, path in found.items() if path.name == "__init__.py"}
    return sources, packages


def test_every_module_has_a_layer() -> None:
    eager = eager_root_names()
    undeclared = []
    modules = all_modules()
    assert len(modules) > 50, f"only {len(modules)} modules found under {SRC}"
    for name in modules:
        try:
            layer_of(name, eager)
        except LookupError as exc:
            undeclared.append(str(exc))
    assert not undeclared, "\n".join(undeclared)


def test_no_module_imports_a_layer_above_it() -> None:
    sources, packages = _package_sources()
    assert len(sources) > 50 and packages, f"only {len(sources)} modules found under {SRC}"
    found = violations(sources, packages, eager_root_names())
    assert not found, "imports against the layer order:\n" + "\n".join(found)


def test_the_check_sees_every_kind_of_import() -> None:
    """The checker itself: what must be flagged is, what is exempt is not."""
    eager = {"__version__"}
    modules = {
        f"{PACKAGE}.errors": "from .service import run_service\n",
        f"{PACKAGE}.messages": "def f():\n    from . import pipeline\n",
        f"{PACKAGE}.topics": "import mqtt_anomaly.web.app\n",
        f"{PACKAGE}.console": (
            "import importlib\n\ndef g():\n    return importlib.import_module('mqtt_anomaly.cli')\n"
        ),
        f"{PACKAGE}.statefile": "from . import __version__\nfrom . import Detector\n",
        f"{PACKAGE}.detectors": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from ..service import Service\nelse:\n    from ..pipeline import Pipeline\n"
        ),
        f"{PACKAGE}.detectors.zscore": "from .base import Detector\nfrom ..config import X\n",
        f"{PACKAGE}.detectors.base": "",
        f"{PACKAGE}.pipeline": "",
        f"{PACKAGE}.service": "",
        f"{PACKAGE}.web.app": "",
        f"{PACKAGE}.cli": "",
    }
    found = violations(modules, {f"{PACKAGE}.detectors"}, eager)
    assert [line.split(" imports ")[1].split(" (")[0] for line in found] == [
        f"{PACKAGE}.cli",  # console: importlib.import_module
        f"{PACKAGE}.pipeline",  # detectors: the else of TYPE_CHECKING runs; its if does not
        # detectors.zscore: importing .base runs detectors/__init__, which imports pipeline
        f"{PACKAGE}.detectors.base, so {PACKAGE}.detectors and its import of {PACKAGE}.pipeline",
        f"{PACKAGE}.service",  # errors: module level
        f"{PACKAGE}.pipeline",  # messages: inside a function, `from . import submodule`
        f"{PACKAGE}:Detector",  # statefile: a facade name of the root; __version__ is fine
        f"{PACKAGE}.web.app",  # topics: plain `import`
    ]
    assert found[0].startswith(f"{PACKAGE}.console:4 (foundation) imports {PACKAGE}.cli (cli")


def test_the_check_follows_the_package_an_import_runs() -> None:
    """``from .web.settings import X`` runs ``web/__init__.py``: its module-level imports count."""
    modules = {
        f"{PACKAGE}.config": "from .web.settings import HttpSettings\n",
        f"{PACKAGE}.web": "from .settings import HttpSettings\n\ndef f():\n    from . import app\n",
        f"{PACKAGE}.web.settings": "",
        f"{PACKAGE}.web.app": "",
    }
    packages = {f"{PACKAGE}.web"}
    assert violations(modules, packages, set()) == []  # the function-level import does not run
    modules[f"{PACKAGE}.web"] = "from .settings import HttpSettings\nfrom . import app\n"
    assert violations(modules, packages, set()) == [
        f"{PACKAGE}.config:1 (foundation) imports {PACKAGE}.web.settings, so {PACKAGE}.web "
        f"and its import of {PACKAGE}.web.app (web, a layer above)"
    ]


def test_an_undeclared_module_is_reported() -> None:
    with pytest.raises(LookupError, match=r"mqtt_anomaly\.newthing is in no layer"):
        layer_of(f"{PACKAGE}.newthing", set())
    # the root package's layer does not swallow every module by prefix
    assert layer_of(PACKAGE, set()) == len(LAYERS) - 1


@pytest.mark.parametrize(
    "first",
    [
        "mqtt_anomaly.replay.command",
        "mqtt_anomaly.simulate.command",
        "mqtt_anomaly.bench.command",
        "mqtt_anomaly.certs",
        "mqtt_anomaly.evaluate.cli",
        "mqtt_anomaly.models.cli",
        "mqtt_anomaly.cli.options",
        "mqtt_anomaly.cli.settings",
    ],
)
def test_a_command_module_imports_before_the_app(first: str) -> None:
    """Whatever is imported first, the app that mounts the commands still builds."""
    code = (
        f"import {first}\n"
        "from mqtt_anomaly.cli import app\n"
        "import typer\n"
        "print(sorted(typer.main.get_command(app).commands))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [
        "['alerts',",
        "'assets',",
        "'bench',",
        "'certs',",
        "'cluster',",
        "'config',",
        "'demo',",
        "'detect',",
        "'evaluate',",
        "'maintenance',",
        "'models',",
        "'replay',",
        "'shadow',",
        "'simulate']",
    ]


def _command_paths() -> list[list[str]]:
    import typer

    from mqtt_anomaly.cli import app

    paths: list[list[str]] = []

    def walk(cmd: object, path: list[str]) -> None:
        paths.append(path)
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


def test_every_command_of_the_assembled_app_has_help() -> None:
    from typer.testing import CliRunner

    from mqtt_anomaly.cli import app

    paths = _command_paths()
    # the root, 15 commands and groups, config show, evaluate's four, maintenance's three,
    # assets' two, models' six, shadow report, cluster's two
    assert len(paths) == 34
    runner = CliRunner()
    for path in paths:
        res = runner.invoke(app, [*path, "--help"], prog_name="mqtt-anomaly")
        assert res.exit_code == 0, (path, res.output)
        assert f"Usage: {' '.join(['mqtt-anomaly', *path])} [OPTIONS]" in res.output, path
