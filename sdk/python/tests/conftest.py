import json
import os
import pathlib
import urllib.error
import urllib.request

import pytest

VECTORS = pathlib.Path(__file__).resolve().parents[2] / "test-vectors" / "app-jwt.json"


@pytest.fixture(scope="session")
def vectors():
    return json.loads(VECTORS.read_text(encoding="utf-8"))


class Gateway:
    """A running gateway prepared by sdk/run-tests.sh: a subscription with an HS256 credential,
    and the owner key to add more credentials."""

    def __init__(self, env):
        self.base = env["TOLLGATE_TEST_URL"].rstrip("/")
        self.subscription_id = env["TOLLGATE_TEST_SUBSCRIPTION"]
        self.kid = env["TOLLGATE_TEST_KID"]
        self.secret = env["TOLLGATE_TEST_SECRET"]
        self.owner_key = env["TOLLGATE_TEST_OWNER_KEY"]

    def request(self, method, path, body=None, token=None, raw=None):
        data = raw.encode("utf-8") if raw is not None else (
            json.dumps(body).encode("utf-8") if body is not None else None
        )
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", "Bearer " + token)
        try:
            with urllib.request.urlopen(req, timeout=30) as res:
                return res.status, json.loads(res.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def upload_public_key(self, alg, pem):
        status, body = self.request(
            "POST",
            f"/v1/subscriptions/{self.subscription_id}/credentials",
            {"type": "jwt_public_key", "alg": alg, "public_key": pem},
            token=self.owner_key,
        )
        assert status == 201, body
        return body["kid"]


@pytest.fixture(scope="session")
def gateway():
    needed = ["TOLLGATE_TEST_URL", "TOLLGATE_TEST_SUBSCRIPTION", "TOLLGATE_TEST_KID",
              "TOLLGATE_TEST_SECRET", "TOLLGATE_TEST_OWNER_KEY"]
    if not all(os.environ.get(n) for n in needed):
        if os.environ.get("TOLLGATE_TEST_REQUIRE_GATEWAY") == "1":
            pytest.fail("TOLLGATE_TEST_* are not set but a gateway is required")
        pytest.skip("no running gateway (sdk/run-tests.sh starts one)")
    return Gateway(os.environ)
