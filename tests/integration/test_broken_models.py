"""`python -m app` on a broken model folder: it never reports ready, and exits with code 3
within 30 s, its log saying why in one line."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import pytest

from app.__main__ import EXIT_MODEL_FAILED
from bench.server import ServerProcess, http_status
from tests.test_load_checks import BROKEN, broken_copy, reader_prefix

EXIT_WITHIN_S = 30.0
CASES = [
    "no_tokenizer",
    "no_head",
    "shape_mismatch",
    "unreadable",
    "truncated",
    "other_architecture",
]


def _python(tmp_path: Path, case: str) -> str:
    """The interpreter to serve with: for the unreadable folder, one that cannot read it."""
    prefix = reader_prefix() if case == "unreadable" else []
    if not prefix:
        return sys.executable
    wrapper = tmp_path / "python-as-another-user"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.join([*prefix, sys.executable])} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.mark.parametrize("case", CASES)
def test_a_broken_folder_makes_the_server_exit_with_one_line(
    tiny_model: Path, tmp_path: Path, case: str
) -> None:
    folder = broken_copy(tiny_model, tmp_path / case, case)
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        server = ServerProcess(folder, log, python=_python(tmp_path, case))
        try:
            while server.process.poll() is None:
                if http_status(f"{server.url}/ready", 1.0) == 200:
                    pytest.fail("/ready answered 200 for a broken folder")
                if time.monotonic() - server.started > EXIT_WITHIN_S:
                    pytest.fail(f"still running after {EXIT_WITHIN_S} s")
                time.sleep(0.05)
        finally:
            code = server.stop()
    text = log_path.read_text(errors="replace")
    assert code == EXIT_MODEL_FAILED, text
    errors = [line for line in text.splitlines() if " ERROR " in line]
    cause = f"cannot serve: cannot load the model from MODEL_PATH={folder}: {BROKEN[case][1]}"
    assert len(errors) == 1 and cause in errors[0], text
    assert "Traceback" not in text and "LOAD REPORT" not in text
