"""A Hugging Face hub on loopback: the model-info API and ``resolve`` downloads, with ranges.

Serves repositories held in memory the way the hub does (``/api/models/<repo>/revision/<rev>``
with ``blobs=True`` metadata, ``/<repo>/resolve/<rev>/<file>`` with ETag, X-Repo-Commit and
byte ranges). Faults for tests: cut a file's first download after some bytes, serve a corrupt
file, slow every chunk down. Every request is logged.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


def git_blob_id(payload: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(payload) + payload).hexdigest()  # noqa: S324


@dataclass
class HubRepo:
    files: dict[str, bytes]
    commit: str = ""

    def __post_init__(self) -> None:
        if not self.commit:
            digest = hashlib.sha1()  # noqa: S324
            for name in sorted(self.files):
                digest.update(name.encode() + self.files[name])
            self.commit = digest.hexdigest()

    @staticmethod
    def is_lfs(name: str) -> bool:
        return name.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt"))

    def etag(self, name: str) -> str:
        payload = self.files[name]
        return hashlib.sha256(payload).hexdigest() if self.is_lfs(name) else git_blob_id(payload)

    def sibling(self, name: str) -> dict[str, object]:
        payload = self.files[name]
        entry: dict[str, object] = {"rfilename": name, "size": len(payload), "blobId": "0" * 40}
        if self.is_lfs(name):
            entry["lfs"] = {"size": len(payload), "sha256": self.etag(name), "pointerSize": 134}
        else:
            entry["blobId"] = self.etag(name)
        return entry

    @classmethod
    def from_dir(cls, path: Path) -> HubRepo:
        return cls({p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()})


@dataclass
class FakeHub:
    repos: dict[str, HubRepo]
    cut_after: dict[str, int] = field(default_factory=dict)  # file -> bytes sent on first GET
    corrupt: set[str] = field(default_factory=set)  # files served with one byte flipped
    chunk_delay: float = 0.0  # seconds between 64 KiB chunks
    log: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, Range

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                hub.handle(self, body=False)

            def do_GET(self) -> None:  # noqa: N802
                hub.handle(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def handle(self, h: BaseHTTPRequestHandler, *, body: bool) -> None:
        path = unquote(urlparse(h.path).path)
        self.log.append((h.command, path, h.headers.get("Range", "")))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"]:
            repo_id = "/".join(parts[2:4])
            repo = self.repos.get(repo_id)
            if repo is None:
                return self._error(h, 404, "RepoNotFound", "Repository not found")
            revision = parts[5] if len(parts) > 5 else "main"
            if revision not in ("main", repo.commit):
                return self._error(h, 404, "RevisionNotFound", "Invalid rev id")
            info = {
                "id": repo_id,
                "modelId": repo_id,
                "sha": repo.commit,
                "private": False,
                "siblings": [repo.sibling(n) for n in sorted(repo.files)],
            }
            return self._send(
                h, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}
            )
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = self.repos.get("/".join(parts[:2]))
            name = "/".join(parts[4:])
            if repo is None or name not in repo.files or parts[3] not in ("main", repo.commit):
                return self._error(h, 404, "EntryNotFound", "Entry not found")
            return self._serve_file(h, repo, name, body=body)
        return self._error(h, 404, "NotFound", path)

    def _serve_file(
        self, h: BaseHTTPRequestHandler, repo: HubRepo, name: str, *, body: bool
    ) -> None:
        payload = repo.files[name]
        if name in self.corrupt:
            payload = bytes([payload[0] ^ 0xFF]) + payload[1:]
        headers = {
            "ETag": f'"{repo.etag(name)}"',
            "X-Repo-Commit": repo.commit,
            "Accept-Ranges": "bytes",
        }
        start, status = 0, 200
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(payload) - 1}/{len(payload)}"
        part = payload[start:]
        if not body:
            return self._send(
                h, status, b"", {**headers, "Content-Length": str(len(part))}, body=False
            )
        cut = self.cut_after.pop(name, None) if body else None
        h.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(part))}.items():
            h.send_header(key, value)
        h.end_headers()
        sent = part if cut is None else part[:cut]
        for i in range(0, len(sent), 65536):
            h.wfile.write(sent[i : i + 65536])
            h.wfile.flush()
            if self.chunk_delay:
                time.sleep(self.chunk_delay)
        if cut is not None:
            # the connection drops mid-file, as a network failure would
            h.close_connection = True
            h.wfile.flush()
            h.connection.shutdown(2)

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        self._send(
            h,
            status,
            json.dumps({"error": message}).encode(),
            {"X-Error-Code": code, "X-Error-Message": message},
        )

    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler,
        status: int,
        payload: bytes,
        headers: dict[str, str],
        *,
        body: bool = True,
    ) -> None:
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        if "Content-Length" not in headers:
            h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        if body:
            h.wfile.write(payload)
