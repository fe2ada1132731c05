"""The web app of `agentflow ui` (Starlette, served by uvicorn): two static pages and the
JSON and SVG they poll, and the one thing it writes: a person's answer to a waiting node.
Handlers are plain functions, run in Starlette's thread pool, so a read that waits a moment
for a writer never stalls the event loop."""
from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from agentflow.compiler.errors import UsageError

from ..answers import AnswerError, NotAnswerable, answer, next_step
from ..human import current_user
from ..store import StoreError
from . import picture, reads
from .throttle import Throttled

STATIC = Path(__file__).parent / "static"


def make_app(db: str, host: str = "127.0.0.1", temporal: dict | None = None) -> Starlette:
    """The app over one run database (its path as the user gave it), served on `host`;
    `temporal` (address, namespace) is where a Temporal run's answers go."""
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

    async def answer_node(request: Request) -> Response:
        """Answers a waiting node as `agentflow answer` does: JSON {node, value (the text as
        typed), by}; 422 with the reason when the value does not fit, and nothing stored."""
        refused = cross_site(request, host)
        if refused:
            return JSONResponse({"error": refused}, status_code=403)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not (isinstance(body, dict) and isinstance(body.get("node"), str) and isinstance(body.get("value"), str)):
            return JSONResponse({"error": 'post JSON {"node": NODE_ID, "value": TEXT, "by": NAME}'}, status_code=400)
        given = await run_in_threadpool(answer, Path(db), request.path_params["run_id"], body["node"], body["value"],
                                        str(body.get("by") or "").strip() or current_user(), temporal)
        return JSONResponse({"node": given.node.node_id, "value": given.value, "delivered": given.delivered,
                             "message": next_step(given)})

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
            Route("/api/runs/{run_id}/answer", answer_node, methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={StoreError: store_error, AnswerError: answer_error})


def cross_site(request: Request, served: str) -> str | None:
    """Why a write may come from another site's page, or None. The browser says which page sent
    it (Origin), and it must be this one; and the page must be reached by an address, `localhost`
    or the --host name, not another site's name resolving here (DNS rebinding)."""
    origin, own = request.headers.get("origin"), f"{request.url.scheme}://{request.url.netloc}"
    if origin != own:
        return f"refused: an answer is taken only from this server's own page ({own}), not from {origin or 'no page'}"
    name = request.url.hostname or ""
    if name not in ("localhost", served) and not is_address(name):
        return f"refused: this page is served as {served}, not as {name}; open it at its address"
    return None


def is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def answer_error(request: Request, err: Exception) -> Response:
    """A node that cannot be answered (missing, not waiting) is 409; a value that does not fit is 422."""
    return JSONResponse({"error": str(err)}, status_code=409 if isinstance(err, NotAnswerable) else 422)


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


def serve(db: str, sock: socket.socket, host: str, temporal: dict) -> None:
    """Serves the app on a bound socket (of `host`) until Ctrl-C."""
    import uvicorn
    uvicorn.Server(uvicorn.Config(make_app(db, host, temporal), log_level="warning")).run(sockets=[sock])
