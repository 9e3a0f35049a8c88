"""`python -m model.fetch` fails fast with one clear line where no hub is reachable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.server import free_port
from model.fetch import FetchError, check_folder

ROOT = Path(__file__).resolve().parents[1]


def _run_fetch(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    full_env |= {"HF_HOME": str(tmp_path / "hf"), **env}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "model.fetch",
            "some-org/some-classifier",
            "--out",
            str(tmp_path / "m"),
        ],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "env",
    [
        {"HF_HUB_OFFLINE": "1"},
        # A closed local port: refused at once, so no network timeout is involved.
        {
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_ETAG_TIMEOUT": "2",
            "HF_ENDPOINT": "http://127.0.0.1:{port}",
        },
    ],
    ids=["offline", "unreachable-endpoint"],
)
def test_fetch_without_hub_fails_with_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    env = {k: v.format(port=free_port()) for k, v in env.items()}
    proc = _run_fetch(tmp_path, **env)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("model.fetch: error: could not download 'some-org/some-classifier'")
    assert "Traceback" not in proc.stderr


def test_check_folder_accepts_a_classifier(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["BertForSequenceClassification"]})
    )
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert check_folder(tmp_path) == "BertForSequenceClassification"


def test_check_folder_rejects_other_models(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"config\.json"):
        check_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(FetchError, match="not a sequence-classification model"):
        check_folder(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["RobertaForSequenceClassification"]})
    )
    with pytest.raises(FetchError, match="no weights"):
        check_folder(tmp_path)
