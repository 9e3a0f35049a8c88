"""`python -m tests.fake_server`: the real server (app.__main__.main: settings, uvicorn, drain)
on tests/fakes.py's FakeClassifier instead of a model, for load scenarios that need a cheap,
controllable engine. Settings as for `python -m app`; without a model path it serves a stub
folder. FAKE_PASS_MS slows every forward pass; FAKE_LEAK_KB_PER_REQUEST > 0 leaks that much
per scored text (the soak scenario's negative control)."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

from app.__main__ import main
from tests.fakes import FakeClassifier, LeakingFakeClassifier


def build_fake() -> FakeClassifier:
    pass_seconds = float(os.environ.get("FAKE_PASS_MS", "0")) / 1000
    leak_kb = int(os.environ.get("FAKE_LEAK_KB_PER_REQUEST", "0"))
    if leak_kb > 0:
        return LeakingFakeClassifier(leak_kb, pass_seconds=pass_seconds)
    return FakeClassifier(pass_seconds=pass_seconds)


def stub_model_folder() -> Path:
    """A folder that passes the settings' checks, with no self-test file for the fake to fail."""
    folder = Path(tempfile.mkdtemp(prefix="fake-model-"))
    (folder / "config.json").write_text("{}", encoding="utf-8")
    return folder


if __name__ == "__main__":
    if not (os.environ.get("TEXTCLF_MODEL_PATH") or os.environ.get("MODEL_PATH")):
        os.environ["TEXTCLF_MODEL_PATH"] = str(stub_model_folder())
    code = main(factory=build_fake().factory)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as app.__main__: inference threads must not keep a stopped server alive
