"""Settings: validation, the one-line errors, and the TEXTCLF_ environment prefix."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import ENV_PREFIX, Settings, describe_error, env_name
from tests.conftest import make_settings

ALIASES = ("MODEL_PATH", "HOST", "PORT")
REMOVED = ("unpadded", "onednn_linear", "scripted", "alone_pass_threads", "gil_switch_interval_ms")


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The environment without any setting a developer's shell may have exported."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) or name in ALIASES:
            monkeypatch.delenv(name)
    return monkeypatch


def test_defaults_are_safe(tiny_model: Path) -> None:
    settings = make_settings(tiny_model)
    assert settings.max_queue_tokens > 0
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
    assert "TEXTCLF_MAX_BATCH_SIZE" in line and "TEXTCLF_PORT" in line


def test_infinite_or_unbounded_timeouts_are_refused(tiny_model: Path) -> None:
    with pytest.raises(ValidationError) as info:
        make_settings(tiny_model, graceful_timeout_s=float("inf"), request_timeout_s=float("nan"))
    line = describe_error(info.value)
    assert "TEXTCLF_GRACEFUL_TIMEOUT_S" in line and "TEXTCLF_REQUEST_TIMEOUT_S" in line
    with pytest.raises(ValidationError, match=r"less than or equal to 3600"):
        make_settings(tiny_model, keep_alive_s=10**9)


def test_api_keys_come_from_the_list_and_the_file(tiny_model: Path, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("b" * 20 + "\n\n  " + "c" * 20 + "  \n" + "a" * 16 + "\n")
    settings = make_settings(
        tiny_model, api_keys="a" * 16 + ", " + "d" * 32, api_keys_file=keys_file
    )
    assert settings.keys == ("a" * 16, "d" * 32, "b" * 20, "c" * 20)  # once each, in order
    assert "a" * 16 not in repr(settings)  # a SecretStr: never in a log line or traceback
    assert make_settings(tiny_model).keys == ()


def test_bad_access_settings_fail_in_one_line_without_the_key(tiny_model: Path) -> None:
    cases: dict[str, dict[str, object]] = {
        "TEXTCLF_API_KEYS_FILE cannot be read": {"api_keys_file": tiny_model / "absent"},
        "at least 16 visible ASCII": {"api_keys": "short-secret-1"},
        "TEXTCLF_DOCS_ACCESS=key but no key": {"docs_access": "key"},
        "TEXTCLF_METRICS_ACCESS=key but no key": {"metrics_access": "key"},
        "scheme://host[:port]": {"cors_allow_origins": "https://ok.example, *"},
    }
    for expected, values in cases.items():
        with pytest.raises(ValidationError) as info:
            make_settings(tiny_model, **values)
        line = describe_error(info.value)
        assert expected in line and "\n" not in line, line
        assert "short-secret-1" not in line
    settings = make_settings(tiny_model, cors_allow_origins="https://a.example, http://b:8080")
    assert settings.cors_origins == ("https://a.example", "http://b:8080")


def test_environment_variables_are_read(tiny_model: Path, environ) -> None:
    environ.setenv("TEXTCLF_MODEL_PATH", str(tiny_model))
    environ.setenv("TEXTCLF_MAX_BATCH_SIZE", "7")
    environ.setenv("TEXTCLF_LOG_LEVEL", "DEBUG")
    environ.setenv("TEXTCLF_FORWARD", "unpadded")
    settings = Settings(_env_file=None)
    assert settings.model_path == tiny_model
    assert settings.max_batch_size == 7
    assert settings.log_level == "debug"
    assert settings.forward == "unpadded"


def test_foreign_variables_without_the_prefix_are_ignored(tiny_model: Path, environ) -> None:
    """A harness exporting WARMUP=3 or DEVICE=tpu for its own use does not stop the service."""
    environ.setenv("TEXTCLF_MODEL_PATH", str(tiny_model))
    environ.setenv("WARMUP", "3")
    environ.setenv("DEVICE", "tpu")
    environ.setenv("MAX_BATCH_SIZE", "0")
    settings = Settings(_env_file=None)
    assert settings.warmup is True and settings.device == "auto"
    assert settings.max_batch_size == 32


def test_a_bad_prefixed_variable_is_refused_by_its_name(tiny_model: Path, environ) -> None:
    environ.setenv("TEXTCLF_MODEL_PATH", str(tiny_model))
    environ.setenv("TEXTCLF_WARMUP", "3")
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)
    line = describe_error(info.value)
    assert line.startswith("TEXTCLF_WARMUP: ") and "boolean" in line
    environ.setenv("TEXTCLF_WARMUP", "false")
    environ.setenv("TEXTCLF_FORWARD", "fastest")
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)
    assert describe_error(info.value).startswith("TEXTCLF_FORWARD: ")


def test_model_path_host_and_port_are_also_read_without_the_prefix(
    tiny_model: Path, environ
) -> None:
    environ.setenv("MODEL_PATH", str(tiny_model))
    environ.setenv("HOST", "127.0.0.2")
    environ.setenv("PORT", "9000")
    settings = Settings(_env_file=None)
    assert settings.model_path == tiny_model
    assert (settings.host, settings.port) == ("127.0.0.2", 9000)


def test_the_prefixed_name_wins_over_the_alias(tiny_model: Path, stub_model: Path, environ) -> None:
    environ.setenv("MODEL_PATH", str(stub_model))
    environ.setenv("TEXTCLF_MODEL_PATH", str(tiny_model))
    environ.setenv("HOST", "127.0.0.2")
    environ.setenv("TEXTCLF_HOST", "127.0.0.3")
    environ.setenv("PORT", "9000")
    environ.setenv("TEXTCLF_PORT", "9001")
    settings = Settings(_env_file=None)
    assert settings.model_path == tiny_model
    assert (settings.host, settings.port) == ("127.0.0.3", 9001)


def test_removed_settings_are_gone(tiny_model: Path, environ) -> None:
    for name in REMOVED:
        assert name not in Settings.model_fields
        environ.setenv(env_name(name), "1")  # left in an old .env: ignored, not an error
    assert Settings.model_fields["forward"].default == "auto"
    settings = make_settings(tiny_model)
    assert not any(hasattr(settings, name) for name in REMOVED)


@pytest.mark.parametrize("variable", ["MODEL_PATH", "TEXTCLF_MODEL_PATH"])
def test_bad_model_path_exits_non_zero_within_seconds(tmp_path: Path, variable: str) -> None:
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "app"],
        env={variable: str(tmp_path / "missing"), "PATH": "/usr/bin:/bin"},
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
        assert f"\n{env_name(name)}=" in example or f"# {env_name(name)}=" in example, (
            f"{env_name(name)} missing from .env.example"
        )


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`{name.upper()}`" in readme, f"{name.upper()} missing from the README table"
