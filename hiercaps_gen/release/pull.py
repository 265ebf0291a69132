"""pull: fetch a release by its manifest, verify every byte, then make it visible in one rename.

Sources: a local path or `file://` URL, `http(s)://`, or `hf://datasets/<org>/<repo>[/<dir>]`
(resolved to the Hub's HTTPS file URLs). Files download into `DEST/.partial/<name>/<version>/`
(resumed with HTTP Range / file offsets after an interruption); a file whose size or sha256
differs from the manifest is deleted and the pull fails; only when every file checks out is the
directory renamed to `DEST/<name>/<version>/`. Manifest paths are plain relative names: anything
that could leave the destination (`..`, absolute paths, backslashes, hidden names) is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from tqdm import tqdm

from hiercaps_gen.release import SEMVER, verify_release
from hiercaps_gen.shards import atomic_write_bytes

CHUNK = 1 << 20
MAX_MANIFEST_BYTES = 16 << 20
_SAFE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


class PullError(RuntimeError):
    """A release cannot be pulled: unreachable, malformed or unsafe manifest, failed checksum."""


def safe_relative_path(path: str) -> str:
    """Return `path` if it is a plain relative path that stays inside its directory."""
    parts = path.split("/")
    if not path or "\\" in path or "\x00" in path or any(not _SAFE_PART.match(p) for p in parts):
        raise PullError(f"unsafe path in manifest: {path!r}")
    return path


class ManifestFile(BaseModel):
    model_config = ConfigDict(extra="allow")
    path: str
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("path")
    @classmethod
    def _safe(cls, v: str) -> str:
        return safe_relative_path(v)


class PulledManifest(BaseModel):
    """The part of a release manifest that pulling relies on, validated before any download."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
    version: str = Field(pattern=SEMVER.pattern)
    files: list[ManifestFile] = Field(min_length=1)

    @field_validator("files")
    @classmethod
    def _unique(cls, v: list[ManifestFile]) -> list[ManifestFile]:
        paths = [f.path for f in v]
        if len(set(paths)) != len(paths) or "manifest.json" in paths:
            raise ValueError("file paths must be unique and must not include manifest.json")
        return v


def parse_manifest(data: bytes) -> PulledManifest:
    if len(data) > MAX_MANIFEST_BYTES:
        raise PullError("manifest is larger than 16 MiB")
    try:
        return PulledManifest.model_validate(json.loads(data.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PullError(f"manifest is not valid JSON: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise PullError(f"invalid manifest: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


class Fetcher:
    """Reads files relative to a release version's base location."""

    def __init__(self, source: str, version: str) -> None:
        parsed = urlparse(source)
        self.headers: dict[str, str] = {}
        if parsed.scheme in ("http", "https"):
            self.base = source.rstrip("/") + f"/{version}/"
            self.local = None
        elif parsed.scheme == "hf":
            self.base, self.headers = _hf_base(source, version)
            self.local = None
        elif parsed.scheme in ("", "file"):
            root = Path(unquote(parsed.path) if parsed.scheme == "file" else source)
            self.local = root / version
            self.base = str(self.local)
        else:
            raise PullError(f"unsupported source scheme {parsed.scheme!r} (path, file://, http(s)://, hf://)")
        self.client = httpx.Client(follow_redirects=True, timeout=60, headers=self.headers) if self.local is None else None

    def read_small(self, name: str) -> bytes:
        if self.local is not None:
            path = self.local / name
            if not path.is_file():
                raise PullError(f"{path} not found")
            return path.read_bytes()[: MAX_MANIFEST_BYTES + 1]
        try:
            response = self.client.get(self.base + name)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise PullError(f"cannot fetch {self.base + name}: {exc}") from None
        return response.content[: MAX_MANIFEST_BYTES + 1]

    def stream(self, name: str, offset: int) -> Iterator[bytes]:
        """Yield the file's bytes from `offset` on."""
        if self.local is not None:
            with open(self.local / name, "rb") as fh:
                fh.seek(offset)
                while chunk := fh.read(CHUNK):
                    yield chunk
            return
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with self.client.stream("GET", self.base + name, headers=headers) as response:
            if response.status_code >= 400:
                raise PullError(f"cannot fetch {self.base + name}: HTTP {response.status_code}")
            if offset and response.status_code != 206:  # server ignored Range: start over
                raise _RestartDownload
            yield from response.iter_bytes(CHUNK)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class _RestartDownload(Exception):
    pass


def _hf_base(source: str, version: str) -> tuple[str, dict[str, str]]:
    """`hf://datasets/org/repo[/dir]` → the Hub's resolve URL for `<dir>/<version>/`."""
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers

    parts = source.removeprefix("hf://").strip("/").split("/")
    if len(parts) < 3 or parts[0] != "datasets":
        raise PullError("hf sources look like hf://datasets/<org>/<repo>[/<dir>]")
    repo, subdir = "/".join(parts[1:3]), "/".join(parts[3:])
    prefix = f"{subdir}/{version}/" if subdir else f"{version}/"
    base = f"{constants.ENDPOINT}/datasets/{repo}/resolve/main/{prefix}"
    return base, build_hf_headers()


def _download(fetcher: Fetcher, entry: ManifestFile, target: Path, bar: tqdm) -> None:
    """Download one file into `target`, resuming a `.part` file; verify size and sha256."""
    if target.exists() and target.stat().st_size == entry.bytes and _sha256(target) == entry.sha256:
        bar.update(entry.bytes)
        return
    part = target.with_name(target.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    if offset > entry.bytes:
        part.unlink()
        offset = 0
    digest = hashlib.sha256()
    if offset:
        with open(part, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
    bar.update(offset)
    try:
        with open(part, "ab") as fh:
            for chunk in fetcher.stream(entry.path, offset):
                if fh.tell() + len(chunk) > entry.bytes:
                    raise PullError(f"{entry.path}: larger than the {entry.bytes} bytes the manifest says")
                fh.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    except _RestartDownload:
        part.unlink()
        bar.update(-offset)
        return _download(fetcher, entry, target, bar)
    except PullError:
        part.unlink(missing_ok=True)
        raise
    if part.stat().st_size != entry.bytes or digest.hexdigest() != entry.sha256:
        part.unlink()
        raise PullError(f"{entry.path}: checksum mismatch (expected sha256 {entry.sha256}); file refused")
    os.replace(part, target)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def pull(
    source: str,
    version: str,
    dest: Path,
    manifest_sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Pull release `version` from `source` into `dest/<name>/<version>/` and return that path."""
    fetcher = Fetcher(source, version)
    try:
        raw = fetcher.read_small("manifest.json")
        if manifest_sha256 and hashlib.sha256(raw).hexdigest() != manifest_sha256:
            raise PullError("manifest.json does not match --manifest-sha256; refused")
        manifest = parse_manifest(raw)
        if manifest.version != version:
            raise PullError(f"manifest says version {manifest.version}, asked for {version}")
        dest = Path(dest).resolve()
        final = dest / manifest.name / version
        if final.exists():
            verify_release(final)  # already pulled: only accept it if it still checks out
            return final
        staging = dest / ".partial" / manifest.name / version
        staging.mkdir(parents=True, exist_ok=True)
        total = sum(f.bytes for f in manifest.files)
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"pull {manifest.name} {version}",
                  disable=not progress) as bar:
            for entry in manifest.files:
                target = (staging / entry.path).resolve()
                if not target.is_relative_to(staging.resolve()):
                    raise PullError(f"unsafe path in manifest: {entry.path!r}")
                target.parent.mkdir(parents=True, exist_ok=True)
                _download(fetcher, entry, target, bar)
        atomic_write_bytes(staging / "manifest.json", raw)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, final)
        for empty in (dest / ".partial" / manifest.name, dest / ".partial"):
            try:
                empty.rmdir()
            except OSError:  # still holds other partial pulls
                break
        return final
    finally:
        fetcher.close()
