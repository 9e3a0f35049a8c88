"""The app's three layers import one way only (http -> core -> engine), modules stay small,
and process-wide tuning happens only in `python -m app`."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
APP = ROOT / "app"
MAX_LINES = 300
WEB = ("fastapi", "starlette")
# Lower layers must not import from the ones above them.
FORBIDDEN = {
    "core": (*WEB, "app.http"),
    "engine": (*WEB, "app.core", "app.http"),
}
# Interpreter-wide settings: changed by `python -m app` only, through app.engine.runtime.
TUNING_CALLS = {
    "sys.setswitchinterval",
    "gc.set_threshold",
    "gc.freeze",
    "gc.disable",
    "configure_process",
    "freeze_heap",
}
TUNING_MODULES = {"app/__main__.py", "app/engine/runtime.py"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module an import statement names, anywhere in the file (functions included),
    relative imports resolved against `module`."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _violations(names: set[str], forbidden: tuple[str, ...]) -> set[str]:
    return {n for n in names if any(n == f or n.startswith(f"{f}.") for f in forbidden)}


def _files(layer: str) -> list[Path]:
    files = sorted((APP / layer).rglob("*.py"))
    assert files, f"no modules under app/{layer}"
    return files


def test_the_import_scanner_sees_every_form_of_import() -> None:
    source = (
        "import fastapi\n"
        "import starlette.types as t\n"
        "from app.http import schemas\n"
        "from ..core.errors import ServiceError\n"
        "from . import base\n"
        "def later():\n"
        "    from app.core.batching import Batcher\n"
    )
    names = imported_modules(source, "app.engine.hf")
    assert _violations(names, FORBIDDEN["engine"]) == {
        "fastapi",
        "starlette.types",
        "app.http",
        "app.http.schemas",
        "app.core.errors",
        "app.core.errors.ServiceError",
        "app.core.batching",
        "app.core.batching.Batcher",
    }
    assert "app.engine.base" in names
    assert _violations({"fastapi_extra", "app.httpx"}, FORBIDDEN["engine"]) == set()


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_lower_layer_never_imports_a_higher_one(layer: str) -> None:
    problems = {}
    for path in _files(layer):
        names = imported_modules(
            path.read_text(), _module_name(path), is_package=path.name == "__init__.py"
        )
        bad = _violations(names, FORBIDDEN[layer])
        if bad:
            problems[str(path.relative_to(ROOT))] = sorted(bad)
    assert problems == {}


def test_every_module_is_small() -> None:
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for path in sorted(APP.rglob("*.py"))
    }
    assert len(sizes) > 10
    assert {name: lines for name, lines in sizes.items() if lines > MAX_LINES} == {}


def _call_name(func: ast.expr) -> str:
    """`gc.freeze` for `gc.freeze()`, `runtime.freeze_heap` for `runtime.freeze_heap()`."""
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        owner = _call_name(func.value)
        return f"{owner}.{func.attr}" if owner else func.attr
    return ""


def test_only_python_m_app_tunes_the_interpreter() -> None:
    """Calls that change the whole process (switch interval, collector) appear only in
    `__main__` and in the runtime module it calls."""
    callers: dict[str, list[str]] = {}
    for path in sorted(APP.rglob("*.py")):
        name = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                called = _call_name(node.func)
                if called in TUNING_CALLS or called.rpartition(".")[2] in TUNING_CALLS:
                    callers.setdefault(name, []).append(called)
    assert set(callers) <= TUNING_MODULES, callers
    assert "runtime.configure_process" in callers["app/__main__.py"]


_PROBE = """
import asyncio, gc, json, sys
before = {"switch": sys.getswitchinterval(), "gc": list(gc.get_threshold())}

from asgi_lifespan import LifespanManager
from app.config import Settings
from app.main import create_app
from tests.fakes import FakeClassifier

imported = {"switch": sys.getswitchinterval(), "gc": list(gc.get_threshold())}

async def serve():
    settings = Settings(_env_file=None, model_path=sys.argv[1], warmup=False)
    app = create_app(settings, factory=FakeClassifier().factory)
    async with LifespanManager(app):
        while not app.state.lifecycle.is_ready:
            await asyncio.sleep(0.01)
        return {"switch": sys.getswitchinterval(), "gc": list(gc.get_threshold())}

served = asyncio.run(serve())
from app.engine import runtime
runtime.configure_process()
tuned = {"switch": sys.getswitchinterval(), "gc": list(gc.get_threshold())}
print(json.dumps({"before": before, "imported": imported, "served": served, "tuned": tuned,
                  "constants": [runtime.GIL_SWITCH_INTERVAL_S, runtime.GC_GEN0_THRESHOLD]}))
"""


def test_importing_and_serving_the_app_leaves_the_interpreter_alone(stub_model: Path) -> None:
    """In a fresh interpreter: importing app.main, creating the app and bringing it up change
    neither the GIL switch interval nor the collector; `configure_process` does both."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(stub_model)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["imported"] == seen["before"]
    assert seen["served"] == seen["before"]
    switch, gen0 = seen["constants"]
    assert seen["tuned"]["switch"] == pytest.approx(switch) != seen["before"]["switch"]
    assert seen["tuned"]["gc"][0] == gen0 != seen["before"]["gc"][0]
