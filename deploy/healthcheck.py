"""The container's healthcheck: GET /healthz on the ops endpoint (AVATARBOT_OPS__LISTEN).

Standard library only (no curl in the image). Exit 0 when the endpoint answers 200, 1
otherwise; with the endpoint turned off (``off``) there is nothing to ask, and it exits 0.
"""

from __future__ import annotations

import os
import sys
import urllib.request

DEFAULT_LISTEN = "127.0.0.1:9108"


def healthz_url(listen: str) -> str | None:
    """The /healthz URL of a ``host:port`` listen address (a wildcard host asks loopback)."""
    listen = listen.strip()
    if listen.lower() in {"", "off", "none", "false"}:
        return None
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in {"", "0.0.0.0", "*"}:
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{int(port)}/healthz"


def main() -> int:
    url = healthz_url(os.environ.get("AVATARBOT_OPS__LISTEN", DEFAULT_LISTEN))
    if url is None:
        return 0
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return 0 if response.status == 200 else 1
    except Exception as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
