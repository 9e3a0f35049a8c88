"""Schemathesis against the live OpenAPI spec: no 5xx, every status documented, every
schema-valid body accepted and every schema-violating one refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from tests.tiny_model import build_tiny_model


def test_openapi_contract_holds_under_fuzzing(spawn, tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "tiny")
    server = spawn(model, TEXTCLF_MAX_ITEMS_PER_REQUEST="16", TEXTCLF_MAX_TEXT_CHARS="400")
    server.wait_ready()
    limits = httpx.get(f"{server.url}/model", timeout=10).json()["batching"]
    assert (limits["max_items_per_request"], limits["max_text_chars"]) == (16, 400)
    result = subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json",
            "--checks", "all", "--max-examples", "150", "--seed", "20261121",
            "--request-timeout", "20", "--no-color",
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Test cases:" in result.stdout and "generated" in result.stdout
