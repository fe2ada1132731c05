"""The web app of `agentflow ui` (Starlette, served by uvicorn): two static pages and the
JSON and SVG they poll. Handlers are plain functions, run in Starlette's thread pool, so a
read that waits a moment for a writer never stalls the event loop."""
from __future__ import annotations

import socket
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from agentflow.compiler.errors import UsageError

from ..store import StoreError
from . import picture, reads
from .throttle import Throttled

STATIC = Path(__file__).parent / "static"


def make_app(db: str) -> Starlette:
    """The app over one run database (its path as the user gave it)."""
    list_runs = Throttled(lambda: reads.list_runs(db))
    plans: dict[str, dict | None] = {}
    run_view = Throttled(lambda run_id: reads.run_view(db, run_id, plans))
    node_view = Throttled(lambda run_id, node_id: reads.node_view(db, run_id, node_id))

    def draw(run_id: str, version: str, expand: frozenset[str]) -> str:
        """The run's graph as SVG; `version` is there to key the drawing: it is drawn again
        only when a status changed (or another fan-out is expanded)."""
        view = run_view(run_id)
        return picture.to_svg(*picture.run_graph(view["plan"], view["statuses"], set(expand)))

    drawing = Throttled(draw, interval=float("inf"))

    def runs(request: Request) -> Response:
        return JSONResponse(list_runs())

    def run(request: Request) -> Response:
        view = run_view(request.path_params["run_id"])
        return JSONResponse({**{k: v for k, v in view.items() if k != "plan"}, "colors": picture.COLORS})

    def graph(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        version = run_view(run_id)["version"]
        expand = frozenset(t for t in request.query_params.get("expand", "").split(",") if t)
        return Response(drawing(run_id, version, expand), media_type="image/svg+xml")

    def node(request: Request) -> Response:
        return JSONResponse(node_view(request.path_params["run_id"], request.query_params.get("id", "")))

    def page(name: str):
        return lambda request: FileResponse(STATIC / name)

    return Starlette(
        routes=[
            Route("/", page("runs.html")),
            Route("/runs/{run_id}", page("run.html")),
            Route("/api/runs", runs),
            Route("/api/runs/{run_id}", run),
            Route("/api/runs/{run_id}/graph.svg", graph),
            Route("/api/runs/{run_id}/node", node),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={StoreError: store_error})


def store_error(request: Request, err: Exception) -> Response:
    """A missing run or node is 404; a database that cannot be read now is 503, said in one line."""
    return JSONResponse({"error": str(err)}, status_code=404 if isinstance(err, reads.NotFound) else 503)


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound before serving: a port in use or a host that does not
    resolve is a usage error (exit 2) said in one line, not uvicorn's log and exit 3."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as err:
        raise UsageError(f"cannot serve on {host}:{port}: {err.strerror}; give another --host") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise UsageError(f"cannot serve on {host}:{port}: {err.strerror}; give another --port "
                         f"(0 picks a free one) or --host") from None
    return sock


def serve(db: str, sock: socket.socket) -> None:
    """Serves the app on a bound socket until Ctrl-C."""
    import uvicorn
    uvicorn.Server(uvicorn.Config(make_app(db), log_level="warning")).run(sockets=[sock])
