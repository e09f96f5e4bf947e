"""Apps with sessions, their store named by ``$SESSION_URL`` (imported only by those tests)."""

from __future__ import annotations

from typing import Any

# --- sessions: a Starlette app whose store comes from $SESSION_URL ----------------------------

def _session_app() -> Any:
    import os

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from crashonly.web.sessions import SessionMiddleware

    async def login(request: Request) -> JSONResponse:
        request.session["user"] = (await request.json())["user"]
        request.session.rotate()
        return JSONResponse({"ok": True})

    async def me(request: Request) -> JSONResponse:
        return JSONResponse({"user": request.session.get("user"), "pid": os.getpid()})

    async def cart(request: Request) -> JSONResponse:
        request.session.setdefault("cart", []).append(await request.json())
        return JSONResponse({"items": len(request.session["cart"])})

    async def big(request: Request) -> JSONResponse:
        request.session["blob"] = "x" * int(request.query_params["n"])
        return JSONResponse({"ok": True})

    async def logout(request: Request) -> JSONResponse:
        request.session.clear()
        return JSONResponse({"ok": True})

    def plain(request: Request) -> JSONResponse:  # sync: runs on the app's thread pool
        return JSONResponse({"ok": True})

    return Starlette(routes=[
        Route("/login", login, methods=["POST"]), Route("/me", me),
        Route("/cart", cart, methods=["POST"]), Route("/big", big, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]), Route("/plain", plain),
    ], middleware=[Middleware(
        SessionMiddleware, store=os.environ.get("SESSION_URL"),
        idle_timeout=float(os.environ.get("SESSION_IDLE", "3600")), max_size=4096)])


session_app = _session_app()


def _wsgi_session_app() -> Any:
    import json
    import os

    from crashonly.web.wsgi import SessionMiddleware, session_of

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = session_of(environ)
        if environ["PATH_INFO"] == "/count":
            session["n"] = session.get("n", 0) + 1
        body = json.dumps({"n": session.get("n", 0)}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    return SessionMiddleware(app, store=os.environ.get("SESSION_URL"))


wsgi_session_app = _wsgi_session_app()
