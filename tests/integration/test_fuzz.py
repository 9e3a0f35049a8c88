"""Schemathesis against the live OpenAPI spec, with API keys off and on: no 5xx, every status
documented, every schema-valid body accepted, every schema-violating one refused, and with
keys on every protected operation refused without the key."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.tiny_model import build_tiny_model

KEY = "fuzz-key-0123456789abcdef"
EXAMPLES = 500  # per operation, in the fuzzing phase


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("fuzz") / "tiny")


def _fuzzed_cases(report_dir: Path) -> dict[str, int]:
    """Test cases per operation in the fuzzing phase, from schemathesis' NDJSON report."""
    cases: dict[str, int] = {}
    (report,) = report_dir.glob("*.ndjson")
    for line in report.read_text().splitlines():
        finished = json.loads(line).get("ScenarioFinished")
        if finished and finished["phase"] == "fuzzing":
            label = finished["recorder"]["label"]
            cases[label] = cases.get(label, 0) + len(finished["recorder"]["cases"])
    return cases


@pytest.mark.parametrize("keys", [False, True], ids=["keys-off", "keys-on"])
def test_openapi_contract_holds_under_fuzzing(
    spawn, tiny: Path, tmp_path: Path, keys: bool
) -> None:
    access = {"TEXTCLF_API_KEYS": KEY, "TEXTCLF_DOCS_ACCESS": "key"} if keys else {}
    server = spawn(tiny, TEXTCLF_MAX_ITEMS_PER_REQUEST="16", TEXTCLF_MAX_TEXT_CHARS="400", **access)
    server.wait_ready()
    auth = {"Authorization": f"Bearer {KEY}"} if keys else {}
    limits = httpx.get(f"{server.url}/model", headers=auth, timeout=10).json()["batching"]
    assert (limits["max_items_per_request"], limits["max_text_chars"]) == (16, 400)
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json",
            "--checks", "all", "--max-examples", str(EXAMPLES), "--seed", "20261121",
            "--workers", "2", "--request-timeout", "20", "--no-color",
            "--report", "ndjson", "--report-dir", str(tmp_path / "report"),
            *(["-H", f"Authorization: Bearer {KEY}"] if keys else []),
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    output = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, output
    assert "Test cases:" in result.stdout and "generated" in result.stdout, output
    # Every operation is fuzzed; /predict, the one with an input, with EXAMPLES cases (the
    # GET operations take no input: one case each, plus the coverage phase's method and
    # auth cases).
    cases = _fuzzed_cases(tmp_path / "report")
    assert set(cases) == {
        "POST /predict",
        "GET /model",
        "GET /health",
        "GET /ready",
        "GET /metrics",
    }
    assert cases["POST /predict"] >= EXAMPLES, cases
    logging.getLogger(__name__).info("schemathesis, keys %s: %.0f s, %s", keys, elapsed, cases)
