"""Mint request-bound app JWTs for the Tollgate AI gateway on a customer's backend.

>>> from tollgate_jwt import mint_app_jwt
>>> token = mint_app_jwt("66ec1726e728c1405e5ebca2", "kid", "secret-from-tollgate", "HS256",
...                      "end-user-1", bind={"/model": "mock-chat"},
...                      bind_sha256={"/prompt": "a lighthouse at dusk"}, ttl=300)
"""

from .canonical import RawJson, bind_sha256_digest, canonical_json, parse_exact, select
from .mint import ALGORITHMS, app_jwt_claims, mint_app_jwt, random_jti

__all__ = [
    "ALGORITHMS",
    "RawJson",
    "app_jwt_claims",
    "bind_sha256_digest",
    "canonical_json",
    "mint_app_jwt",
    "parse_exact",
    "random_jti",
    "select",
]
__version__ = "0.1.0"
