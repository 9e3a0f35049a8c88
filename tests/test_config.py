from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings, describe_error
from tests.conftest import make_settings


def test_defaults_are_safe(tiny_model: Path) -> None:
    settings = make_settings(tiny_model)
    assert settings.max_queue_size > 0
    assert settings.request_timeout_s < settings.graceful_timeout_s
    assert settings.display_name == tiny_model.name


def test_missing_model_folder_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as info:
        make_settings(tmp_path / "nope")
    line = describe_error(info.value)
    assert "MODEL_PATH=" in line and "make model" in line
    assert "\n" not in line


def test_folder_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"no config\.json"):
        make_settings(tmp_path)


def test_bounds_are_checked(tiny_model: Path) -> None:
    with pytest.raises(ValidationError) as info:
        make_settings(tiny_model, max_batch_size=0, port=70000)
    line = describe_error(info.value)
    assert "MAX_BATCH_SIZE" in line and "PORT" in line


def test_infinite_or_unbounded_timeouts_are_refused(tiny_model: Path) -> None:
    with pytest.raises(ValidationError) as info:
        make_settings(tiny_model, graceful_timeout_s=float("inf"), request_timeout_s=float("nan"))
    line = describe_error(info.value)
    assert "GRACEFUL_TIMEOUT_S" in line and "REQUEST_TIMEOUT_S" in line
    with pytest.raises(ValidationError, match=r"less than or equal to 3600"):
        make_settings(tiny_model, keep_alive_s=10**9)


def test_a_request_larger_than_the_queue_is_a_settings_error(tiny_model: Path) -> None:
    with pytest.raises(ValidationError) as info:
        make_settings(tiny_model, max_queue_size=16, max_items_per_request=64)
    line = describe_error(info.value)
    assert "MAX_ITEMS_PER_REQUEST=64" in line and "MAX_QUEUE_SIZE=16" in line
    assert "\n" not in line
    make_settings(tiny_model, max_queue_size=16, max_items_per_request=16)


def test_environment_variables_are_read(tiny_model: Path, monkeypatch) -> None:
    monkeypatch.setenv("MODEL_PATH", str(tiny_model))
    monkeypatch.setenv("MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    settings = Settings(_env_file=None)
    assert settings.max_batch_size == 7
    assert settings.log_level == "debug"


def test_bad_model_path_exits_non_zero_within_seconds(tmp_path: Path) -> None:
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "app"],
        env={"MODEL_PATH": str(tmp_path / "missing"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )
    assert result.returncode == 2
    assert time.monotonic() - start < 10
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "MODEL_PATH=" in lines[0] and "Traceback" not in result.stderr


def test_env_example_lists_every_setting() -> None:
    example = (Path(__file__).parent.parent / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"{name.upper()}=" in example, f"{name.upper()} missing from .env.example"


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`{name.upper()}`" in readme, f"{name.upper()} missing from the README table"
