"""The helper against the shared vectors, offline."""

import json

import jwt
import pytest

from tollgate_jwt import (
    RawJson,
    app_jwt_claims,
    bind_sha256_digest,
    canonical_json,
    mint_app_jwt,
    parse_exact,
    select,
)


def key_of(v):
    return v["key"].get("secret") or v["key"]["private_pem"]


def verify_key_of(v):
    return v["key"].get("secret") or v["key"]["public_pem"]


def mint_inputs(v, subscription_id=None, kid=None, iat="vector"):
    m = v["mint"]
    return dict(
        subscription_id=subscription_id or m["subscription_id"],
        kid=kid or m["kid"],
        sub=m["sub"],
        bind=m.get("bind"),
        bind_sha256={p: RawJson(t) for p, t in m.get("bind_sha256_json", {}).items()},
        ttl=m["ttl"],
        jti=m.get("jti"),
        iat=m["iat"] if iat == "vector" else iat,
    )


def test_every_digest_from_the_exact_json_text(vectors):
    for case in vectors["bind_sha256"]:
        assert bind_sha256_digest(RawJson(case["json"])) == case["sha256"], case["name"]
        if "canonical" in case:
            assert canonical_json(parse_exact(case["json"])) == case["canonical"], case["name"]
        else:
            assert parse_exact(case["json"]) == case["string"], case["name"]


def test_native_values_hash_the_same(vectors):
    cases = [c for c in vectors["bind_sha256"] if c["native"]]
    assert len(cases) > 20
    for case in cases:
        assert bind_sha256_digest(json.loads(case["json"])) == case["sha256"], case["name"]


def test_json_pointers(vectors):
    for case in vectors["pointers"]:
        got = select(json.loads(case["body"]), [case["pointer"]])
        if case.get("absent"):
            assert got == {}, case
        else:
            assert got == {case["pointer"]: case["value"]}, case


def test_minted_tokens_carry_the_vectors_claims(vectors):
    for v in vectors["tokens"]:
        i = mint_inputs(v)
        token = mint_app_jwt(
            i["subscription_id"], i["kid"], key_of(v), v["alg"], i["sub"],
            i["bind"], i["bind_sha256"], i["ttl"], i["jti"], iat=i["iat"],
        )
        header = jwt.get_unverified_header(token)
        assert header["alg"] == v["header"]["alg"] and header["kid"] == v["header"]["kid"]
        claims = jwt.decode(
            token, verify_key_of(v), algorithms=[v["alg"]], options={"verify_exp": False}
        )
        assert claims == v["claims"], v["name"]


def test_the_vectors_tokens_verify_and_a_changed_one_does_not(vectors):
    for v in vectors["tokens"]:
        claims = jwt.decode(
            v["token"], verify_key_of(v), algorithms=[v["alg"]], options={"verify_exp": False}
        )
        assert claims == v["claims"], v["name"]
        head, payload, sig = v["token"].split(".")
        raw = bytearray(jwt.utils.base64url_decode(sig))
        raw[4] ^= 0x01
        forged = ".".join([head, payload, jwt.utils.base64url_encode(bytes(raw)).decode()])
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(forged, verify_key_of(v), algorithms=[v["alg"]], options={"verify_exp": False})


def test_numbers_and_strings_render_like_the_gateway():
    assert canonical_json(5.0) == "5.0"
    assert canonical_json(5) == "5"
    assert canonical_json(1e16) == "1e+16"
    assert canonical_json(123456789.0e7) == "1234567890000000.0"
    assert canonical_json(1e-5) == "0.00001"
    assert canonical_json(-1.5e-7) == "-1.5e-7"
    assert canonical_json(-0.0) == "-0.0"
    assert canonical_json(2**64) == "1.8446744073709552e+19"
    assert canonical_json({"b": [True, None], "a": "x\u2028\x7f\x00"}) == '{"a":"x\u2028\x7f\\u0000","b":[true,null]}'
    assert canonical_json(RawJson("[1e3, -0, 7]")) == "[1000.0,-0.0,7]"


def test_bad_input_is_refused_before_signing():
    ok = dict(subscription_id="66ec1726e728c1405e5ebca2", sub="u1")
    with pytest.raises(ValueError):
        app_jwt_claims("not-a-subscription", "u1")
    with pytest.raises(ValueError):
        app_jwt_claims(**ok, ttl=0)
    with pytest.raises(ValueError):
        app_jwt_claims(**ok, ttl=86401)
    with pytest.raises(ValueError):
        app_jwt_claims(**ok, bind={"model": "m"})
    with pytest.raises(ValueError):
        app_jwt_claims(**ok, bind={"/t": float("nan")})
    with pytest.raises(ValueError):
        bind_sha256_digest("\ud800")
    with pytest.raises(TypeError):
        bind_sha256_digest({1: "x"})
    with pytest.raises(ValueError):
        mint_app_jwt(ok["subscription_id"], "k", "-----BEGIN PRIVATE KEY-----", "HS256", "u1")
    with pytest.raises(ValueError):
        mint_app_jwt(ok["subscription_id"], "k", "-----BEGIN PUBLIC KEY-----", "EdDSA", "u1")
    with pytest.raises(ValueError):
        mint_app_jwt(ok["subscription_id"], "k", "s", "none", "u1")
