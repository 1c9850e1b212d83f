"""Fast JSON responses: pydantic serialises straight to bytes (no dict round trip)."""

from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import BaseModel, TypeAdapter
from starlette.responses import Response

JSON = "application/json"
PROBLEM_JSON = "application/problem+json"


class OrjsonResponse(Response):
    """A JSON response rendered by orjson (FastAPI's own ORJSONResponse is deprecated)."""

    media_type = JSON

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def model_response(
    model: BaseModel, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = model.__pydantic_serializer__.to_json(model, by_alias=True)
    return Response(body, status_code=status_code, media_type=JSON, headers=headers)


_adapters: dict[type[BaseModel], TypeAdapter[list[Any]]] = {}


def list_response(items: Sequence[BaseModel], item_type: type[BaseModel]) -> Response:
    adapter = _adapters.get(item_type)
    if adapter is None:
        adapter = _adapters[item_type] = TypeAdapter(list[item_type])  # type: ignore[valid-type]
    return Response(adapter.dump_json(list(items), by_alias=True), media_type=JSON)
