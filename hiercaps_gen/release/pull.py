"""pull: fetch a release by its manifest, verify every byte, then make it visible in one rename.

Sources:
- a local path or `file://` URL holding version folders (`releases/<name>/`): `SOURCE/<version>/`;
- `http(s)://` the same layout served over HTTP (resumed with Range after an interruption);
- `hf://[datasets/]<org>/<repo>`: the Hub dataset repo at the git tag `<version>` that `push`
  created, one `hf_hub_download` per manifest file (the library's retries and resume). Repos
  from before `push` held every version as a folder on `main`; when the tag does not exist,
  `hf://<org>/<repo>/<dir>` pulls `<dir>/<version>/` from `main` as before.

The manifest is validated (`release.manifest`: safe relative paths only) before any download.
Each file is hashed once, as it arrives: HTTP chunks as they are written, a local file block by
block between its read and its write, a Hub download before it is renamed (not copied) into
place; files run in parallel threads, largest first. A file
whose sha256 or size differs from the manifest is deleted and the pull fails. Only when every
file checks out is `DEST/.partial/<name>/<version>/` renamed to `DEST/<name>/<version>/`.
Pulls into one destination take turns (an flock on `DEST`): a second pull of the same version
waits, then verifies and returns the first one's release.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import httpx
from tqdm import tqdm

from hiercaps_gen.release.manifest import MAX_MANIFEST_BYTES, ManifestError, ReleaseFile, ReleaseManifest, parse_manifest
from hiercaps_gen.release.read import verify_release
from hiercaps_gen.files import sha256_file

CHUNK = 4 << 20
COPY_BLOCK = 1 << 20  # 1 MiB: fits the core's L2 between the hash and the write
WORKERS = min(8, os.cpu_count() or 1)


class PullError(RuntimeError):
    """A release cannot be pulled: unreachable, malformed or unsafe manifest, failed checksum."""


class _RestartDownload(Exception):
    pass


class Progress(Protocol):
    def update(self, n: float | None = 1) -> bool | None: ...


class _Silent:
    """The progress bar of a quiet pull (tqdm's own set-up costs more than a small pull's copy)."""

    def update(self, n: float | None = 1) -> None:
        pass


def _copy_verified(chunks: Iterator[bytes], part: Path, entry: ReleaseFile, offset: int, bar: Progress) -> None:
    """Append `chunks` to `part` (which holds `offset` bytes already), hashing as they are written;
    rename to the final name only when size and sha256 match the manifest."""
    digest = hashlib.sha256()
    if offset:
        with open(part, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
    size = offset
    try:
        with open(part, "ab") as fh:
            for chunk in chunks:
                size += len(chunk)
                if size > entry.bytes:
                    raise PullError(f"{entry.path}: larger than the {entry.bytes} bytes the manifest says")
                digest.update(chunk)
                fh.write(chunk)
                bar.update(len(chunk))
        if size != entry.bytes or digest.hexdigest() != entry.sha256:
            raise PullError(f"{entry.path}: checksum mismatch (expected sha256 {entry.sha256}); file refused")
    except PullError:  # refused bytes are never kept, not even to resume from
        part.unlink(missing_ok=True)
        raise
    os.replace(part, part.with_name(part.name.removesuffix(".part")))


def run_in_threads(calls: list[tuple[Callable[..., object], tuple[Any, ...]]], threads: int) -> None:
    """Run `calls` in order on `threads` threads, this one included; stop at the first failure and
    raise it here. Copying and hashing free the GIL, so each thread gets a core; the calling
    thread works too, so a busy machine that is slow to schedule a helper still makes progress."""
    pending, lock, stop = iter(calls), threading.Lock(), threading.Event()
    errors: list[BaseException] = []

    def drain() -> None:
        while not stop.is_set():
            with lock:
                call = next(pending, None)
            if call is None:
                return
            try:
                call[0](*call[1])
            except BaseException as exc:  # re-raised in the calling thread below
                errors.append(exc)
                stop.set()

    helpers = [threading.Thread(target=drain, daemon=True) for _ in range(threads - 1)]
    for helper in helpers:
        helper.start()
    drain()
    for helper in helpers:
        helper.join()
    if errors:
        raise errors[0]


class PathFetcher:
    """Version folders on a local disk: `root/<version>/<file>`."""

    def __init__(self, root: Path, version: str) -> None:
        self.base = root / version

    def manifest(self) -> bytes:
        path = self.base / "manifest.json"
        if not path.is_file():
            raise PullError(f"{path} not found")
        with open(path, "rb") as fh:
            return fh.read(MAX_MANIFEST_BYTES + 1)

    def fetch(self, entry: ReleaseFile, target: Path, bar: Progress) -> None:
        """One pass: read a block into a private buffer, hash it, write it. The bytes verified are
        the bytes written (a source changed mid-copy cannot slip through), each read exactly once,
        and the block stays in the core's cache between the hash and the write."""
        part = target.with_name(target.name + ".part")
        part.unlink(missing_ok=True)  # a new file, never truncated in place
        digest, block = hashlib.sha256(), bytearray(COPY_BLOCK)
        view, size = memoryview(block), 0
        try:
            with open(self.base / entry.path, "rb", buffering=0) as src, open(part, "xb", buffering=0) as out:
                while n := src.readinto(block):
                    size += n
                    if size > entry.bytes:
                        raise PullError(f"{entry.path}: larger than the {entry.bytes} bytes the manifest says")
                    digest.update(view[:n])
                    out.write(view[:n])
            if size != entry.bytes or digest.hexdigest() != entry.sha256:
                raise PullError(f"{entry.path}: checksum mismatch (expected sha256 {entry.sha256}); file refused")
        except (PullError, OSError):
            part.unlink(missing_ok=True)
            raise
        os.replace(part, target)
        bar.update(size)

    def finished(self) -> None:
        pass

    def close(self) -> None:
        pass


class HttpFetcher:
    """Version folders over HTTP(S): `base/<version>/<file>`, resumed with Range requests."""

    def __init__(self, base: str, version: str) -> None:
        self.base = base.rstrip("/") + f"/{version}/"
        self.client = httpx.Client(follow_redirects=True, timeout=60)

    def manifest(self) -> bytes:
        try:
            response = self.client.get(self.base + "manifest.json")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise PullError(f"cannot fetch {self.base}manifest.json: {exc}") from None
        return response.content[: MAX_MANIFEST_BYTES + 1]

    def _stream(self, name: str, offset: int) -> Iterator[bytes]:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with self.client.stream("GET", self.base + name, headers=headers) as response:
            if response.status_code >= 400:
                raise PullError(f"cannot fetch {self.base + name}: HTTP {response.status_code}")
            if offset and response.status_code != 206:  # server ignored Range: start over
                raise _RestartDownload
            yield from response.iter_bytes(CHUNK)

    def fetch(self, entry: ReleaseFile, target: Path, bar: Progress) -> None:
        part = target.with_name(target.name + ".part")
        offset = part.stat().st_size if part.exists() else 0
        if offset > entry.bytes:
            part.unlink()
            offset = 0
        bar.update(offset)
        try:
            _copy_verified(self._stream(entry.path, offset), part, entry, offset, bar)
        except _RestartDownload:
            part.unlink()
            bar.update(-offset)
            self.fetch(entry, target, bar)

    def finished(self) -> None:
        pass

    def close(self) -> None:
        self.client.close()


class HubFetcher:
    """A Hub dataset repo: the version's git tag, or (older repos) `<dir>/<version>/` on main."""

    def __init__(self, source: str, version: str, partial: Path, endpoint: str | None = None) -> None:
        parts = source.removeprefix("hf://").strip("/").split("/")
        if parts and parts[0] == "datasets":
            parts = parts[1:]
        if len(parts) < 2 or not all(parts):
            raise PullError("hf sources look like hf://<org>/<repo> (or hf://datasets/<org>/<repo>[/<dir>])")
        self.repo_id, self.subdir = "/".join(parts[:2]), "/".join(parts[2:])
        self.version, self.endpoint = version, endpoint
        # hf_hub_download keeps its resume state here, so an interrupted pull continues where it stopped
        self.downloads = partial / f".hub-{self.repo_id.replace('/', '--')}-{version}"
        self.revision, self.prefix = version, ""

    def _download(self, name: str) -> Path:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(self.repo_id, self.prefix + name, repo_type="dataset", revision=self.revision,
                                    local_dir=self.downloads, endpoint=self.endpoint))

    def _read_manifest(self) -> bytes:
        with open(self._download("manifest.json"), "rb") as fh:
            return fh.read(MAX_MANIFEST_BYTES + 1)

    def manifest(self) -> bytes:
        from huggingface_hub.errors import (
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RemoteEntryNotFoundError,
            RevisionNotFoundError,
        )

        unreachable = (HfHubHTTPError, LocalEntryNotFoundError)  # LocalEntryNotFound: offline or no connection
        if not self.subdir:
            try:
                return self._read_manifest()
            except RevisionNotFoundError:
                pass  # no such tag: maybe a repo from before `push`, with version folders on main
            except unreachable as exc:
                raise PullError(f"cannot fetch manifest.json of hf://{self.repo_id} at tag {self.version}: {exc}") from None
        self.revision, self.prefix = "main", (f"{self.subdir}/" if self.subdir else "") + f"{self.version}/"
        try:
            return self._read_manifest()
        except (RemoteEntryNotFoundError, RevisionNotFoundError):
            raise PullError(
                f"hf://{self.repo_id} has no tag {self.version} and no {self.prefix}manifest.json on main. "
                f"`hiercaps-gen push RELEASE --repo {self.repo_id}` tags each version it uploads; a repo that "
                "holds version folders is pulled with hf://<org>/<repo>/<folder>. To convert such a repo, pull "
                "each version from its folder and push it again."
            ) from None
        except unreachable as exc:
            raise PullError(f"cannot fetch {self.prefix}manifest.json of hf://{self.repo_id}: {exc}") from None

    def fetch(self, entry: ReleaseFile, target: Path, bar: Progress) -> None:
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        try:
            path = self._download(entry.path)
        except (HfHubHTTPError, LocalEntryNotFoundError) as exc:
            raise PullError(f"cannot fetch {entry.path} from hf://{self.repo_id}@{self.revision}: {exc}") from None
        if path.stat().st_size != entry.bytes or sha256_file(path) != entry.sha256:
            path.unlink()  # never resumed from
            raise PullError(f"{entry.path}: checksum mismatch (expected sha256 {entry.sha256}); file refused")
        os.replace(path, target)  # same file system (both under DEST/.partial): a rename, not a copy
        bar.update(entry.bytes)

    def finished(self) -> None:
        shutil.rmtree(self.downloads, ignore_errors=True)

    def close(self) -> None:
        pass


def make_fetcher(source: str, version: str, dest: Path, endpoint: str | None = None) -> PathFetcher | HttpFetcher | HubFetcher:
    parsed = urlparse(source)
    if parsed.scheme in ("http", "https"):
        return HttpFetcher(source, version)
    if parsed.scheme == "hf":
        return HubFetcher(source, version, dest / ".partial", endpoint)
    if parsed.scheme in ("", "file"):
        return PathFetcher(Path(unquote(parsed.path) if parsed.scheme == "file" else source), version)
    raise PullError(f"unsupported source scheme {parsed.scheme!r} (path, file://, http(s)://, hf://)")


def pull(
    source: str,
    version: str,
    dest: Path,
    manifest_sha256: str | None = None,
    progress: bool = True,
    endpoint: str | None = None,
) -> Path:
    """Pull release `version` from `source` into `dest/<name>/<version>/` and return that path.

    `endpoint` overrides the Hub endpoint for hf:// sources (default: HF_ENDPOINT or the Hub).
    """
    dest = Path(dest).resolve()
    fetcher = make_fetcher(source, version, dest, endpoint)
    try:
        raw = fetcher.manifest()
        if manifest_sha256 and hashlib.sha256(raw).hexdigest() != manifest_sha256:
            raise PullError("manifest.json does not match --manifest-sha256; refused")
        try:
            manifest = parse_manifest(raw)
        except ManifestError as exc:
            raise PullError(str(exc)) from None
        if manifest.version != version:
            raise PullError(f"manifest says version {manifest.version}, asked for {version}")
        dest.mkdir(parents=True, exist_ok=True)
        with _locked(dest):
            return _pull_files(fetcher, raw, manifest, dest, version, progress)
    finally:
        fetcher.close()


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One pull at a time into a destination (an flock on the directory itself, no lock file): a
    second pull of the same version waits, then finds the first one's release and verifies it."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _pull_files(fetcher: PathFetcher | HttpFetcher | HubFetcher, raw: bytes, manifest: ReleaseManifest,
                dest: Path, version: str, progress: bool) -> Path:
    """Fetch and verify every file of `manifest` under `dest/.partial/`, then rename into place."""
    final = dest / manifest.name / version
    if final.exists():
        verify_release(final)  # already pulled: only accept it if it still checks out
        return final
    staging = dest / ".partial" / manifest.name / version
    staging.mkdir(parents=True, exist_ok=True)
    total = sum(f.bytes for f in manifest.files)
    resumed, todo, root = [], [], staging.resolve()
    for entry in manifest.files:
        # parse_manifest admitted only plain relative paths; normpath (no file system calls) checks again
        target = Path(os.path.normpath(root / entry.path))
        if not target.is_relative_to(root):
            raise PullError(f"unsafe path in manifest: {entry.path!r}")
        if target.parent != root:
            target.parent.mkdir(parents=True, exist_ok=True)
        # a file at its final name was completed and checked by an interrupted pull: check it again
        (resumed if target.is_file() else todo).append((entry, target))
    todo.sort(key=lambda job: -job[0].bytes)  # largest first: the workers finish together
    bars = (tqdm(total=total, unit="B", unit_scale=True, desc=f"pull {manifest.name} {version}")
            if progress else nullcontext(_Silent()))
    with bars as bar:
        bar.update(sum(entry.bytes for entry, _ in resumed))
        run_in_threads([(fetcher.fetch, (entry, target, bar)) for entry, target in todo], WORKERS)
    for entry, path in resumed:
        if path.stat().st_size != entry.bytes or sha256_file(path) != entry.sha256:
            path.unlink()
            raise PullError(f"{entry.path}: checksum mismatch in a resumed pull; file removed, pull again")
    # no fsync here or per file: nothing is visible before the rename below, and every reader
    # (verify_release) checks each file's sha256, so a torn write after a crash is refused, not used
    (staging / "manifest.json").write_bytes(raw)
    fetcher.finished()
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staging, final)
    for empty in (dest / ".partial" / manifest.name, dest / ".partial"):
        try:
            empty.rmdir()
        except OSError:  # still holds other partial pulls
            break
    return final
