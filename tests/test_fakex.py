"""The fake X server must be honest: these tests sign requests with oauthlib's *client*
(independent of birdsentinel's signer) and check that the fake accepts exactly the
correctly signed ones and answers like X otherwise."""

import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import unicodedata
import urllib.error
import urllib.request
from urllib.parse import parse_qs

import pytest

pytest.importorskip("oauthlib")
from oauthlib.oauth1 import Client  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fakex import UNAUTHORIZED_BODY, FakeX, weighted_length, write_creds  # noqa: E402

CK, CS, AT, ATS = "ck-test", "cs-test-SECRET", "1-at-test", "ats-test-SECRET"
DM_PATH = "/2/dm_conversations/with/1001/messages"
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, OSError)


@pytest.fixture
def fx():
    with FakeX(users={"alice": "1001", "Bob_2": "1002"}) as server:
        yield server


def client(consumer_secret=CS, token=AT, token_secret=ATS, **kw):
    return Client(CK, consumer_secret, token, token_secret, **kw)


def sign(fx, method, path, body=None, cl=None):
    """Return (url, headers, data) for a request signed with oauthlib's client.
    JSON bodies are not part of the signature (RFC 5849 3.4.1.3.1)."""
    cl = cl or client()
    headers = {}
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode("utf-8")
    url, headers, _ = cl.sign(fx.base_url + path, http_method=method, headers=headers)
    return url, headers, data


def send(url, headers, data, method, timeout=5.0):
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def call(fx, method, path, body=None, cl=None, timeout=5.0):
    url, headers, data = sign(fx, method, path, body, cl)
    return send(url, headers, data, method, timeout)


def dm(fx, text="disk full on web-1", cl=None, to="1001"):
    return call(fx, "POST", "/2/dm_conversations/with/%s/messages" % to, {"text": text}, cl)


# --- signature verification -------------------------------------------------

def test_correctly_signed_dm_is_accepted_and_recorded(fx):
    status, headers, body = dm(fx, "disk full on web-1")
    assert status == 201
    data = json.loads(body)["data"]
    assert data["dm_conversation_id"] == "999-1001"
    assert data["dm_event_id"].isdigit()
    assert headers["content-type"] == "application/json"
    for h in ("x-rate-limit-limit", "x-rate-limit-remaining", "x-rate-limit-reset"):
        assert headers[h].isdigit()
    assert [(d["to"], d["text"]) for d in fx.dms] == [("1001", "disk full on web-1")]
    rec = fx.requests[-1]
    assert rec["signature_ok"] and rec["status"] == 201 and rec["method"] == "POST"
    assert rec["path"] == DM_PATH and rec["headers"]["authorization"].startswith("OAuth ")
    assert json.loads(rec["body"]) == {"text": "disk full on web-1"}


def test_wrong_consumer_secret_is_401_and_not_recorded(fx):
    status, headers, body = dm(fx, cl=client(consumer_secret="cs-test-WRONG"))
    assert status == 401
    assert json.loads(body) == UNAUTHORIZED_BODY
    assert headers["content-type"] == "application/json"
    assert fx.dms == []
    assert fx.requests[-1]["signature_ok"] is False
    assert fx.requests[-1]["auth_error"] == "bad signature"


def test_wrong_token_secret_is_401(fx):
    status, _, body = dm(fx, cl=client(token_secret="ats-test-WRONG"))
    assert status == 401 and json.loads(body) == UNAUTHORIZED_BODY
    assert fx.dms == []


def test_unknown_consumer_or_token_and_unsigned_are_401(fx):
    assert call(fx, "GET", "/2/users/me", cl=Client("ck-other", CS, AT, ATS))[0] == 401
    assert call(fx, "GET", "/2/users/me", cl=client(token="1-at-other"))[0] == 401
    status, _, body = send(fx.base_url + "/2/users/me", {}, None, "GET")
    assert status == 401 and json.loads(body) == UNAUTHORIZED_BODY
    assert fx.requests[-1]["auth_error"] == "no OAuth parameters"


def test_replayed_nonce_is_401(fx):
    url, headers, data = sign(fx, "POST", DM_PATH, {"text": "once"})
    assert send(url, headers, data, "POST")[0] == 201
    status, _, body = send(url, headers, data, "POST")
    assert status == 401 and json.loads(body) == UNAUTHORIZED_BODY
    assert fx.requests[-1]["auth_error"] == "replayed nonce"
    assert len(fx.dms) == 1


def test_concurrent_replays_accept_exactly_one(fx):
    import threading
    url, headers, data = sign(fx, "POST", DM_PATH, {"text": "race"})
    results = []
    threads = [threading.Thread(target=lambda: results.append(send(url, headers, data, "POST")[0]))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [201, 401, 401, 401, 401, 401]
    assert len(fx.dms) == 1


def test_stale_timestamp_is_401(fx):
    status, _, _ = call(fx, "GET", "/2/users/me", cl=client(timestamp=str(int(time.time()) - 3600)))
    assert status == 401


def test_tampered_path_or_query_is_401(fx):
    url, headers, _ = sign(fx, "GET", "/2/users/by/username/alice")
    assert send(url.replace("alice", "Bob_2"), headers, None, "GET")[0] == 401
    url, headers, _ = sign(fx, "GET", "/2/users/by?usernames=alice")
    assert send(url.replace("alice", "Bob_2"), headers, None, "GET")[0] == 401
    assert send(url, headers, None, "GET")[0] == 200


def test_json_body_is_not_signed_but_method_is(fx):
    # Same signature, different JSON text: accepted (RFC 5849 excludes JSON bodies) ...
    url, headers, _ = sign(fx, "POST", DM_PATH, {"text": "a"})
    assert send(url, headers, json.dumps({"text": "b"}).encode(), "POST")[0] == 201
    assert fx.dms[-1]["text"] == "b"
    # ... but a signature for GET does not authorize a POST.
    url, headers, _ = sign(fx, "GET", DM_PATH)
    headers["Content-Type"] = "application/json"
    assert send(url, headers, b'{"text":"c"}', "POST")[0] == 401


def test_revoked_token_is_401(fx):
    assert call(fx, "GET", "/2/users/me")[0] == 200
    fx.revoke(AT)
    assert call(fx, "GET", "/2/users/me")[0] == 401


# --- PIN flow -----------------------------------------------------------------

def _request_token(fx, in_query=False):
    if in_query:  # the official X sample puts oauth_callback in the URL
        cl = Client(CK, CS)
        url, headers, _ = cl.sign(fx.base_url + "/oauth/request_token?oauth_callback=oob", http_method="POST")
    else:
        url, headers, _ = Client(CK, CS, callback_uri="oob").sign(fx.base_url + "/oauth/request_token",
                                                                   http_method="POST")
    status, rh, body = send(url, headers, b"", "POST")
    assert status == 200, body
    assert rh["content-type"].startswith("text/html")  # X's quirk
    form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
    assert form["oauth_callback_confirmed"] == "true"
    return form["oauth_token"], form["oauth_token_secret"]


def _access_token(fx, rtoken, rsecret, pin, in_query=False):
    if in_query:
        cl = Client(CK, CS, rtoken, rsecret)
        url, headers, _ = cl.sign(fx.base_url + "/oauth/access_token?oauth_verifier=" + pin, http_method="POST")
    else:
        url, headers, _ = Client(CK, CS, rtoken, rsecret, verifier=pin).sign(
            fx.base_url + "/oauth/access_token", http_method="POST")
    return send(url, headers, b"", "POST")


@pytest.mark.parametrize("in_query", [False, True], ids=["header-params", "query-params"])
def test_pin_flow_end_to_end(fx, in_query):
    rtoken, rsecret = _request_token(fx, in_query)
    page = send(fx.base_url + "/oauth/authorize?oauth_token=" + rtoken, {}, None, "GET")
    assert page[0] == 200 and fx.pin.encode() in page[2]

    status, _, _ = _access_token(fx, rtoken, rsecret, "7654321", in_query)
    assert status == 401
    status, _, _ = _access_token(fx, rtoken, "wrong-secret", fx.pin, in_query)
    assert status == 401

    status, rh, body = _access_token(fx, rtoken, rsecret, fx.pin, in_query)
    assert status == 200, body
    assert rh["content-type"].startswith("text/html")
    assert list(parse_qs(body.decode())) == ["oauth_token", "oauth_token_secret", "user_id", "screen_name"]
    form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
    assert (form["user_id"], form["screen_name"]) == fx.me

    # The new pair works; the request token (and so the PIN) is single-use.
    me = call(fx, "GET", "/2/users/me", cl=client(token=form["oauth_token"], token_secret=form["oauth_token_secret"]))
    assert me[0] == 200 and json.loads(me[2])["data"]["username"] == "sentinel_bot"
    assert _access_token(fx, rtoken, rsecret, fx.pin, in_query)[0] == 401


def test_request_token_needs_right_consumer_secret(fx):
    url, headers, _ = Client(CK, "nope", callback_uri="oob").sign(fx.base_url + "/oauth/request_token",
                                                                  http_method="POST")
    assert send(url, headers, b"", "POST")[0] == 401


# --- fault injection -------------------------------------------------------------

def test_injected_429_is_returned_then_service_resumes(fx):
    fx.inject(status=429, headers={"x-rate-limit-remaining": "0", "x-rate-limit-reset": "1700000000"})
    status, headers, body = dm(fx, "first")
    assert status == 429
    assert headers["x-rate-limit-reset"] == "1700000000" and headers["x-rate-limit-remaining"] == "0"
    assert json.loads(body)["status"] == 429
    assert fx.dms == []
    assert dm(fx, "second")[0] == 201
    assert [d["text"] for d in fx.dms] == ["second"]


def test_faults_apply_only_after_signature_check_and_to_matching_paths(fx):
    fx.inject(status=503, count=2, path_prefix="/2/dm_conversations")
    assert dm(fx, cl=client(consumer_secret="bad"))[0] == 401  # does not consume the fault
    assert call(fx, "GET", "/2/users/me")[0] == 200            # other path untouched
    assert dm(fx)[0] == 503
    assert dm(fx)[0] == 503
    assert dm(fx)[0] == 201


def test_drop_closes_the_connection(fx):
    fx.inject(drop=True)
    with pytest.raises(NETWORK_ERRORS):
        dm(fx)
    assert fx.dms == []
    assert dm(fx)[0] == 201


def test_hang_never_answers(fx):
    fx.inject(hang=True)
    t0 = time.monotonic()
    with pytest.raises(NETWORK_ERRORS):
        call(fx, "GET", "/2/users/me", timeout=0.3)
    assert time.monotonic() - t0 < 3
    assert call(fx, "GET", "/2/users/me")[0] == 200


def test_delay_then_normal_answer(fx):
    fx.inject(delay=0.2)
    t0 = time.monotonic()
    assert dm(fx)[0] == 201
    assert time.monotonic() - t0 >= 0.2


def test_rate_headers_override_and_dm_refusers(fx):
    fx.rate_headers = {"x-rate-limit-remaining": "0", "x-rate-limit-reset": "42"}
    status, headers, _ = dm(fx)
    assert status == 201 and headers["x-rate-limit-remaining"] == "0" and headers["x-rate-limit-reset"] == "42"
    fx.dm_refusers.add("1002")
    status, _, body = dm(fx, to="1002")
    assert status == 403 and json.loads(body)["detail"] == "You cannot send messages to this user."
    assert [d["to"] for d in fx.dms] == ["1001"]


# --- application behaviour -------------------------------------------------------

def test_users_me_and_lookup(fx):
    status, headers, body = call(fx, "GET", "/2/users/me")
    assert status == 200 and headers["x-access-level"] == "read-write-directmessages"
    assert json.loads(body) == {"data": {"id": "999", "name": "sentinel_bot", "username": "sentinel_bot"}}
    assert json.loads(call(fx, "GET", "/2/users/by/username/ALICE")[2])["data"]["id"] == "1001"
    missing = json.loads(call(fx, "GET", "/2/users/by/username/nobody")[2])
    assert "data" not in missing and missing["errors"][0]["detail"] == "Could not find user with username: [nobody]."
    status, _, body = call(fx, "GET", "/2/users/by/username/bad-handle")
    assert status == 400 and json.loads(body)["type"].endswith("/invalid-request")
    assert call(fx, "GET", "/2/nothing/here")[0] == 404


def test_dm_text_limits(fx):
    assert dm(fx, "")[0] == 400
    assert dm(fx, "x" * 10001)[0] == 400
    assert dm(fx, "x" * 10000)[0] == 201
    assert len(fx.dms) == 1


def test_access_level_without_dm_permission(fx):
    fx.access_level = "read-write"
    status, headers, _ = dm(fx)
    assert status == 403 and headers["x-access-level"] == "read-write"
    assert fx.dms == []


def post(fx, text):
    return call(fx, "POST", "/2/tweets", {"text": text})


def test_duplicate_post_is_403(fx):
    status, _, body = post(fx, "alert #1")
    assert status == 201 and json.loads(body)["data"]["text"] == "alert #1"
    status, _, body = post(fx, "alert #1")
    assert status == 403
    assert json.loads(body) == {"detail": "You are not allowed to create a Tweet with duplicate content.",
                                "type": "about:blank", "title": "Forbidden", "status": 403}
    assert [t["text"] for t in fx.tweets] == ["alert #1"]


def test_too_long_post_is_400(fx):
    assert post(fx, "\u6f22" * 140)[0] == 201
    status, _, body = post(fx, "\u5b57" * 141)
    assert status == 400 and "Your Tweet text is too long." in json.loads(body)["detail"]
    url = "https://example.com/" + "p" * 200  # 220 characters, counts 23
    assert post(fx, "a" * 256 + " " + url)[0] == 201   # 256 + 1 + 23 = 280
    assert post(fx, "b" * 257 + " " + url)[0] == 400   # 281
    assert len(fx.tweets) == 2


@pytest.mark.parametrize("text,expected", [
    ("This is a test.", 15),
    ("http://test.com", 23),
    ("test.com", 23),
    ("Test https://test.com test https://test.com test.com test", 86),
    ("randomurlrandomurlrandomurlrandomurlrandomurlrandomurlrandomurls.com", 68),  # 64-char label
    ("\u00c1B", 2),
    ("A\ufb2c", 4),  # NFC expands to 3 code points
    ("H\U0001f431\u263a\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466", 7),
    ("\U0001f64b\U0001f3fd\U0001f468\u200d\U0001f3a4", 4),
    ("Unicode 10.0 emoji: \U0001f92a; \U0001f9d5; \U0001f9d5\U0001f3fe; "
     "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f", 34),
    ("\u2066\u202ahttp://foobar.\u067e\u0627\u06a9\u0633\u062a\u0627\u0646/\u202c\u2069", 31),
    ("https://www.twitter.com/aloha " * 10, 240),
    ("app.py crashed", 14),        # name.ccTLD without a path is not a URL
    ("see foo.co now", 4 + 23 + 4),
    ("http://127.0.0.1:8080/status", 28),  # IP addresses are not URLs to twitter-text
    ("\u26a0\ufe0f disk 95%", 11),
])
def test_weighted_length_conformance(text, expected):
    # Values from twitter-text's conformance/validate.yml (v3 config) plus a few of ours.
    assert weighted_length(text) == expected


def _reference_weight(text):
    total = 0
    for ch in unicodedata.normalize("NFC", text):
        cp = ord(ch)
        light = cp <= 4351 or 8192 <= cp <= 8205 or 8208 <= cp <= 8223 or 8242 <= cp <= 8247
        total += 1 if light else 2
    return total


def test_weighted_length_properties():
    hyp = pytest.importorskip("hypothesis")
    st = hyp.strategies
    # No dots (so no URLs) and none of the code points that join emoji into one cluster.
    joiners = "\u200d\ufe0f\u20e3" + "".join(chr(c) for c in range(0x1f1e6, 0x1f200)) + \
        "".join(chr(c) for c in range(0x1f3fb, 0x1f400))
    plain = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="." + joiners), max_size=60)

    @hyp.settings(max_examples=80, deadline=None, derandomize=True)
    @hyp.given(plain, plain)
    def check(a, b):
        assert weighted_length(a) == _reference_weight(a)
        url = "https://example.com/x"
        assert weighted_length(a + " " + url + " " + b) == _reference_weight(a + "  " + b) + 23

    check()


# --- helpers ------------------------------------------------------------------------

def test_write_creds(tmp_path):
    d = tmp_path / "creds"
    write_creds(str(d), "k", "s", "t", "ts")
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for name, value in (("consumer-key", "k"), ("consumer-secret", "s"), ("access-token", "t"),
                        ("access-token-secret", "ts")):
        assert (d / name).read_text() == value + "\n"
        assert stat.S_IMODE(os.stat(d / name).st_mode) == 0o600
    write_creds(str(d), "k", "s", "t", "ts", mode=0o644)
    assert stat.S_IMODE(os.stat(d / "consumer-secret").st_mode) == 0o644


def test_wait_for(fx):
    assert fx.wait_for(lambda: True, timeout=0.1)
    assert not fx.wait_for(lambda: len(fx.dms) > 0, timeout=0.05)


def test_standalone_mode(tmp_path):
    here = os.path.dirname(os.path.abspath(__file__))
    creds = tmp_path / "creds"
    proc = subprocess.Popen([sys.executable, os.path.join(here, "fakex.py"), "--creds-dir", str(creds),
                             "--user", "alice=1001"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY http://127.0.0.1:")
        base = line.split()[1]
        assert (creds / "consumer-key").read_text() == "ck-test\n"
        cl = Client(*[(creds / n).read_text().strip() for n in
                      ("consumer-key", "consumer-secret", "access-token", "access-token-secret")])
        url, headers, _ = cl.sign(base + DM_PATH, http_method="POST", headers={"Content-Type": "application/json"})
        t0 = time.time()
        assert send(url, headers, b'{"text":"from bench"}', "POST")[0] == 201
        event = json.loads(proc.stdout.readline())
        assert event["event"] == "dm" and event["to"] == "1001" and event["text"] == "from bench"
        assert abs(event["t"] - t0) < 5
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=5)
        proc.stdout.close()
    assert rc == 0
