"""A minimal Hugging Face Hub API on loopback, for push/pull tests: real HTTP, no huggingface.co.

It implements only what `huggingface_hub` (2.x) calls for `create_repo`, `list_repo_refs`,
`list_repo_files`, `create_commit` (validate-yaml, preupload, commit; every file "regular",
sent inline), `create_tag` and `hf_hub_download` (HEAD + GET with Range on `resolve`), with the
Hub's error codes (`X-Error-Code: RevisionNotFound / EntryNotFound / RepoNotFound`), so the
library's own request code runs unchanged against it. Repos live in memory; every request is
logged for the tests to inspect.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import yaml


@dataclass
class Repo:
    private: bool
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def commit(self, files: dict[str, bytes], branch: str = "main") -> str:
        oid = hashlib.sha1(json.dumps(sorted((p, hashlib.sha256(b).hexdigest()) for p, b in files.items())).encode()
                           + str(len(self.commits)).encode()).hexdigest()
        self.commits[oid] = files
        self.branches[branch] = oid
        return oid

    def resolve(self, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        return self.branches.get(revision) or self.tags.get(revision)


@dataclass
class Logged:
    method: str
    path: str
    authorization: str


class HubState:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.log: list[Logged] = []
        self.lock = threading.Lock()

    def create(self, repo_id: str, private: bool = False, files: dict[str, bytes] | None = None) -> Repo:
        repo = self.repos[repo_id] = Repo(private=private)
        repo.commit({".gitattributes": b"*.parquet filter=lfs diff=lfs merge=lfs -text\n", **(files or {})})
        return repo


class Handler(BaseHTTPRequestHandler):
    state: HubState
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet; requests are in state.log
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, code: str, message: str) -> None:
        self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _route(self) -> None:
        path = urlparse(self.path).path
        with self.state.lock:
            self.state.log.append(Logged(self.command, path, self.headers.get("Authorization", "")))
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:3] == ["api", "repos", "create"] and self.command == "POST":
            return self._create()
        if parts[:2] == ["api", "validate-yaml"]:
            return self._validate_yaml()
        if parts[:2] == ["api", "datasets"] and len(parts) >= 5:
            repo_id, action, rest = "/".join(parts[2:4]), parts[4], parts[5:]
            repo = self.state.repos.get(repo_id)
            if repo is None:
                return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
            return self._api(repo, repo_id, action, rest)
        if parts[:1] == ["datasets"] and len(parts) >= 6 and parts[3] == "resolve":
            repo = self.state.repos.get("/".join(parts[1:3]))
            if repo is None:
                return self._error(404, "RepoNotFound", "Repository not found")
            return self._resolve(repo, parts[4], "/".join(parts[5:]))
        self._error(404, "NotFound", f"no route for {self.command} {path}")

    def _create(self) -> None:
        payload = json.loads(self._body())
        repo_id = f"{payload['organization']}/{payload['name']}"
        url = f"http://{self.headers['Host']}/datasets/{repo_id}"
        if repo_id in self.state.repos:  # the Hub answers 409 with the existing repo's url
            return self._json(409, {"error": "You already created this dataset repo", "url": url})
        self.state.create(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
        self._json(200, {"url": url, "name": repo_id})

    def _validate_yaml(self) -> None:
        content = json.loads(self._body())["content"]
        try:
            metadata = yaml.safe_load(content.split("---")[1]) if content.startswith("---") else {}
        except yaml.YAMLError as exc:
            return self._json(400, {"errors": [{"message": str(exc)}]})
        if not isinstance(metadata, dict):
            return self._json(400, {"errors": [{"message": "metadata is not a mapping"}]})
        self._json(200, {"errors": [], "warnings": []})

    def _api(self, repo: Repo, repo_id: str, action: str, rest: list[str]) -> None:
        if action == "refs" and self.command == "GET":
            ref = lambda kind, name, oid: {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": oid}  # noqa: E731
            return self._json(200, {"branches": [ref("heads", n, o) for n, o in repo.branches.items()],
                                    "converts": [], "tags": [ref("tags", n, o) for n, o in repo.tags.items()]})
        if action == "tree" and self.command == "GET":
            oid = repo.resolve(rest[0])
            if oid is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rest[0]}")
            files = repo.commits[oid]
            return self._json(200, [{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                                    for p, b in sorted(files.items())])
        if action == "preupload" and self.command == "POST":
            files = json.loads(self._body())["files"]
            return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                              for f in files]})
        if action == "commit" and self.command == "POST":
            return self._commit(repo, repo_id, rest[0])
        if action == "tag" and self.command == "POST":
            tag = json.loads(self._body())["tag"]
            oid = repo.resolve(rest[0])
            if oid is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rest[0]}")
            if tag in repo.tags:
                return self._error(409, "TagExists", f"Tag {tag} already exists")
            repo.tags[tag] = oid
            return self._json(200, {})
        self._error(404, "NotFound", f"no route for {action}")

    def _commit(self, repo: Repo, repo_id: str, branch: str) -> None:
        files = dict(repo.commits[repo.branches[branch]])
        for line in self._body().splitlines():
            op = json.loads(line)
            if op["key"] == "file":
                files[op["value"]["path"]] = base64.b64decode(op["value"]["content"])
            elif op["key"] == "deletedFile":
                if op["value"]["path"] not in files:
                    return self._error(404, "EntryNotFound", "A file with this name doesn't exist")
                del files[op["value"]["path"]]
            elif op["key"] != "header":
                return self._error(400, "BadRequest", f"unsupported commit operation {op['key']}")
        oid = repo.commit(files, branch)
        self._json(200, {"commitUrl": f"http://{self.headers['Host']}/datasets/{repo_id}/commit/{oid}", "commitOid": oid})

    def _resolve(self, repo: Repo, revision: str, path: str) -> None:
        oid = repo.resolve(revision)
        if oid is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        data = repo.commits[oid].get(path)
        if data is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist at {revision}")
        headers = {"X-Repo-Commit": oid, "ETag": f'"{hashlib.sha256(data).hexdigest()}"', "Accept-Ranges": "bytes"}
        start = 0
        if self.headers.get("Range", "").startswith("bytes="):
            start = int(self.headers["Range"][6:].split("-")[0] or 0)
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        self._send(206 if start else 200, data[start:], headers, "application/octet-stream")

    do_GET = do_POST = do_HEAD = _route


def serve(state: HubState) -> ThreadingHTTPServer:
    """Start the server on a free loopback port in a daemon thread; `.server_address` has the port."""
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
