"""The checks before any route: Host names (DNS rebinding), cross-site and cross-origin calls,
the token (header, login link, cookie), body sizes, security headers on every response; and the
settings that refuse to bind beyond loopback without a token."""

from __future__ import annotations

import logging

import pytest

from atlas_core.errors import ConfigError
from pipelines.server.files import REPORT_CSP, VIEWER_CSP
from pipelines.server.settings import ServerSettings, host_name
from tests.server.conftest import SLUG, request, send

log = logging.getLogger(__name__)
TOKEN = "0123456789abcdef-test-token"
SECURITY = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-resource-policy": "same-origin",
}


@pytest.fixture(scope="module")
def locked(run_dir):
    """A server with a token (on loopback: the same checks as beyond it)."""
    from pipelines.server.runner import start
    from tests.server.fake_backend import FakeBackend

    running = start(ServerSettings(str(run_dir), port=0, token=TOKEN), FakeBackend())
    yield running
    running.shutdown()


def test_only_the_bound_host_names_are_answered(server) -> None:
    p = server.port
    bad = [
        "evil.example",
        f"evil.example:{p}",
        "127.0.0.1.evil.example",
        "localhost.evil.example",
        "",
        "127.0.0.2",
        "[::2]",
        "::1",
        "user@127.0.0.1",
    ]
    good = [
        f"127.0.0.1:{p}",
        "127.0.0.1",
        f"localhost:{p}",
        "LOCALHOST",
        "localhost.",
        f"[::1]:{p}",
    ]
    for host in bad:
        r = request(p, "GET", "/viewer/index.html", host=host)
        assert r.status == 400 and b"does not answer" in r.body, (host, r.status)
    for host in good:
        assert request(p, "GET", "/viewer/index.html", host=host).status == 200, host
    two = "GET /viewer/index.html HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n"
    assert send(p, two.encode()).status == 400
    http10 = send(p, b"GET /viewer/index.html HTTP/1.0\r\n\r\n")  # no Host at all
    assert http10.status == 400
    log.info(
        "hosts: %d bad Host headers refused (400), %d good ones answered", len(bad) + 2, len(good)
    )


def test_host_names_of_each_bind() -> None:
    assert host_name("[::1]:80") == "[::1]" and host_name("Example.COM.:8000") == "example.com"
    assert host_name("::1") == "" and host_name("a:b:c") == ""


def test_cross_site_and_cross_origin_calls_are_refused(server) -> None:
    p, body = server.port, b'{"rows": [1]}'
    json = {"Content-Type": "application/json"}
    cases = {
        "Origin: evil": ({"Origin": "http://evil.example"}, 403),
        "Origin: other port": ({"Origin": "http://127.0.0.1:1"}, 403),
        "Origin: null": ({"Origin": "null"}, 403),
        "Sec-Fetch-Site: cross-site": ({"Sec-Fetch-Site": "cross-site"}, 403),
        "Sec-Fetch-Site: same-site": ({"Sec-Fetch-Site": "same-site"}, 403),
        "same origin": ({"Origin": f"http://127.0.0.1:{p}", "Sec-Fetch-Site": "same-origin"}, 200),
        "no Origin (not a browser)": ({}, 200),
    }
    for name, (headers, want) in cases.items():
        r = request(p, "POST", "/api/render", {**json, **headers}, body)
        assert r.status == want, (name, r.status, r.body)
    r = request(p, "GET", "/api/neighbours?row=1", {"Sec-Fetch-Site": "cross-site"})
    assert r.status == 403  # a GET of the API from another site: refused too
    page = request(p, "GET", "/viewer/index.html", {"Sec-Fetch-Site": "cross-site"})
    assert page.status == 200  # a link from elsewhere still opens the page


def test_the_token_is_required_everywhere(locked) -> None:
    p = locked.port
    for path in ("/viewer/index.html", "/viewer/data/atlas.js", "/api/health", "/manifest.json"):
        r = request(p, "GET", path)
        assert r.status == 401 and r.headers["www-authenticate"].startswith("Bearer"), path
    wrong = [
        {"Authorization": "Bearer wrong-token-wrong-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Cookie": f"atlas_session={TOKEN}"},  # the cookie holds a derived value, not the token
        {"Cookie": "atlas_session="},
    ]
    for headers in wrong:
        assert request(p, "GET", "/viewer/index.html", headers).status == 401, headers
    assert request(p, "GET", "/viewer/index.html?token=nope").status == 401
    ok = request(p, "GET", "/viewer/index.html", {"Authorization": f"bearer {TOKEN}"})
    assert ok.status == 200
    post = request(
        p, "POST", f"/api/render?token={TOKEN}", {"Content-Type": "application/json"}, b"{}"
    )
    assert post.status == 401  # a token in the query string is a login for pages, not for calls
    log.info("token: %d requests without the right token refused (401)", 4 + len(wrong) + 2)


def test_the_login_link_sets_a_cookie_and_drops_the_token(locked) -> None:
    p = locked.port
    r = request(p, "GET", f"/viewer/index.html?z=2&token={TOKEN}")
    assert r.status == 303 and r.headers["location"] == "/viewer/index.html?z=2"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and TOKEN not in cookie
    session = cookie.split(";", 1)[0]
    page = request(p, "GET", "/viewer/index.html", {"Cookie": f"other=1; {session}"})
    assert page.status == 200 and page.body.startswith(b"<!doctype html>")
    assert request(p, "GET", "/viewer/data/atlas.js", {"Cookie": session}).status == 200
    away = request(p, "GET", f"//evil.example/x?token={TOKEN}")
    assert away.headers["location"].startswith("/evil.example")  # never a redirect off-site


def test_body_sizes_are_bounded_before_reading(server) -> None:
    p = server.port
    huge = "POST /api/render HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    r = send(p, (huge + "Content-Length: 999999999999\r\n\r\n").encode())  # nothing sent after
    assert r.status == 413
    r = send(p, (huge + "Content-Length: -1\r\n\r\n").encode())
    assert r.status == 400  # h11 refuses a malformed length before the app
    big = b"[" + b"1," * 600_000 + b"1]"  # 1.2 MB of JSON, over the 1 MiB limit for queries
    r = request(p, "POST", "/api/render", {"Content-Type": "application/json"}, big)
    assert r.status == 413


def test_security_headers_on_every_response(server) -> None:
    p = server.port
    replies = {
        "page": request(p, "GET", "/viewer/index.html"),
        "report": request(p, "GET", f"/views/{SLUG}/patches/index.html"),
        "script": request(p, "GET", "/viewer/viewer.js"),
        "404": request(p, "GET", "/manifest.json"),
        "400": request(p, "GET", "/viewer/../x.js"),
        "400 host": request(p, "GET", "/viewer/index.html", host="evil.example"),
        "405": request(p, "DELETE", "/viewer/index.html"),
        "api": request(p, "GET", "/api/health"),
        "redirect": request(p, "GET", "/"),
    }
    for name, r in replies.items():
        for k, v in SECURITY.items():
            assert r.headers.get(k) == v, (name, k)
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], name
        assert "server" not in r.headers, name  # no banner
    assert replies["page"].headers["content-security-policy"] == VIEWER_CSP
    assert replies["report"].headers["content-security-policy"] == REPORT_CSP
    page = replies["page"].body.decode()  # the header repeats the page's own policy
    assert VIEWER_CSP.startswith(page.split('content="', 1)[1].split('"', 1)[0])
    assert replies["api"].headers["cache-control"] == "no-store"


def test_binding_beyond_loopback_needs_a_token(run_dir) -> None:
    for host in ("0.0.0.0", "::", "192.168.1.10", "atlas.example.com"):
        with pytest.raises(ConfigError, match="token"):
            ServerSettings(str(run_dir), host=host)
    with pytest.raises(ConfigError, match="16 characters"):
        ServerSettings(str(run_dir), host="0.0.0.0", token="short")
    with pytest.raises(ConfigError, match="token"):
        ServerSettings(str(run_dir), allowed_hosts=("*",))
    s = ServerSettings(str(run_dir), host="0.0.0.0", token=TOKEN, allowed_hosts=("Atlas.Example",))
    assert s.accepts_host("atlas.example:443") and not s.accepts_host("evil.example")
    for host in ("127.0.0.1", "::1", "localhost"):
        assert ServerSettings(str(run_dir), host=host).token is None
    with pytest.raises(ConfigError, match=r"viewer/index\.html"):
        ServerSettings(str(run_dir / "viewer"))


def test_the_token_and_host_names_come_from_the_environment(run_dir, monkeypatch) -> None:
    monkeypatch.setenv("ATLAS_SERVE_TOKEN", TOKEN)
    monkeypatch.setenv("ATLAS_SERVE_ALLOWED_HOSTS", "atlas.example, other.example")
    s = ServerSettings.from_env(str(run_dir), host="0.0.0.0", extra_hosts=("third.example",))
    assert s.token == TOKEN
    assert {"atlas.example", "other.example", "third.example"} <= s.host_names
