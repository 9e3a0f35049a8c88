"""Container HEALTHCHECK: exit 0 only when the service's /ready answers 200.

Uses only the standard library (the image has no curl). /ready is 503 while
the model loads and while the app drains on SIGTERM, so Docker (and Compose's
depends_on: service_healthy) sees "healthy" exactly when the app takes traffic.

The port is found as the app finds it: TEXTCLF_PORT, else its alias PORT, else
8000; an empty variable counts as unset (the app ignores empty variables too).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

DEFAULT_PORT = "8000"


def app_port(environ: Mapping[str, str] = os.environ) -> str:
    """The port the app listens on: TEXTCLF_PORT wins over PORT; empty means unset."""
    return (
        environ.get("TEXTCLF_PORT", "").strip() or environ.get("PORT", "").strip() or DEFAULT_PORT
    )


def main() -> int:
    port = app_port()
    url = f"http://127.0.0.1:{port}/ready"
    timeout_s = float(os.environ.get("HEALTHCHECK_TIMEOUT_S", "3"))
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        sys.stderr.write(f"not ready: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
