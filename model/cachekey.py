"""The build's cache key: a digest of everything that changes the built model.

Covered: the recipe, the wheel pins (name, version, sha256), the versions of Python, torch,
transformers, tokenizers and safetensors, and the source of the build code (every module of
this package except those in NOT_BUILD_CODE). Versions are read from package metadata, so
computing the key imports neither torch nor transformers and stays fast.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from model.pins import PINS, WheelPin
from model.recipe import Recipe

KEY_SCHEME = 1
LIBRARIES = ("torch", "transformers", "tokenizers", "safetensors")
# Modules that never run during a build: editing them must not trigger a rebuild.
NOT_BUILD_CODE = frozenset({"fetch.py"})
PACKAGE_DIR = Path(__file__).resolve().parent


def library_versions(names: Iterable[str] = LIBRARIES) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def code_digest(package_dir: Path = PACKAGE_DIR) -> str:
    """sha256 over the names and bytes of the build's Python modules, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.glob("*.py")):
        if path.name in NOT_BUILD_CODE:
            continue
        digest.update(path.name.encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def key_inputs(
    recipe: Recipe,
    pins: Iterable[WheelPin] = PINS,
    versions: Mapping[str, str] | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    return {
        "scheme": KEY_SCHEME,
        "recipe": recipe.to_dict(),
        "wheels": [{"name": p.name, "version": p.version, "sha256": p.sha256} for p in pins],
        "versions": dict(versions if versions is not None else library_versions()),
        "code_sha256": code if code is not None else code_digest(),
    }


def cache_key(inputs: Mapping[str, Any]) -> str:
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
