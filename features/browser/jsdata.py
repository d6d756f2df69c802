"""Data files as JavaScript: `EMOSAE_register("kind", key, {...});`.

Chromium refuses fetch/XHR from file://, so an exported site loads its data through <script>
tags. The data is untrusted (dataset passages, labels, token strings), so the JSON is written with
`<`, `>`, `&`, U+2028 and U+2029 escaped: `</script>`, `<!--` and line separators cannot end the
literal or the script, whether the file is loaded by src or pasted inline."""

from __future__ import annotations

import json
import math
from typing import Any

_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _finite(obj: Any) -> Any:
    """NaN and infinities become null (JSON has no spelling for them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def js_literal(obj: Any) -> str:
    """A JSON text that is also safe to place anywhere inside a <script> (src'd or inline)."""
    try:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(obj), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for ch, esc in _ESCAPES.items():  # str.replace is C-speed; str.translate is not
        if ch in text:
            text = text.replace(ch, esc)
    return text


def js_register(kind: str, key: Any, obj: Any, parse: bool = False) -> bytes:
    """One data file: a call to the page's registration function, UTF-8 encoded. Lone
    surrogates (from broken token bytes) become `\\udcxx` escapes, which JS reads back.
    `parse=True` wraps the data as JSON.parse("..."), which V8 reads faster than an object
    literal when it is large (the feature list); the string is escaped the same way. Data with a
    `__proto__` key is always parsed: in an object literal that key sets the prototype instead of
    making a property, so the page would silently lose it."""
    data = js_literal(obj)
    if parse or "__proto__" in data:
        data = f"JSON.parse({js_literal(data)})"
    text = f"EMOSAE_register({js_literal(kind)},{js_literal(key)},{data});\n"
    return text.encode("utf-8", errors="backslashreplace")
