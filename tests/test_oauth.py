"""OAuth 1.0a HMAC-SHA1 signer: known answers and a property test against oauthlib.

Vector sources (all recomputed in ../shared/docs/x-api-facts.md, sections 6a, 6b):
- RFC 5849 section 1.2 (https://www.rfc-editor.org/rfc/rfc5849#section-1.2):
  the three steps of the photo-printing flow, which omit oauth_version.
- RFC 5849 section 3.4.1.1 / 3.4.1.2 / 3.4.1.3.2: base string, base string
  URI and normalized parameters examples (no secrets, so no signature).
- X "Creating a signature" (docs.x.com fundamentals/authentication/oauth-1-0a/
  creating-a-signature; the legacy developer.twitter.com copy uses
  api.twitter.com): POST /1.1/statuses/update.json?include_entities=true
  with a form body.
"""

import json
import urllib.parse
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oauthlib.oauth1 import Client as OAuthClient
from oauthlib.oauth1 import RequestValidator, ResourceEndpoint

import birdsentinel as bs
from fakes import FakeOpener


def parse_auth_header(header):
    """'OAuth k="v", ...' -> {k: v} with values percent-decoded."""
    assert header.startswith("OAuth ")
    out = {}
    for item in header[len("OAuth "):].split(", "):
        key, _, value = item.partition("=")
        assert value.startswith('"') and value.endswith('"'), item
        k = urllib.parse.unquote(key)
        assert k not in out, "duplicate %s in header" % k
        out[k] = urllib.parse.unquote(value[1:-1])
    return out


# ---------------------------------------------------------------------------
# RFC 5849 section 1.2 -- client dpf43f3p2l4k3l03 / kd94hf93k423kf44, no oauth_version
# ---------------------------------------------------------------------------

RFC_CK, RFC_CS = "dpf43f3p2l4k3l03", "kd94hf93k423kf44"


def test_rfc5849_1_2_initiate_step():
    h = bs.sign_request("POST", "https://photos.example.net/initiate", RFC_CK, RFC_CS,
                        nonce="wIjqoS", timestamp="137131200", version=None,
                        extra_oauth=[("oauth_callback", "http://printer.example.com/ready")])
    p = parse_auth_header(h)
    assert p["oauth_signature"] == "74KNZJeDHnMBp0EMJ9ZHt/XKycU="
    assert p["oauth_callback"] == "http://printer.example.com/ready"
    assert "oauth_token" not in p and "oauth_version" not in p


def test_rfc5849_1_2_token_step():
    h = bs.sign_request("POST", "https://photos.example.net/token", RFC_CK, RFC_CS,
                        "hh5s93j4hdidpola", "hdhd0244k9j7ao03",
                        nonce="walatlh", timestamp="137131201", version=None,
                        extra_oauth=[("oauth_verifier", "hfdp7dh39dks9884")])
    p = parse_auth_header(h)
    assert p["oauth_signature"] == "gKgrFCywp7rO0OXSjdot/IHF7IU="
    assert p["oauth_verifier"] == "hfdp7dh39dks9884"
    assert p["oauth_token"] == "hh5s93j4hdidpola"


def test_rfc5849_1_2_resource_step_signature_and_base_string():
    url = "http://photos.example.net/photos?file=vacation.jpg&size=original"
    h = bs.sign_request("GET", url, RFC_CK, RFC_CS, "nnch734d00sl2jdk", "pfkkdhi9sl3r4s00",
                        nonce="chapoH", timestamp="137131202", version=None)
    assert parse_auth_header(h)["oauth_signature"] == "MdpQcU8iPSUjWoN/UDMsK2sui9I="
    # the base string the facts file (6b) gives for that request
    oauth = [("oauth_consumer_key", RFC_CK), ("oauth_nonce", "chapoH"),
             ("oauth_signature_method", "HMAC-SHA1"), ("oauth_timestamp", "137131202"),
             ("oauth_token", "nnch734d00sl2jdk")]
    base = bs.signature_base_string("GET", bs.base_string_uri(url),
                                    bs.normalize_parameters(bs.request_parameters(url, oauth)))
    assert base == ("GET&http%3A%2F%2Fphotos.example.net%2Fphotos&file%3Dvacation.jpg%26"
                    "oauth_consumer_key%3Ddpf43f3p2l4k3l03%26oauth_nonce%3DchapoH%26"
                    "oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D137131202%26"
                    "oauth_token%3Dnnch734d00sl2jdk%26size%3Doriginal")
    assert bs.hmac_sha1_signature(base, RFC_CS, "pfkkdhi9sl3r4s00") == "MdpQcU8iPSUjWoN/UDMsK2sui9I="


def test_rfc5849_1_2_with_oauth_version_differs():
    """The RFC vector holds only without oauth_version (the default adds 1.0)."""
    url = "http://photos.example.net/photos?file=vacation.jpg&size=original"
    h = bs.sign_request("GET", url, RFC_CK, RFC_CS, "nnch734d00sl2jdk", "pfkkdhi9sl3r4s00",
                        nonce="chapoH", timestamp="137131202")
    p = parse_auth_header(h)
    assert p["oauth_version"] == "1.0"
    assert p["oauth_signature"] != "MdpQcU8iPSUjWoN/UDMsK2sui9I="


# ---------------------------------------------------------------------------
# X "Creating a signature" worked example
# ---------------------------------------------------------------------------

X_CK = "xvz1evFS4wEEPTGEFPHBog"
X_CS = "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw"
X_TOK = "370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb"
X_TS = "LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE"
X_NONCE = "kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg"
X_TIME = "1318622958"
X_BODY = "status=Hello%20Ladies%20%2b%20Gentlemen%2c%20a%20signed%20OAuth%20request%21"
X_BASE_X = (
    "POST&https%3A%2F%2Fapi.x.com%2F1.1%2Fstatuses%2Fupdate.json&include_entities%3Dtrue%26"
    "oauth_consumer_key%3Dxvz1evFS4wEEPTGEFPHBog%26oauth_nonce%3DkYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg%26"
    "oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D1318622958%26"
    "oauth_token%3D370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb%26oauth_version%3D1.0%26"
    "status%3DHello%2520Ladies%2520%252B%2520Gentlemen%252C%2520a%2520signed%2520OAuth%2520request%2521")
X_OAUTH = [("oauth_consumer_key", X_CK), ("oauth_nonce", X_NONCE), ("oauth_signature_method", "HMAC-SHA1"),
           ("oauth_timestamp", X_TIME), ("oauth_token", X_TOK), ("oauth_version", "1.0")]


def x_sign(host):
    return bs.sign_request("POST", "https://%s/1.1/statuses/update.json?include_entities=true" % host,
                           X_CK, X_CS, X_TOK, X_TS, nonce=X_NONCE, timestamp=X_TIME, form_body=X_BODY)


def test_x_example_api_twitter_com():
    """Legacy developer.twitter.com value (api.twitter.com host)."""
    assert parse_auth_header(x_sign("api.twitter.com"))["oauth_signature"] == "hCtSmYh+iHYCEqBWrE7C7hYmtUk="


def test_x_example_api_x_com():
    """Current docs.x.com value (api.x.com host): the host is part of the base string."""
    assert parse_auth_header(x_sign("api.x.com"))["oauth_signature"] == "Ls93hJiZbQ3akF3HF3x1Bz8/zU4="


def test_x_example_base_strings_exact():
    for host in ("api.x.com", "api.twitter.com"):
        url = "https://%s/1.1/statuses/update.json?include_entities=true" % host
        params = bs.request_parameters(url, X_OAUTH, X_BODY)
        base = bs.signature_base_string("POST", bs.base_string_uri(url), bs.normalize_parameters(params))
        assert base == X_BASE_X.replace("api.x.com", host)
        assert base.count("&") == 2
    assert bs.hmac_sha1_signature(X_BASE_X, X_CS, X_TS) == "Ls93hJiZbQ3akF3HF3x1Bz8/zU4="
    assert (bs.hmac_sha1_signature(X_BASE_X.replace("api.x.com", "api.twitter.com"), X_CS, X_TS)
            == "hCtSmYh+iHYCEqBWrE7C7hYmtUk=")


def test_x_example_authorization_header_exact():
    """The header derived in the facts file (6a): sorted, key="enc(value)", joined by ', '."""
    assert x_sign("api.x.com") == (
        'OAuth oauth_consumer_key="xvz1evFS4wEEPTGEFPHBog", '
        'oauth_nonce="kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg", '
        'oauth_signature="Ls93hJiZbQ3akF3HF3x1Bz8%2FzU4%3D", oauth_signature_method="HMAC-SHA1", '
        'oauth_timestamp="1318622958", oauth_token="370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb", '
        'oauth_version="1.0"')


def test_x_example_body_params_not_in_header():
    p = parse_auth_header(x_sign("api.x.com"))
    assert set(p) == {k for k, _ in X_OAUTH} | {"oauth_signature"}


# ---------------------------------------------------------------------------
# RFC 5849 section 3.4.1 building blocks
# ---------------------------------------------------------------------------

RFC341_OAUTH = [("realm", "Example"), ("oauth_consumer_key", "9djdj82h48djs9d2"),
                ("oauth_token", "kkk9d7dh3k39sjv7"), ("oauth_signature_method", "HMAC-SHA1"),
                ("oauth_timestamp", "137131201"), ("oauth_nonce", "7d8f3e4a"),
                ("oauth_signature", "bYT5CMsGcbgUdFHObYMEfcx6bsw%3D")]
RFC341_URL = "http://example.com/request?b5=%3D%253D&a3=a&c%40=&a2=r%20b"
RFC341_BODY = "c2&a3=2+q"


def test_rfc5849_3_4_1_3_2_normalized_parameters():
    """Duplicate keys (a3 twice), '+' as space, empty values (c2, c@), double encoding (b5);
    realm and oauth_signature are excluded."""
    params = bs.request_parameters(RFC341_URL, RFC341_OAUTH, RFC341_BODY)
    assert ("realm", "Example") not in params
    assert all(k != "oauth_signature" for k, _ in params)
    assert bs.normalize_parameters(params) == (
        "a2=r%20b&a3=2%20q&a3=a&b5=%3D%253D&c%40=&c2=&oauth_consumer_key=9djdj82h48djs9d2"
        "&oauth_nonce=7d8f3e4a&oauth_signature_method=HMAC-SHA1&oauth_timestamp=137131201"
        "&oauth_token=kkk9d7dh3k39sjv7")


def test_rfc5849_3_4_1_1_base_string():
    params = bs.request_parameters(RFC341_URL, RFC341_OAUTH, RFC341_BODY)
    base = bs.signature_base_string("post", bs.base_string_uri(RFC341_URL), bs.normalize_parameters(params))
    assert base == (
        "POST&http%3A%2F%2Fexample.com%2Frequest&a2%3Dr%2520b%26a3%3D2%2520q%26a3%3Da%26"
        "b5%3D%253D%25253D%26c%2540%3D%26c2%3D%26oauth_consumer_key%3D9djdj82h48djs9d2%26"
        "oauth_nonce%3D7d8f3e4a%26oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D137131201%26"
        "oauth_token%3Dkkk9d7dh3k39sjv7")


def test_duplicate_keys_sorted_by_value():
    assert bs.normalize_parameters([("a", "z"), ("a", "b"), ("A", "c")]) == "A=c&a=b&a=z"


@pytest.mark.parametrize("raw, enc", [
    ("Ladies + Gentlemen", "Ladies%20%2B%20Gentlemen"),
    ("An encoded string!", "An%20encoded%20string%21"),
    ("Dogs, Cats & Mice", "Dogs%2C%20Cats%20%26%20Mice"),
    ("\u2603", "%E2%98%83"),
    ("AZaz09-._~", "AZaz09-._~"),
    ("*'()/:@%", "%2A%27%28%29%2F%3A%40%25"),
    ("\u00e9\U0001F600", "%C3%A9%F0%9F%98%80"),
    ("", ""),
])
def test_percent_encode_table(raw, enc):
    """X's table (facts 6a) and RFC 5849 3.6: only unreserved left, upper-case hex, UTF-8."""
    assert bs.percent_encode(raw) == enc


@pytest.mark.parametrize("url, expected", [
    ("http://EXAMPLE.COM:80/r%20v/X?id=123", "http://example.com/r%20v/X"),       # RFC 3.4.1.2
    ("https://www.example.net:8080/?q=1", "https://www.example.net:8080/"),        # RFC 3.4.1.2
    ("HTTPS://Api.X.com:443/2/Tweets#frag", "https://api.x.com/2/Tweets"),         # path keeps its case
    ("http://example.com:443/", "http://example.com:443/"),                        # not the default for http
    ("https://example.com:80/a", "https://example.com:80/a"),
    ("http://example.com", "http://example.com/"),
    ("http://127.0.0.1:8080/2/users/me", "http://127.0.0.1:8080/2/users/me"),
])
def test_base_string_uri(url, expected):
    assert bs.base_string_uri(url) == expected


def test_signing_key_encodes_both_secrets():
    import base64
    import hashlib
    import hmac
    key = b"a%26b%20c&%E2%98%83%2B"
    want = base64.b64encode(hmac.new(key, b"BASE", hashlib.sha1).digest()).decode()
    assert bs.hmac_sha1_signature("BASE", "a&b c", "\u2603+") == want
    # request_token step: empty token secret -> key ends in '&'
    want2 = base64.b64encode(hmac.new(b"cs&", b"BASE", hashlib.sha1).digest()).decode()
    assert bs.hmac_sha1_signature("BASE", "cs") == want2


def test_json_body_never_changes_the_signature():
    """RFC 5849 3.4.1.3.1: only form bodies are parameters; X v2 sends JSON."""
    opener = FakeOpener(default=(201, b"{}"))

    client = bs.XClient(bs.Credentials("ck", "cs", "tok", "ts"), "https://api.x.com", opener=opener,
                        clock=lambda: 1700000000.0, nonce=lambda: "fixednonce")
    client.call("POST", "/2/tweets", json_body={"text": "one"})
    client.call("POST", "/2/tweets", json_body={"text": "two", "status": "x=y&oauth_token=z"})
    client.call("POST", "/2/tweets", json_body={"text": "a=b&c=d"})
    seen = [c["req"] for c in opener.calls]
    hdrs = [r.get_header("Authorization") for r in seen]
    assert hdrs[0] == hdrs[1] == hdrs[2]
    assert hdrs[0] == bs.sign_request("POST", "https://api.x.com/2/tweets", "ck", "cs", "tok", "ts",
                                      nonce="fixednonce", timestamp="1700000000")
    assert all(r.get_header("Content-type") == "application/json" for r in seen)
    assert json.loads(seen[2].data.decode()) == {"text": "a=b&c=d"}
    # while a form body does take part
    assert bs.sign_request("POST", "https://api.x.com/2/tweets", "ck", "cs", "tok", "ts",
                           nonce="fixednonce", timestamp="1700000000", form_body="a=b") != hdrs[0]


# ---------------------------------------------------------------------------
# Property: our header == oauthlib's Client, and oauthlib's server accepts ours
# ---------------------------------------------------------------------------

class _Validator(RequestValidator):
    """Minimal server side: one consumer and one token, shapes unrestricted."""

    enforce_ssl = False
    dummy_client = "dummy"
    dummy_access_token = "dummy"

    def __init__(self, ck, cs, tok, ts):
        super().__init__()
        self.ck, self.cs, self.tok, self.ts = ck, cs, tok, ts

    allowed_signature_methods = ("HMAC-SHA1",)
    timestamp_lifetime = 10 ** 11

    def check_client_key(self, k):
        return True

    def check_access_token(self, t):
        return True

    def check_nonce(self, n):
        return True

    def check_realms(self, r):
        return True

    def validate_client_key(self, k, request):
        return k == self.ck

    def validate_access_token(self, k, t, request):
        return k == self.ck and t == self.tok

    def get_client_secret(self, k, request):
        return self.cs

    def get_access_token_secret(self, k, t, request):
        return self.ts

    def validate_timestamp_and_nonce(self, *a, **kw):
        return True

    def validate_realms(self, *a, **kw):
        return True


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
_maybe_empty = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
_qkey = _text.filter(lambda k: not k.startswith("oauth_"))
_nonce = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=8, max_size=32)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ck=_text, cs=_maybe_empty, tok=_text, ts=_maybe_empty,
       query=st.lists(st.tuples(_qkey, _maybe_empty), max_size=4),
       path=st.lists(_text, max_size=3),
       method=st.sampled_from(["GET", "POST", "DELETE"]),
       host=st.sampled_from(["https://api.x.com", "http://127.0.0.1:8080", "https://API.Example.COM:443"]),
       nonce=_nonce, timestamp=st.integers(min_value=10 ** 9, max_value=10 ** 10 - 1))
def test_property_matches_oauthlib_client_and_server(ck, cs, tok, ts, query, path, method, host, nonce,
                                                     timestamp):
    url = host + "/" + "/".join(urllib.parse.quote(p, safe="") for p in path)
    if query:
        url += "?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
    ours = bs.sign_request(method, url, ck, cs, tok, ts, nonce=nonce, timestamp=str(timestamp))
    theirs = OAuthClient(ck, client_secret=cs, resource_owner_key=tok, resource_owner_secret=ts,
                         nonce=nonce, timestamp=str(timestamp)).sign(url, method)[1]["Authorization"]
    assert parse_auth_header(ours) == parse_auth_header(theirs)

    endpoint = ResourceEndpoint(_Validator(ck, cs, tok, ts))
    ok, _req = endpoint.validate_protected_resource_request(url, http_method=method, body=None,
                                                            headers={"Authorization": ours})
    assert ok
    # a wrong secret is refused by the same server
    bad = bs.sign_request(method, url, ck, cs + "x", tok, ts, nonce=nonce, timestamp=str(timestamp))
    ok, _req = endpoint.validate_protected_resource_request(url, http_method=method, body=None,
                                                            headers={"Authorization": bad})
    assert not ok


@settings(max_examples=50, deadline=None)
@given(ck=_text, cs=_maybe_empty, verifier=_text, callback=st.sampled_from(["oob", "http://printer.example.com/ready"]),
       tok=_text, ts=_maybe_empty, nonce=_nonce)
def test_property_callback_and_verifier_match_oauthlib(ck, cs, verifier, callback, tok, ts, nonce):
    ours = bs.sign_request("POST", "https://api.x.com/oauth/request_token", ck, cs, nonce=nonce,
                           timestamp="1700000000", extra_oauth=[("oauth_callback", callback)])
    theirs = OAuthClient(ck, client_secret=cs, callback_uri=callback, nonce=nonce,
                         timestamp="1700000000").sign("https://api.x.com/oauth/request_token", "POST")[1]
    assert parse_auth_header(ours) == parse_auth_header(theirs["Authorization"])
    ours = bs.sign_request("POST", "https://api.x.com/oauth/access_token", ck, cs, tok, ts, nonce=nonce,
                           timestamp="1700000000", extra_oauth=[("oauth_verifier", verifier)])
    theirs = OAuthClient(ck, client_secret=cs, resource_owner_key=tok, resource_owner_secret=ts,
                         verifier=verifier, nonce=nonce,
                         timestamp="1700000000").sign("https://api.x.com/oauth/access_token", "POST")[1]
    assert parse_auth_header(ours) == parse_auth_header(theirs["Authorization"])


def test_xclient_request_accepted_by_fakex():
    """A request our XClient builds, sent through urllib to the fake server
    (oauthlib's ResourceEndpoint), is accepted; the same with a wrong secret is a 401."""
    from fakex import FakeX
    fx = FakeX(consumer_key="ck-key", consumer_secret="cs &+/\u2603", access_token="7-tok",
               access_token_secret="ts=?%", users={"alice": "1001"}).start()
    try:
        good = bs.XClient(bs.Credentials("ck-key", "cs &+/\u2603", "7-tok", "ts=?%"), fx.base_url)
        assert good.user("@alice").json()["data"]["id"] == "1001"
        r = good.send_dm("1001", "hello & = + \u2603")
        assert r.status == 201, r.body
        assert fx.dms[-1]["text"] == "hello & = + \u2603"
        bad = bs.XClient(bs.Credentials("ck-key", "cs &+/\u2603!", "7-tok", "ts=?%"), fx.base_url)
        assert bad.send_dm("1001", "nope").status == 401
        assert len(fx.dms) == 1
    finally:
        fx.stop()
