"""/docs and /openapi.json: Swagger UI served from the image (no CDN), open or behind a key.

The assets are the pinned `fastapi-offline` package's copy of Swagger UI. With
TEXTCLF_DOCS_ACCESS=key the page asks for the key once per browser tab (sessionStorage),
fetches the spec with it and starts "Try it out" authorized.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Security
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from app.config import Settings
from app.http.security import SCHEME_NAME, require_key

DOCS_URL = "/docs"
OPENAPI_URL = "/openapi.json"
ASSETS_URL = "/docs/assets"
KEY_SCRIPT_URL = "/docs/key.js"
ASSETS_DIR = files("fastapi_offline") / "static"

# Wraps SwaggerUIBundle (loaded just before) so the page's own call to it gets the key.
_KEY_SCRIPT = """"use strict";
(() => {
  const store = "textclf-api-key";
  const sameOrigin = (url) => new URL(url, window.location.href).origin === window.location.origin;
  const askKey = () => {
    let key = sessionStorage.getItem(store);
    if (!key) {
      key = (window.prompt("API key for this service (kept in this tab only)") || "").trim();
      if (key) sessionStorage.setItem(store, key);
    }
    return key;
  };
  window.SwaggerUIBundle = new Proxy(window.SwaggerUIBundle, {
    apply(bundle, self, [config]) {
      const key = askKey();
      const ui = bundle({
        ...config,
        requestInterceptor: (request) => {
          if (key && sameOrigin(request.url) && !request.headers.Authorization) {
            request.headers.Authorization = "Bearer " + key;
          }
          return request;
        },
        responseInterceptor: (response) => {
          if (response.status === 401) sessionStorage.removeItem(store);  // ask again
          return response;
        },
        onComplete: () => { if (key) ui.preauthorizeApiKey(SCHEME, key); },
      });
      return ui;
    },
  });
})();
""".replace("SCHEME", f'"{SCHEME_NAME}"')


class _Assets(StaticFiles):
    """Swagger UI's pinned files: a browser may keep them (the API's answers: never)."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "public, max-age=86400"
        return response


def _inline_script_hash(html: str) -> str:
    """The CSP source of the page's one inline script (FastAPI's Swagger UI set-up)."""
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    assert len(scripts) == 1, "FastAPI's Swagger UI page changed shape"
    digest = hashlib.sha256(scripts[0].encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def _page(title: str, with_key: bool) -> tuple[str, str]:
    """The /docs HTML and its Content-Security-Policy, built once."""
    bundle_url = f"{ASSETS_URL}/swagger-ui-bundle.js"
    html = bytes(
        get_swagger_ui_html(
            openapi_url=OPENAPI_URL,
            title=f"{title} - Swagger UI",
            swagger_js_url=bundle_url,
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},
        ).body
    ).decode()
    if with_key:
        bundle_tag = f'<script src="{bundle_url}"></script>'
        assert bundle_tag in html, "FastAPI's Swagger UI page changed shape"
        html = html.replace(bundle_tag, f'{bundle_tag}<script src="{KEY_SCRIPT_URL}"></script>')
    policy = (
        f"default-src 'none'; script-src 'self' {_inline_script_hash(html)}; "
        "style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    return html, policy


def install_docs(app: FastAPI, settings: Settings) -> None:
    """Add /docs, its assets and /openapi.json as TEXTCLF_DOCS_ACCESS says (off: none)."""
    access = settings.docs_access
    if access == "off":
        return
    with_key = access == "key"
    html, policy = _page(app.title, with_key)
    router = APIRouter(include_in_schema=False)

    @router.get(OPENAPI_URL, dependencies=[Security(require_key)] if with_key else [])
    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(request.app.openapi())

    @router.get(DOCS_URL)
    async def docs() -> HTMLResponse:
        return HTMLResponse(html, headers={"Content-Security-Policy": policy})

    if with_key:

        @router.get(KEY_SCRIPT_URL)
        async def key_script() -> Response:
            return Response(_KEY_SCRIPT, media_type="text/javascript")

    app.include_router(router)
    app.mount(ASSETS_URL, _Assets(directory=str(ASSETS_DIR)), name="docs-assets")
