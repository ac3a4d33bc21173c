"""`GET /metrics`: the Prometheus text format (docs/operations.md); off with CHATROOM_METRICS.

Each worker process answers for itself.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import ServicesDep

router = APIRouter()


# Not in the OpenAPI schema: it is for the operator's scraper, not the API's clients.
@router.get("/metrics", include_in_schema=False)
async def metrics(services: ServicesDep) -> Response:
    return Response(await services.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
