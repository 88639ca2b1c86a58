"""Tokens minted here against the running gateway (started by sdk/run-tests.sh)."""

import time

from tollgate_jwt import RawJson, mint_app_jwt, random_jti, select

CHAT = {"model": "mock-chat", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}


def test_a_minted_token_is_accepted_and_a_wrong_bind_refused(gateway):
    body = dict(CHAT)
    token = mint_app_jwt(
        gateway.subscription_id, gateway.kid, gateway.secret, "HS256", "end-user-py",
        bind=select(body, ["/model", "/max_tokens"]),
        bind_sha256={"/messages": body["messages"]},
        ttl=120, jti=random_jti(),
    )
    status, answer = gateway.request("POST", "/v1/chat/completions", body, token=token)
    assert status == 200, answer
    assert answer["object"] == "chat.completion"
    status, me = gateway.request("GET", "/v1/me", token=token)
    assert status == 200 and me["credential"]["type"] == "app_jwt", me

    wrong = mint_app_jwt(
        gateway.subscription_id, gateway.kid, gateway.secret, "HS256", "end-user-py",
        bind={"/model": "mock-chat", "/max_tokens": 4096}, ttl=120,
    )
    status, err = gateway.request("POST", "/v1/chat/completions", body, token=wrong)
    assert status == 403, err
    assert err["error"]["code"] == "AUTH_BINDING_MISMATCH"
    assert err["error"]["param"] == "/max_tokens"

    expired = mint_app_jwt(
        gateway.subscription_id, gateway.kid, gateway.secret, "HS256", "end-user-py",
        ttl=60, iat=int(time.time()) - 600,
    )
    status, err = gateway.request("POST", "/v1/chat/completions", body, token=expired)
    assert status == 401 and err["error"]["code"] == "AUTH_TOKEN_EXPIRED", err


def test_every_vector_request_gets_its_verdict(gateway, vectors):
    for v in vectors["tokens"]:
        if v["alg"] == "HS256":
            kid, key = gateway.kid, gateway.secret
        else:
            kid, key = gateway.upload_public_key(v["alg"], v["key"]["public_pem"]), v["key"]["private_pem"]
        m = v["mint"]
        for req in v["requests"]:
            token = mint_app_jwt(
                gateway.subscription_id, kid, key, v["alg"], m["sub"],
                bind=m.get("bind"),
                bind_sha256={p: RawJson(t) for p, t in m.get("bind_sha256_json", {}).items()},
                ttl=m["ttl"], jti=random_jti(),
            )
            status, answer = gateway.request("POST", "/v1/chat/completions", raw=req["body"], token=token)
            what = f"{v['name']} / {req['name']}: {answer}"
            assert status == req["verdict"]["status"], what
            if "code" in req["verdict"]:
                assert answer["error"]["code"] == req["verdict"]["code"], what
                assert answer["error"]["param"] == req["verdict"]["param"], what
