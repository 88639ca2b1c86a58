"""The hashing of ``bind_sha256``, byte for byte as the Tollgate gateway does it.

The gateway parses the request body, takes the value at the pointer and hashes

* a string: its UTF-8 bytes (escapes resolved, no quotes);
* anything else: its compact JSON as the gateway re-serialises the *parsed* value — no
  whitespace; object keys sorted by UTF-8 bytes (= by code point; duplicates: the last wins);
  strings escaped only for ``"``, ``\\`` and characters below U+0020 (``\\b \\f \\n \\r \\t``,
  others ``\\u00xx`` in lower case), everything else (``/``, DEL, U+2028, non-ASCII) as is;
  integers in ``-2**63 .. 2**64-1`` in decimal; every other number (a literal with a fraction or
  an exponent, or an integer out of that range) as a double in its shortest round-trip form:
  plain with at least one fractional digit (``1.0``, ``1000.0``) when its decimal exponent is in
  ``-5 .. 15``, else ``d[.ddd]e+X`` / ``d[.ddd]e-X``; ``-0.0`` keeps its sign.

For Python values this is what the gateway computes for the body ``json.dumps`` produces: an
``int`` is an integer, a ``float`` a double (``5.0`` stays ``5.0``). To hash the exact JSON text
a client sends, wrap it in :class:`RawJson`. One limit: the gateway's JSON parser may round
number literals with many significant digits or a large exponent (e.g. ``1.25e25``) to a
neighbouring double; bind such numbers with ``bind`` (exact) or send them as strings.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Iterable, Mapping

__all__ = ["RawJson", "canonical_json", "bind_sha256_digest", "select", "parse_exact"]

_U64_MAX = 2**64 - 1
_I64_MIN = -(2**63)


class RawJson:
    """The exact JSON text of a value as the client sends it (``RawJson('1e3')``)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise TypeError("RawJson takes the JSON text as a str")
        self.text = text

    def __repr__(self) -> str:
        return f"RawJson({self.text!r})"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_int(s: str) -> Any:
    # The gateway reads the literal -0 as the double -0.0.
    return -0.0 if s == "-0" else int(s)


def parse_exact(text: str) -> Any:
    """Parses JSON text keeping what the gateway distinguishes: a literal with a fraction or an
    exponent is a float (``1.0``, ``1e3``), ``-0`` is ``-0.0``; NaN/Infinity are refused."""
    return json.loads(text, parse_int=_parse_int, parse_constant=_reject_constant)


def _float(x: float) -> str:
    if not math.isfinite(x):
        raise ValueError("NaN and infinities are not JSON")
    if x == 0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    sign = "-" if x < 0 else ""
    r = repr(abs(x))  # the shortest round-trip digits
    mant, _, exp = r.partition("e")
    ip, _, fp = mant.partition(".")
    every = ip + fp
    stripped = every.lstrip("0")
    # value = int(every) * 10 ** (exp - len(fp)); its decimal exponent:
    e = len(stripped) - 1 + (int(exp) if exp else 0) - len(fp)
    digits = stripped.rstrip("0") or "0"
    if -5 <= e <= 15:
        if e >= 0:
            whole = digits[: e + 1].ljust(e + 1, "0")
            frac = digits[e + 1 :] or "0"
            return f"{sign}{whole}.{frac}"
        return f"{sign}0.{'0' * (-e - 1)}{digits}"
    m = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{sign}{m}e{'+' if e > 0 else '-'}{abs(e)}"


def _string(s: str, out: list) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a string with a lone surrogate is not valid JSON for the gateway") from None
    out.append('"')
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif o < 0x20:
            out.append(
                {8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t"}.get(o, "\\u%04x" % o)
            )
        else:
            out.append(ch)
    out.append('"')


def _write(v: Any, out: list) -> None:
    if isinstance(v, RawJson):
        _write(parse_exact(v.text), out)
    elif v is None:
        out.append("null")
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif isinstance(v, int):
        if _I64_MIN <= v <= _U64_MAX:
            out.append(str(int(v)))
        else:
            try:
                out.append(_float(float(v)))
            except OverflowError:
                raise ValueError("integer out of the range of a double") from None
    elif isinstance(v, float):
        out.append(_float(v))
    elif isinstance(v, str):
        _string(v, out)
    elif isinstance(v, Mapping):
        items = []
        for k, val in v.items():
            if not isinstance(k, str):
                raise TypeError(f"JSON object keys must be str, not {type(k).__name__}")
            try:
                items.append((k.encode("utf-8"), k, val))
            except UnicodeEncodeError:
                raise ValueError("an object key with a lone surrogate") from None
        items.sort(key=lambda t: t[0])
        out.append("{")
        for i, (_, k, val) in enumerate(items):
            if i:
                out.append(",")
            _string(k, out)
            out.append(":")
            _write(val, out)
        out.append("}")
    elif isinstance(v, (list, tuple)):
        out.append("[")
        for i, item in enumerate(v):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise TypeError(f"{type(v).__name__} is not a JSON value")


def canonical_json(value: Any) -> str:
    """The compact JSON the gateway hashes for a non-string value (see the module docs)."""
    out: list = []
    _write(value, out)
    return "".join(out)


def bind_sha256_digest(value: Any) -> str:
    """What ``bind_sha256`` maps a pointer to: lowercase hex SHA-256 of a string's UTF-8 bytes,
    else of :func:`canonical_json`."""
    if isinstance(value, RawJson):
        value = parse_exact(value.text)
    if isinstance(value, str):
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a string with a lone surrogate is not valid JSON") from None
    else:
        data = canonical_json(value).encode("utf-8")
    return hashlib.sha256(data).hexdigest()


_MISSING = object()


def _pointer(doc: Any, pointer: str) -> Any:
    if pointer == "":
        return doc
    if not pointer.startswith("/"):
        raise ValueError(f"{pointer!r} is not a JSON Pointer")
    cur = doc
    for raw in pointer[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(cur, Mapping):
            if token not in cur:
                return _MISSING
            cur = cur[token]
        elif isinstance(cur, (list, tuple)):
            if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
                return _MISSING
            i = int(token)
            if i >= len(cur):
                return _MISSING
            cur = cur[i]
        else:
            return _MISSING
    return cur


def select(body: Any, pointers: Iterable[str]) -> dict:
    """``{pointer: value}`` for each JSON Pointer (RFC 6901) present in ``body``: the ``bind``
    of exactly the fields your backend checked."""
    if isinstance(body, (str, bytes)):
        body = parse_exact(body if isinstance(body, str) else body.decode("utf-8"))
    out = {}
    for p in pointers:
        v = _pointer(body, p)
        if v is not _MISSING:
            out[p] = v
    return out
