"""The web app of `agentflow ui` (Starlette, served by uvicorn): two static pages and the
JSON and SVG they poll. Handlers are plain functions, run in Starlette's thread pool, so a
read that waits a moment for a writer never stalls the event loop."""
from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..store import StoreError
from . import picture, reads

STATIC = Path(__file__).parent / "static"


def make_app(db: str) -> Starlette:
    """The app over one run database (its path as the user gave it)."""

    def runs(request: Request) -> Response:
        return JSONResponse(reads.list_runs(db))

    def run(request: Request) -> Response:
        view = reads.run_view(db, request.path_params["run_id"])
        return JSONResponse({**{k: v for k, v in view.items() if k != "plan"}, "colors": picture.COLORS})

    def graph(request: Request) -> Response:
        view = reads.run_view(db, request.path_params["run_id"])
        expand = {t for t in request.query_params.get("expand", "").split(",") if t}
        boxes, edges = picture.run_graph(view["plan"], view["statuses"], expand)
        return Response(picture.to_svg(boxes, edges), media_type="image/svg+xml",
                        headers={"X-Agentflow-Version": view["version"]})

    def node(request: Request) -> Response:
        node_id = request.query_params.get("id", "")
        return JSONResponse(reads.node_view(db, request.path_params["run_id"], node_id))

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


def serve(db: str, host: str, port: int) -> None:
    import uvicorn
    uvicorn.run(make_app(db), host=host, port=port, log_level="warning")
