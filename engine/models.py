"""Local models: download from the Hugging Face hub into its standard cache, list, find, delete.

Metadata, URLs, HTTP session and cache scans are huggingface_hub's; the byte loop is ours so a
download reports progress per chunk, stops at once on a ``CancelToken``, resumes from the
partial file and checks every file's hash before it enters the cache (ADR 003). Only the files
a checkpoint needs are fetched (safetensors, JSON, tokenizer text, templates): pickles and
remote code never leave the hub. Nothing is sent anywhere unless ``download_model`` is called.
Never imports Qt.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from engine.errors import Cancelled, EngineError

if TYPE_CHECKING:
    from engine.engine import CancelToken

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
# what a checkpoint directory needs; everything else (pickled *.bin/*.pt, *.py) is never fetched
ALLOWED_FILES = ("*.safetensors", "*.json", "*.txt", "*.jinja", "tokenizer.model", "README.md")
_CHUNK = 1 << 16  # bytes per read: a dropped connection loses at most this much
_TIMEOUT = 30.0  # seconds without a byte before a download gives up


class DownloadError(EngineError):
    """A model that cannot be downloaded, found or deleted; the message says which and why."""


@dataclass(frozen=True, slots=True)
class LocalModel:
    """One downloaded revision of a hub model in the local cache."""

    repo_id: str
    revision: str  # commit hash
    refs: tuple[str, ...]  # branch/tag names pointing at it ("main")
    path: Path  # snapshot directory: a checkpoint directory Engine.load accepts
    nbytes: int
    is_checkpoint: bool  # config.json and safetensors weights present


@dataclass(frozen=True, slots=True)
class DownloadProgress:
    """Bytes of a whole download so far; ``filename`` is the file being fetched."""

    filename: str
    done: int
    total: int


ProgressCallback = Callable[[DownloadProgress], None]


def hub_cache_dir() -> Path:
    """The standard hub cache, read from the environment at call time (as huggingface_hub does)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    home = Path(os.environ.get("HF_HOME") or xdg / "huggingface").expanduser()
    return home / "hub"


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def is_allowed_file(name: str) -> bool:
    """Whether a repository file is one a checkpoint needs (never a pickle or code)."""
    base = name.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(base, pattern) for pattern in ALLOWED_FILES)


def _is_checkpoint(path: Path) -> bool:
    has_weights = any(path.glob("*.safetensors"))
    return (path / "config.json").is_file() and has_weights


def list_models(cache_dir: Path | None = None) -> list[LocalModel]:
    """Every model revision in the hub cache, newest first; an absent cache is an empty list."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    cache_dir = cache_dir or hub_cache_dir()
    try:
        scan = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return []
    found = []
    for repo in scan.repos:
        if repo.repo_type != "model":
            continue
        for rev in repo.revisions:
            found.append(
                LocalModel(
                    repo_id=repo.repo_id,
                    revision=rev.commit_hash,
                    refs=tuple(sorted(rev.refs)),
                    path=Path(rev.snapshot_path),
                    nbytes=rev.size_on_disk,
                    is_checkpoint=_is_checkpoint(Path(rev.snapshot_path)),
                )
            )
    return sorted(found, key=lambda m: (-m.path.stat().st_mtime, m.repo_id))


def find_models(spec: str, cache_dir: Path | None = None) -> list[LocalModel]:
    """The local revisions ``spec`` names: ``org/name`` (all of them) or ``org/name@revision``.

    A revision is a ref (``main``) or a commit hash (or its prefix). None found is an error.
    """
    repo_id, _, revision = spec.partition("@")
    models = [m for m in list_models(cache_dir) if m.repo_id == repo_id]
    if revision:
        models = [m for m in models if revision in m.refs or m.revision.startswith(revision)]
    if not models:
        raise DownloadError(
            f"no local model {spec!r} in {cache_dir or hub_cache_dir()} "
            "(see `infinitevl models list`, or download it with `infinitevl models download`)"
        )
    return models


def model_path(spec: str, cache_dir: Path | None = None) -> Path:
    """The checkpoint directory of ``spec``: the ``main`` revision, else the newest one."""
    models = find_models(spec, cache_dir)
    model = next((m for m in models if "main" in m.refs), models[0])
    if not model.is_checkpoint:
        raise DownloadError(f"{model.path} is not a complete checkpoint (config.json, safetensors)")
    return model.path


def delete_model(spec: str, cache_dir: Path | None = None) -> int:
    """Delete the local revisions ``spec`` names (their files, refs and partial downloads).

    Returns:
        The number of bytes freed.
    """
    from huggingface_hub import scan_cache_dir

    cache_dir = cache_dir or hub_cache_dir()
    models = find_models(spec, cache_dir)
    strategy = scan_cache_dir(cache_dir).delete_revisions(*(m.revision for m in models))
    strategy.execute()
    repo_id = models[0].repo_id
    repo_dir = cache_dir / _repo_folder(repo_id)
    if repo_dir.is_dir() and not any((repo_dir / "snapshots").glob("*")):
        # the last revision is gone: partial downloads and the lock folder go with it
        for path in (repo_dir / "blobs").glob("*.incomplete"):
            path.unlink()
    log.info("deleted %s (%d bytes)", spec, strategy.expected_freed_size)
    return strategy.expected_freed_size


def _repo_folder(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


@dataclass(frozen=True, slots=True)
class _RemoteFile:
    name: str
    size: int
    etag: str  # the cache's blob name: LFS sha256, or the git blob id of a small file
    is_lfs: bool


def _remote_files(
    repo_id: str, revision: str, endpoint: str, token: str | None
) -> tuple[str, list[_RemoteFile]]:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from requests import RequestException

    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(
            repo_id, revision=revision, files_metadata=True
        )
    except RevisionNotFoundError as exc:
        raise DownloadError(f"{repo_id} has no revision {revision!r} on {endpoint}") from exc
    except RepositoryNotFoundError as exc:
        raise DownloadError(f"no model {repo_id!r} on {endpoint} (or it is private)") from exc
    except (HfHubHTTPError, RequestException, OSError) as exc:
        raise DownloadError(f"cannot reach {endpoint} for {repo_id}: {exc}") from exc
    if not info.sha or info.siblings is None:
        raise DownloadError(f"{endpoint} sent no commit or file list for {repo_id}")
    files = []
    for s in info.siblings:
        if not is_allowed_file(s.rfilename):
            log.info("not fetching %s (only safetensors, JSON and tokenizer files)", s.rfilename)
            continue
        if s.lfs is not None:
            files.append(_RemoteFile(s.rfilename, s.lfs.size, s.lfs.sha256, True))
        elif s.blob_id is not None and s.size is not None:
            files.append(_RemoteFile(s.rfilename, s.size, s.blob_id, False))
        else:
            raise DownloadError(f"{endpoint} sent no size or hash for {repo_id}/{s.rfilename}")
    names = [f.name for f in files]
    if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
        raise DownloadError(
            f"{repo_id}@{revision} has no config.json and safetensors weights; only safetensors "
            "checkpoints are downloaded (pickled weights are never loaded)"
        )
    return info.sha, files


def _file_hash(path: Path, is_lfs: bool) -> str:
    # LFS files are named by their sha256; small files by their git blob id (sha1 of a header
    # and the content), as the hub reports them
    digest = hashlib.sha256() if is_lfs else hashlib.sha1()  # noqa: S324 (git's blob id)
    if not is_lfs:
        digest.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(slots=True)
class _Counter:
    total: int
    done: int = 0
    progress: ProgressCallback | None = None
    cancel: CancelToken | None = None
    last_report: float = 0.0

    def add(self, filename: str, nbytes: int, *, force: bool = False) -> None:
        self.done += nbytes
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(f"download stopped at {self.done:,} of {self.total:,} bytes")
        now = time.monotonic()
        if self.progress is not None and (force or now - self.last_report > 0.1):
            self.last_report = now
            self.progress(DownloadProgress(filename, self.done, self.total))


def _fetch(
    url: str, headers: dict[str, str], partial: Path, f: _RemoteFile, counter: _Counter
) -> None:
    from huggingface_hub.utils import get_session, hf_raise_for_status

    have = partial.stat().st_size if partial.exists() else 0
    if have > f.size:
        partial.unlink()
        have = 0
    counter.add(f.name, have, force=True)
    if have == f.size:
        return
    request_headers = {**headers, "Accept-Encoding": "identity"}
    if have:
        request_headers["Range"] = f"bytes={have}-"
    with get_session().get(url, headers=request_headers, stream=True, timeout=_TIMEOUT) as r:
        hf_raise_for_status(r)
        mode = "ab" if have and r.status_code == 206 else "wb"
        if mode == "wb" and have:
            # the server ignored the range: start over (and count the bytes again)
            counter.add(f.name, -have)
        log.info("fetching %s from byte %d", url, have if mode == "ab" else 0)
        with open(partial, mode) as out:
            for chunk in r.iter_content(chunk_size=_CHUNK):
                out.write(chunk)
                counter.add(f.name, len(chunk))
            out.flush()
            os.fsync(out.fileno())


def _link(snapshot: Path, name: str, blob: Path) -> None:
    pointer = snapshot / name
    pointer.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(blob, pointer.parent)
    if pointer.is_symlink() or pointer.exists():
        pointer.unlink()
    os.symlink(target, pointer)


def download_model(
    repo_id: str,
    revision: str = "main",
    *,
    cache_dir: Path | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Path:
    """Download a model's checkpoint files into the hub cache; returns its snapshot directory.

    Args:
        repo_id: ``org/name`` on the hub (``HF_ENDPOINT`` picks another hub; ``HF_TOKEN`` or
            a saved login authenticates).
        revision: branch, tag or commit.
        cache_dir: the hub cache (default: ``hub_cache_dir()``).
        progress: called with the bytes done so far (about ten times a second, and per file).
        cancel: set to stop; a partial file stays and the next call resumes it.
    Raises:
        DownloadError: unknown model or revision, no safetensors, network failure, a file
            whose size or hash differs from the hub's (it is deleted, never cached).
        Cancelled: ``cancel`` was set.
    """
    from filelock import FileLock
    from huggingface_hub import hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import build_hf_headers
    from requests import RequestException

    cache_dir = cache_dir or hub_cache_dir()
    endpoint = hub_endpoint()
    token = os.environ.get("HF_TOKEN") or None
    commit, files = _remote_files(repo_id, revision, endpoint, token)
    repo_dir = cache_dir / _repo_folder(repo_id)
    blobs, snapshot = repo_dir / "blobs", repo_dir / "snapshots" / commit
    locks = cache_dir / ".locks" / _repo_folder(repo_id)
    for path in (blobs, snapshot, locks):
        path.mkdir(parents=True, exist_ok=True)
    headers = build_hf_headers(token=token or False)
    counter = _Counter(sum(f.size for f in files), progress=progress, cancel=cancel)
    for f in files:
        blob = blobs / f.etag
        with FileLock(str(locks / f"{f.etag}.lock")):
            if blob.is_file() and blob.stat().st_size == f.size:
                counter.add(f.name, f.size, force=True)
            else:
                partial = blobs / f"{f.etag}.incomplete"
                url = hf_hub_url(repo_id, f.name, revision=commit, endpoint=endpoint)
                try:
                    _fetch(url, headers, partial, f, counter)
                except (HfHubHTTPError, RequestException, OSError) as exc:
                    raise DownloadError(f"downloading {repo_id}/{f.name} failed: {exc}") from exc
                _check(partial, f, repo_id)
                os.replace(partial, blob)
        _link(snapshot, f.name, blob)
    if revision != commit:
        refs = repo_dir / "refs"
        refs.mkdir(exist_ok=True)
        (refs / revision).write_text(commit)
    if progress is not None:
        progress(DownloadProgress("", counter.total, counter.total))
    log.info("downloaded %s@%s to %s", repo_id, commit, snapshot)
    return snapshot


def _check(partial: Path, f: _RemoteFile, repo_id: str) -> None:
    size = partial.stat().st_size
    if size != f.size:
        partial.unlink()
        raise DownloadError(
            f"{repo_id}/{f.name}: received {size:,} bytes, the hub lists {f.size:,}; "
            "the partial file was deleted, download again"
        )
    digest = _file_hash(partial, f.is_lfs)
    if digest != f.etag:
        partial.unlink()
        raise DownloadError(
            f"{repo_id}/{f.name}: hash {digest} differs from the hub's {f.etag}; "
            "the file was deleted, download again"
        )


def _format_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    raise AssertionError("unreachable")


def _table(models: list[LocalModel]) -> Iterator[str]:
    yield f"{'model':<40} {'revision':<12} {'refs':<10} {'size':>10}  path"
    for m in models:
        refs = ",".join(m.refs) or "-"
        note = "" if m.is_checkpoint else "  (not a complete checkpoint)"
        yield (
            f"{m.repo_id:<40} {m.revision[:12]:<12} {refs:<10} {_format_bytes(m.nbytes):>10}  "
            f"{m.path}{note}"
        )


def run_cli(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``infinitevl models list|download|delete|path``; errors are ``DownloadError`` (exit 2)."""
    out, err = out or sys.stdout, err or sys.stderr
    cache_dir = args.cache_dir
    if args.action == "list":
        models = list_models(cache_dir)
        if not models:
            out.write(f"no models in {cache_dir or hub_cache_dir()}\n")
            return 0
        out.write("\n".join(_table(models)) + "\n")
    elif args.action == "path":
        out.write(f"{model_path(args.model, cache_dir)}\n")
    elif args.action == "delete":
        freed = delete_model(args.model, cache_dir)
        out.write(f"deleted {args.model} ({_format_bytes(freed)} freed)\n")
    else:
        repo_id, _, revision = args.model.partition("@")

        def report(p: DownloadProgress) -> None:
            percent = 100 * p.done / p.total if p.total else 100.0
            err.write(
                f"\r{_format_bytes(p.done)} / {_format_bytes(p.total)} ({percent:.0f}%) "
                f"{p.filename[:40]:<40}"
            )
            err.flush()

        path = download_model(repo_id, revision or "main", cache_dir=cache_dir, progress=report)
        err.write("\n")
        out.write(f"{path}\n")
    return 0


def add_models_subcommand(sub: argparse._SubParsersAction) -> None:
    """The ``models`` subcommand of ``infinitevl`` (engine/__main__.py lists it)."""
    p = sub.add_parser("models", help="list, download, delete local models (Hugging Face cache)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="tracebacks")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="hub cache (default: $HF_HUB_CACHE or ~/.cache/huggingface/hub)",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="the models in the local cache")
    for name, text in (
        ("download", "download ORG/NAME[@REVISION] from the hub ($HF_ENDPOINT), resumable"),
        ("delete", "delete ORG/NAME[@REVISION] from the local cache"),
        ("path", "print the checkpoint directory of ORG/NAME[@REVISION]"),
    ):
        a = actions.add_parser(name, help=text)
        a.add_argument("model", help="ORG/NAME[@REVISION]")
    p.set_defaults(run=run_cli)
