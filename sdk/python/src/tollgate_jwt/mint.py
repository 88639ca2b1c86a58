"""Minting app JWTs (SPEC §2.4) with PyJWT."""

from __future__ import annotations

import re
import secrets
import time
from typing import Any, Mapping, Optional

import jwt

from .canonical import RawJson, bind_sha256_digest, canonical_json, parse_exact

__all__ = ["mint_app_jwt", "app_jwt_claims", "random_jti", "ALGORITHMS"]

ALGORITHMS = ("HS256", "RS256", "ES256", "EdDSA")
_SUBSCRIPTION_ID = re.compile(r"^[0-9a-f]{24}$")


def random_jti() -> str:
    """A random ``jti`` (128 bits), for subscriptions that require single-use tokens."""
    return secrets.token_urlsafe(16)


def _pointer_ok(p: Any) -> bool:
    return isinstance(p, str) and (p == "" or (p.startswith("/") and len(p.encode()) <= 512))


def app_jwt_claims(
    subscription_id: str,
    sub: str,
    bind: Optional[Mapping[str, Any]] = None,
    bind_sha256: Optional[Mapping[str, Any]] = None,
    ttl: int = 300,
    jti: Optional[str] = None,
    *,
    aud: Optional[str] = None,
    iat: Optional[int] = None,
) -> dict:
    """The payload :func:`mint_app_jwt` signs, checked the way the gateway will check it."""
    if not isinstance(subscription_id, str) or not _SUBSCRIPTION_ID.match(subscription_id):
        raise ValueError("subscription_id must be the subscription's id (24 lowercase hex characters)")
    if not isinstance(sub, str) or not 1 <= len(sub.encode()) <= 256:
        raise ValueError("sub (the end user) must be a string of 1 to 256 bytes")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= 86400:
        raise ValueError("ttl must be 1 to 86400 seconds (and at most the subscription's maximum)")
    now = int(time.time()) if iat is None else int(iat)
    claims: dict = {"iss": subscription_id, "sub": sub, "iat": now, "exp": now + ttl}
    if bind:
        exact = {}
        for p, v in bind.items():
            if not _pointer_ok(p):
                raise ValueError(f"{p!r} is not a JSON Pointer ('' or starting with '/')")
            if isinstance(v, RawJson):
                v = parse_exact(v.text)
            canonical_json(v)  # refuses NaN, sets, bytes, lone surrogates ...
            exact[p] = v
        claims["bind"] = exact
    if bind_sha256:
        hashed = {}
        for p, v in bind_sha256.items():
            if not _pointer_ok(p):
                raise ValueError(f"{p!r} is not a JSON Pointer ('' or starting with '/')")
            hashed[p] = bind_sha256_digest(v)
        claims["bind_sha256"] = hashed
    if jti is not None:
        if not isinstance(jti, str) or not 1 <= len(jti.encode()) <= 256:
            raise ValueError("jti must be a string of 1 to 256 bytes")
        claims["jti"] = jti
    if aud is not None:
        claims["aud"] = aud
    return claims


def mint_app_jwt(
    subscription_id: str,
    kid: str,
    secret_or_private_key: Any,
    alg: str,
    sub: str,
    bind: Optional[Mapping[str, Any]] = None,
    bind_sha256: Optional[Mapping[str, Any]] = None,
    ttl: int = 300,
    jti: Optional[str] = None,
    *,
    aud: Optional[str] = None,
    iat: Optional[int] = None,
) -> str:
    """A signed app JWT for one request.

    ``secret_or_private_key`` is the HS256 secret string exactly as the credentials response
    gave it (its UTF-8 bytes are the HMAC key; it is not base64-decoded), or, for RS256 / ES256 /
    EdDSA, your private key (PEM, or a ``cryptography`` key object). ``bind`` maps JSON Pointers
    to the exact values required in the request body; ``bind_sha256`` maps pointers to values
    whose SHA-256 is required there (see :mod:`tollgate_jwt.canonical`). ``aud``, if given, must
    be the gateway's public URL; ``iat`` defaults to now.
    """
    if alg not in ALGORITHMS:
        raise ValueError(f"alg must be one of {', '.join(ALGORITHMS)}")
    if not isinstance(kid, str) or not kid:
        raise ValueError("kid is required (from the credentials response)")
    if alg == "HS256":
        if not isinstance(secret_or_private_key, str) or not secret_or_private_key:
            raise ValueError("HS256 takes the secret string from the credentials response")
        if "-----BEGIN" in secret_or_private_key:
            raise ValueError("HS256 takes the secret string, not a PEM key (use RS256, ES256 or EdDSA)")
    elif isinstance(secret_or_private_key, str) and "PUBLIC KEY" in secret_or_private_key:
        raise ValueError("this is a public key: sign with the private key (upload the public one)")
    claims = app_jwt_claims(
        subscription_id, sub, bind, bind_sha256, ttl, jti, aud=aud, iat=iat
    )
    return jwt.encode(claims, secret_or_private_key, algorithm=alg, headers={"kid": kid, "typ": "JWT"})
