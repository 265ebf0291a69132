import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pytest

from hiercaps_gen.config import RunConfig
from hiercaps_gen.release.pull import PullError, pull
from hiercaps_gen.release import read_release, write_release
from hiercaps_gen.hierarchy import FILTERED

from .conftest import REPO, synthetic_rows

NAME = "hierarcaps-gen-sample"


@pytest.fixture
def releases(tmp_path) -> Path:
    root = tmp_path / "published"
    write_release(pa.Table.from_pylist(synthetic_rows(120), schema=FILTERED),
                  RunConfig().with_overrides({"release.rows_per_shard": 30}), "1.2.3", root)
    return root


@pytest.fixture
def http_server(releases, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "tests.static_server", str(releases), str(port)],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            httpx.get(url + f"/{NAME}/1.2.3/manifest.json", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    yield url, tmp_path / "server.log"
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


def same_release(a: Path, b: Path) -> bool:
    return read_release(a).to_pylist() == read_release(b).to_pylist()


def test_pull_from_path_and_file_url(releases, tmp_path):
    got = pull(str(releases / NAME), "1.2.3", tmp_path / "dest1", progress=False)
    assert got == (tmp_path / "dest1" / NAME / "1.2.3").resolve()
    assert same_release(got, releases / NAME / "1.2.3")
    got2 = pull((releases / NAME).as_uri(), "1.2.3", tmp_path / "dest2", progress=False)
    assert same_release(got2, releases / NAME / "1.2.3")
    assert not (tmp_path / "dest2/.partial").exists()
    assert pull(str(releases / NAME), "1.2.3", tmp_path / "dest1", progress=False) == got  # idempotent


def test_pull_over_http_resumes_a_partial_file(releases, http_server, tmp_path):
    url, log = http_server
    manifest = json.loads((releases / NAME / "1.2.3/manifest.json").read_text())
    big = max((f for f in manifest["files"]), key=lambda f: f["bytes"])
    staging = tmp_path / "dest/.partial" / NAME / "1.2.3"
    (staging / big["path"]).parent.mkdir(parents=True)
    data = (releases / NAME / "1.2.3" / big["path"]).read_bytes()
    (staging / (big["path"] + ".part")).write_bytes(data[: len(data) // 2])  # an interrupted download

    got = pull(f"{url}/{NAME}", "1.2.3", tmp_path / "dest", progress=False)
    assert same_release(got, releases / NAME / "1.2.3")
    assert hashlib.sha256((got / big["path"]).read_bytes()).hexdigest() == big["sha256"]
    assert " 206" in log.read_text()  # the rest came as a Range response


def test_tampered_file_is_refused_and_never_visible(releases, http_server, tmp_path):
    url, _ = http_server
    shard = next((releases / NAME / "1.2.3").glob("data/train-00000-of-*.parquet"))
    data = bytearray(shard.read_bytes())
    data[100] ^= 0x01
    shard.write_bytes(bytes(data))
    for source in (f"{url}/{NAME}", str(releases / NAME)):
        with pytest.raises(PullError, match="checksum mismatch"):
            pull(source, "1.2.3", tmp_path / "dest", progress=False)
        assert not (tmp_path / "dest" / NAME / "1.2.3").exists()
        assert not list((tmp_path / "dest").rglob(shard.name + "*"))


def test_path_pull_refuses_a_longer_or_shorter_file_and_replaces_a_stale_part(releases, tmp_path):
    shard = next((releases / NAME / "1.2.3").glob("data/train-00000-of-*.parquet"))
    data = shard.read_bytes()
    for changed, error in ((data + b"x", "larger than"), (data[:-1], "checksum mismatch")):
        shard.write_bytes(changed)
        with pytest.raises(PullError, match=error):
            pull(str(releases / NAME), "1.2.3", tmp_path / "dest", progress=False)
        assert not (tmp_path / "dest" / NAME / "1.2.3").exists()
        assert not list((tmp_path / "dest").rglob(shard.name + "*"))
    shard.write_bytes(data)
    stale = tmp_path / "dest/.partial" / NAME / "1.2.3" / shard.relative_to(releases / NAME / "1.2.3")
    stale.with_name(shard.name + ".part").write_bytes(b"left by a killed pull" * 1000)
    got = pull(str(releases / NAME), "1.2.3", tmp_path / "dest", progress=False)
    assert (got / stale.relative_to(stale.parents[1])).read_bytes() == data
    assert not list(got.rglob("*.part"))


@pytest.mark.parametrize("bad_path", ["../../evil.parquet", "/etc/passwd", "a/../../b", "..", ".hidden",
                                      "sub\\..\\x", "ok/../../x.parquet", ""])
def test_manifest_paths_cannot_escape(releases, tmp_path, bad_path):
    manifest_path = releases / NAME / "1.2.3/manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][0]["path"] = bad_path
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(PullError, match="unsafe path|invalid manifest"):
        pull(str(releases / NAME), "1.2.3", tmp_path / "dest", progress=False)
    assert not (tmp_path / "evil.parquet").exists()
    assert not (tmp_path / "dest" / NAME).exists()


def test_pinned_manifest_and_version_mismatch(releases, tmp_path):
    raw = (releases / NAME / "1.2.3/manifest.json").read_bytes()
    pull(str(releases / NAME), "1.2.3", tmp_path / "ok", manifest_sha256=hashlib.sha256(raw).hexdigest(), progress=False)
    with pytest.raises(PullError, match="manifest-sha256"):
        pull(str(releases / NAME), "1.2.3", tmp_path / "no", manifest_sha256="0" * 64, progress=False)
    os.rename(releases / NAME / "1.2.3", releases / NAME / "2.0.0")
    with pytest.raises(PullError, match="asked for 2.0.0"):
        pull(str(releases / NAME), "2.0.0", tmp_path / "no", progress=False)
    with pytest.raises(PullError, match="unsupported source"):
        pull("ftp://x/y", "2.0.0", tmp_path / "no", progress=False)


def test_pulls_into_one_destination_take_turns(releases, tmp_path):
    """A pull waits while another holds the destination; then it finds that release, verified."""
    import fcntl
    import threading

    dest = tmp_path / "dest"
    dest.mkdir()
    fd = os.open(dest, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # stands in for another pull in progress
    got: list[Path] = []
    waiter = threading.Thread(target=lambda: got.append(pull(str(releases / NAME), "1.2.3", dest, progress=False)))
    waiter.start()
    time.sleep(1.0)
    assert not got and not (dest / NAME).exists()  # nothing fetched while the destination is held
    first = pull(str(releases / NAME), "1.2.3", tmp_path / "other", progress=False)  # another destination is free
    shutil.copytree(first, dest / NAME / "1.2.3")  # "the other pull" finishes
    os.close(fd)
    waiter.join(timeout=30)
    assert got == [(dest / NAME / "1.2.3").resolve()] and not (dest / ".partial").exists()
