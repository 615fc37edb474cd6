"""A Hugging Face hub on 127.0.0.1 for tests: the few routes huggingface_hub's real client uses
to download (``HF_ENDPOINT`` pointed at it).

- ``GET /api/models/{repo}/revision/{rev}``: the repository's info with its file listing
  (``siblings``) and commit (``sha``);
- ``GET /api/models/{repo}/tree/{rev}``: the recursive listing ``snapshot_download`` caches;
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``: a file, with the headers the client requires
  (``X-Repo-Commit``, ``ETag``, ``Content-Length``), ``Range`` requests answered with 206.

Every request is recorded (method, path, Range header). ``cut_once`` names a file whose first
full GET is cut after half its bytes, as a dropped connection would.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str | None


@dataclass
class HubState:
    repos: dict[str, dict[str, bytes]]
    requests: list[Request] = field(default_factory=list)
    cut_once: set[tuple[str, str]] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def commit(self, repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    def downloads(self, repo: str) -> list[Request]:
        """The GETs of ``repo``'s files (bodies sent), in order."""
        prefix = f"/{repo}/resolve/"
        return [r for r in self.requests if r.method == "GET" and r.path.startswith(prefix)]

    def downloaded_files(self, repo: str) -> set[str]:
        return {r.path.split("/resolve/", 1)[1].split("/", 1)[1] for r in self.downloads(repo)}


def repo_from_folder(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        state = self.server.state
        path = unquote(urlsplit(self.path).path)
        with state.lock:
            state.requests.append(Request(self.command, path, self.headers.get("Range")))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            route = parts[4] if len(parts) > 4 else "revision"  # no revision: the default branch
            self._api(f"{parts[2]}/{parts[3]}", route, body=body)
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._file(f"{parts[0]}/{parts[1]}", "/".join(parts[4:]), body=body)
        else:
            self._reply(404, b"{}", {"X-Error-Code": "RepoNotFound"}, body=body)

    def _api(self, repo: str, route: str, *, body: bool) -> None:
        state = self.server.state
        files = state.repos.get(repo)
        if files is None:
            self._reply(404, b"{}", {"X-Error-Code": "RepoNotFound"}, body=body)
            return
        commit = state.commit(repo)
        info: object
        if route == "revision":
            info = {
                "id": repo,
                "modelId": repo,
                "sha": commit,
                "private": False,
                "siblings": [{"rfilename": name} for name in files],
            }
        else:  # tree: one page, recursive
            info = [
                {"type": "file", "path": name, "size": len(data), "oid": _etag(data)}
                for name, data in files.items()
            ]
        self._reply(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body=body)

    def _file(self, repo: str, name: str, *, body: bool) -> None:
        state = self.server.state
        files = state.repos.get(repo)
        if files is None or name not in files:
            code = "RepoNotFound" if files is None else "EntryNotFound"
            headers = {"X-Error-Code": code}
            if files is not None:
                headers["X-Repo-Commit"] = state.commit(repo)
            self._reply(404, b"", headers, body=body)
            return
        data = files[name]
        headers = {"X-Repo-Commit": state.commit(repo), "ETag": f'"{_etag(data)}"'}
        wanted = self.headers.get("Range")
        if body and wanted and wanted.startswith("bytes="):
            start = int(wanted.removeprefix("bytes=").split("-", 1)[0])
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            self._reply(206, data[start:], headers, body=body)
            return
        with state.lock:
            cut = body and (repo, name) in state.cut_once
            if cut:
                state.cut_once.discard((repo, name))
        if cut:
            self._reply(200, data[: len(data) // 2], headers, body=True, length=len(data))
            self.close_connection = True
            return
        self._reply(200, data, headers, body=body)

    def _reply(
        self,
        status: int,
        data: bytes,
        headers: dict[str, str],
        *,
        body: bool,
        length: int | None = None,
    ) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data) if length is None else length))
        self.end_headers()
        if body:
            self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: HubState


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def loopback_hub(state: HubState) -> Iterator[str]:
    """Serve ``state`` on 127.0.0.1 (an ephemeral port) for the duration; yields the URL."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.state = state
    thread = threading.Thread(target=server.serve_forever, name="loopback-hub", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
