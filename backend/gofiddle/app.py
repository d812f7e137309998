"""HTTP wiring: the Starlette application, its routes and its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.websockets import WebSocket

from . import playground_api
from .config import Settings
from .server import Rejection, Server
from .session import Session
from .store import InvalidSnippet, SnippetTooLarge, valid_id

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = PACKAGE_DIR / "templates"


def static_dir() -> Path:
    """`static/` at the repository root (built assets, committed)."""
    for candidate in (PACKAGE_DIR.parent.parent / "static", Path.cwd() / "static"):
        if candidate.is_dir():
            return candidate
    return PACKAGE_DIR.parent.parent / "static"


def client_address(scope_client: tuple[str, int] | None, headers: dict[str, str],
                   trust_forwarded: bool) -> str:
    if trust_forwarded:
        forwarded = headers.get("x-forwarded-for", "")
        if forwarded:
            return forwarded.split(",")[0].strip()
    return scope_client[0] if scope_client else "unknown"


def asset_version(directory: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(directory.glob("*")):
        if p.is_file():
            h.update(p.name.encode())
            h.update(str(p.stat().st_size).encode())
            h.update(str(int(p.stat().st_mtime)).encode())
    return h.hexdigest()[:10]


def create_app(settings: Settings) -> Starlette:
    server = Server(settings)
    templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    statics = static_dir()
    version = asset_version(statics) if statics.is_dir() else "0"

    def client_of(request: Request | WebSocket) -> str:
        return client_address(request.client and (request.client.host, request.client.port),
                              dict(request.headers), settings.trust_forwarded_for)

    def editor(request: Request, snippet: str | None, text: str | None, embed: bool,
               status: int = 200) -> Response:
        return templates.TemplateResponse(request, "editor.html", {
            "snippet_id": snippet, "source": text, "embed": embed,
            "go_version": server.tools.version, "static_url": "/static",
            "asset_version": version,
        }, status_code=status)

    def not_found(request: Request, what: str) -> Response:
        if (TEMPLATES_DIR / "not_found.html").exists():
            return templates.TemplateResponse(request, "not_found.html", {
                "what": what, "static_url": "/static", "asset_version": version,
                "go_version": server.tools.version}, status_code=404)
        return HTMLResponse(f"<h1>Not found</h1><p>{what}</p>", status_code=404)

    async def load(snippet: str) -> str | None:
        if not valid_id(snippet) or server.store is None:
            return None
        found = await asyncio.to_thread(server.store.get, snippet)
        if found is None:
            return None
        await asyncio.to_thread(server.store.record_view, snippet)
        return found.source

    async def index(request: Request) -> Response:
        return editor(request, None, None, embed=False)

    async def snippet_page(request: Request) -> Response:
        snippet = request.path_params["snippet"]
        if snippet.endswith(".go"):
            return await snippet_raw(request)
        text = await load(snippet)
        if text is None:
            return not_found(request, f"No snippet with id {snippet!r}.")
        return editor(request, snippet, text, embed=False)

    async def snippet_raw(request: Request) -> Response:
        snippet = request.path_params["snippet"].removesuffix(".go")
        text = await load(snippet)
        if text is None:
            return PlainTextResponse("snippet not found\n", status_code=404)
        headers = {}
        if request.query_params.get("download"):
            headers["Content-Disposition"] = f'attachment; filename="{snippet}.go"'
        return Response(text.encode("utf-8"), media_type="text/plain; charset=utf-8",
                        headers=headers)

    async def embed_page(request: Request) -> Response:
        snippet = request.path_params["snippet"]
        text = await load(snippet)
        if text is None:
            return not_found(request, f"No snippet with id {snippet!r}.")
        return editor(request, snippet, text, embed=True)

    async def share(request: Request) -> Response:
        body = await request.body()
        if len(body) > settings.snippet_bytes:
            return PlainTextResponse(
                f"snippet is too large ({len(body)} bytes; limit {settings.snippet_bytes})\n",
                status_code=413)
        try:
            text = body.decode("utf-8")
            snippet = await server.share(text, client_of(request))
        except UnicodeDecodeError:
            return PlainTextResponse("body is not valid UTF-8\n", status_code=400)
        except SnippetTooLarge as e:
            return PlainTextResponse(f"{e}\n", status_code=413)
        except InvalidSnippet as e:
            return PlainTextResponse(f"{e}\n", status_code=400)
        except Rejection as r:
            return PlainTextResponse(f"{r.message}\n", status_code=429, headers={
                "Retry-After": str(max(1, (r.retry_after_ms or 1000) // 1000))})
        return PlainTextResponse(snippet, headers={"Access-Control-Allow-Origin": "*"})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def readyz(request: Request) -> Response:
        state = server.readiness()
        return JSONResponse(state, status_code=200 if state["ready"] else 503)

    async def metrics(request: Request) -> Response:
        body, content_type = server.metrics.render()
        return Response(body, media_type=content_type)

    async def ws_endpoint(websocket: WebSocket) -> None:
        await Session(websocket, server, client_of(websocket)).serve()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    routes = [
        Route("/", index),
        Route("/p/{snippet}", snippet_page),
        Route("/embed/{snippet}", embed_page),
        Route("/share", share, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        *playground_api.routes(server),
        WebSocketRoute("/ws", ws_endpoint),
        Mount("/static", StaticFiles(directory=str(statics), check_dir=False), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.server = server
    return app
