"""The yardstick: a bare Starlette endpoint returning constant JSON, same uvicorn settings."""

from __future__ import annotations

import os

import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route


async def constant(request):  # noqa: ANN001, ANN201
    await request.body()
    return JSONResponse({"id": "01ARZ3NDEKTSV4RRFFQ69G5FAV", "ts": 1700000000000}, status_code=201)


app = Starlette(routes=[Route("/room/{id}", constant, methods=["GET", "POST"])])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning",
                server_header=False, proxy_headers=False)
