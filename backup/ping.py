"""One GET to a ping URL (a dead man's switch), as litestream's heartbeat sends it.

Used by ``doctor --ping`` (a test request to the heartbeat) and by the restore drills
(``BACKUP_VERIFY_PING_URL``). A ping URL carries its token in its path: what is said about
a ping names only the host, and every secret is masked from what the network library says.
"""
from __future__ import annotations

import http.client
from urllib.parse import urlsplit

from .config import Settings, is_loopback, public_url

PING_TIMEOUT = 10.0  # seconds: litestream's own ping gives up after 30
USER_AGENT = "chora-backup"

# Services that take "<ping URL>/fail" as a failure report: healthchecks.io (and
# self-hosted Healthchecks, whose ping URLs are /ping/...), and Better Stack heartbeats.
FAIL_HOSTS = ("hc-ping.com", "healthchecks.io", "betterstack.com", "betteruptime.com")


def _opener(url: str):
    """urllib as Go's client would reach ``url``: the environment's proxy, but never for
    this machine's own addresses (Go does not proxy those; urllib would)."""
    import urllib.request

    direct = is_loopback(urlsplit(url).hostname or "")
    return urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if direct else []))


def get(url: str, timeout: float, limit: int = 0) -> tuple[int, bytes]:
    """GET ``url``: (HTTP status, up to ``limit`` bytes of the body); OSError and the like
    when it cannot be reached or does not speak HTTP."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, method="GET", headers={"User-Agent": USER_AGENT})
    try:
        with _opener(url).open(request, timeout=timeout) as answer:
            return answer.status, answer.read(limit) if limit else b""
    except urllib.error.HTTPError as exc:
        return exc.code, b""


# What get raises when there is no HTTP answer: refused, timed out, not HTTP at all.
UNREACHABLE = (OSError, ValueError, http.client.HTTPException)


def ping(url: str, settings: Settings, timeout: float = PING_TIMEOUT, what: str = "a test ping") -> tuple[bool, str]:
    """Request ``url`` once (a GET): (answered 2xx, what happened, the token never shown)."""
    shown = public_url(url)
    try:
        code, _ = get(url, timeout)
    except UNREACHABLE as exc:
        reason = getattr(exc, "reason", None) or exc
        return False, settings.mask(f"could not reach {shown}: {reason}")
    if 200 <= code < 300:
        return True, f"{shown} answered HTTP {code} to {what}"
    return False, f"{shown} answered HTTP {code}"


def failure_url(url: str) -> str | None:
    """Where to report a failure for the ping URL ``url`` (``/fail`` appended), or None when
    its service is not known to take one: then a failure is reported by silence."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    known = any(host == h or host.endswith("." + h) for h in FAIL_HOSTS) or parts.path.startswith("/ping/")
    if not known or parts.path.rstrip("/").endswith("/fail"):
        return None
    return parts._replace(path=parts.path.rstrip("/") + "/fail").geturl()
