from __future__ import annotations

import json
import logging

import pytest

from app.logging_config import JsonFormatter, configure_logging

pytestmark = pytest.mark.anyio

MARKER = "PRIVATE-TEXT-MARKER"


def test_json_lines_carry_the_request_fields() -> None:
    record = logging.LogRecord(
        "app.access", logging.INFO, __file__, 1, "POST %s", ("/predict",), None
    )
    record.request_id = "abc"
    record.status = 200
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "POST /predict" and line["request_id"] == "abc"
    assert line["status"] == 200 and line["level"] == "info"


def test_configure_logging_installs_one_handler() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("warning", json_lines=True)
        assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, JsonFormatter)
        assert root.level == logging.WARNING
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


@pytest.mark.parametrize("engine", ["fake", "real"])
async def test_texts_never_reach_the_logs(
    start_app, settings_for, fake_settings, fake, caplog, engine: str
) -> None:
    caplog.set_level(logging.DEBUG)
    if engine == "real":
        api = await start_app(settings_for(forward="padded"))
    else:
        api = await start_app(fake_settings(), factory=fake.factory)
    await api.client.post(
        "/predict", json={"text": f"good {MARKER}"}, headers={"x-request-id": "rid-1"}
    )
    await api.client.post(
        "/predict", json={"text": f"{MARKER} " * 50, "truncate": False, "top_k": 0}
    )
    await api.client.post("/predict", json={"texts": [MARKER, ""]})
    await api.client.post("/predict", content=f'{{"text": "{MARKER}'.encode())
    if engine == "fake":  # a failing pass is logged with its traceback, never with the text
        fake.error = RuntimeError("kernel failed")
        failed = await api.client.post("/predict", json={"text": f"{MARKER} again"})
        assert failed.status_code == 500
        assert any(r.getMessage() == "inference failed" for r in caplog.records)
    assert caplog.records
    for record in caplog.records:
        assert MARKER not in record.getMessage()
    assert MARKER not in caplog.text  # tracebacks included
    access = [r for r in caplog.records if r.name == "app.access"]
    assert any(getattr(r, "request_id", None) == "rid-1" for r in access)
