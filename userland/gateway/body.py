"""A request body read field by field: each field's type is checked where it is read, and a bad
one is ApiError(400) naming it (OpenAI's ``param``). JSON numbers: an int is a valid float, a
bool is neither."""

from __future__ import annotations

import json

from .errors import ApiError

KINDS = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
         "array": (list,), "object": (dict,)}


async def read_json(request, limit: int) -> "Body":
    """The request's JSON object; 413 past `limit` bytes (checked before and while reading)."""
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limit:
        raise ApiError(413, f"request body of {size} bytes exceeds the limit of {limit}")
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks) or b"null")
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}") from None
    return Body(data)


class Body:
    def __init__(self, data, prefix: str = ""):
        if not isinstance(data, dict):
            what = "nothing" if data is None else type(data).__name__
            raise ApiError(400, f"the {prefix.rstrip('.') or 'body'} must be a JSON object, not {what}",
                           param=prefix.rstrip(".") or None)
        self.data, self.prefix = data, prefix

    def get(self, name: str, kind: str, default=None, *, required: bool = False, lo=None, hi=None,
            choices=None):
        """The field's value (default when absent or null), checked against kind/lo/hi/choices."""
        v = self.data.get(name)
        param = self.prefix + name
        if v is None:
            if required:
                raise ApiError(400, f"'{param}' is required", param=param)
            return default
        types = KINDS[kind]
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            raise ApiError(400, f"'{param}' must be {'an' if kind[0] in 'aeiou' else 'a'} {kind}, "
                                f"not {_json_type(v)}", param=param)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ApiError(400, f"'{param}' must be in [{lo}, {hi}], got {v}", param=param)
        if choices is not None and v not in choices:
            raise ApiError(400, f"'{param}' must be one of {', '.join(map(str, choices))}", param=param)
        return v

    def sub(self, name: str) -> "Body":
        """A nested object (an empty one when absent)."""
        v = self.data.get(name)
        return Body({} if v is None else v, f"{self.prefix}{name}.")

    def stop(self, name: str = "stop") -> list[str] | None:
        """A stop string or a list of them."""
        v = self.data.get(name)
        if v is None or isinstance(v, str):
            return None if v in (None, "") else [v]
        if isinstance(v, list) and all(isinstance(s, str) for s in v):
            return [s for s in v if s] or None
        raise ApiError(400, f"'{self.prefix}{name}' must be a string or an array of strings",
                       param=self.prefix + name)


def _json_type(v) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "an object"}.get(type(v), type(v).__name__)
