"""JSON reading for the run path without the json package, which imports re (and enum).

Those imports alone cost several milliseconds of `jailkit run`'s start-up; the C scanner the json
package itself uses does the work here. Strict JSON only: no NaN or Infinity.
"""

import _json


def _no_constant(name: str):
    raise ValueError(f"{name} is not allowed")


class _Context:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_no_constant)
    memo: dict = {}


_scan = _json.make_scanner(_Context())


def loads(text: str):
    """The value `text` holds; ValueError (with the offset) when it is not one JSON value."""
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        value, end = _scan(text, start)
    except StopIteration as stop:
        raise ValueError(f"expected a JSON value at offset {stop.value}") from None
    rest = text[end:].lstrip(" \t\n\r")
    if rest:
        raise ValueError(f"extra data at offset {len(text) - len(rest)}")
    return value
