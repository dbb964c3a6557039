"""A test double of the Hugging Face Hub's HTTP API, served on 127.0.0.1 for the push tests.

The Hub cannot be reached from the test machines, so the tests run the REAL ``huggingface_hub`` client
(create_repo, create_branch, create_commit with LFS basic transfer, get_paths_info, discussions,
snapshot_download) against this small in-memory server. It implements exactly the routes
huggingface_hub 2.4 calls for those operations, with the payloads and headers that client reads:

==========================================================  ==============================================
``POST /api/repos/create``                                  create a repo (409 when it exists); a new repo
                                                            gets an initial commit with ``.gitattributes``
``POST /api/validate-yaml``                                 README.md front matter check (YAML parse)
``GET  /api/models/{repo}[/revision/{rev}]``                repo info: ``id``, ``sha``, ``private``,
                                                            ``siblings``
``POST /api/models/{repo}/preupload/{rev}``                 ``uploadMode`` (``lfs`` for binary samples or
                                                            files over 10 MB, else ``regular``) and the
                                                            remote ``oid`` (sha256 for LFS, git sha1 else)
``POST /{repo}.git/info/lfs/objects/batch``                 LFS basic transfer: upload + verify actions
``PUT  /lfs-upload/{sha256}``, ``POST .../objects/verify``  the LFS upload itself (sha256 checked)
``POST /api/models/{repo}/commit/{rev}``                    NDJSON commit (``header``, ``file`` base64,
                                                            ``lfsFile``, ``deletedFile``, ``deletedFolder``);
                                                            ``?create_pr=1`` opens a pull request on
                                                            ``refs/pr/N`` instead of moving the branch
``POST /api/models/{repo}/branch/{branch}``                 create a branch (409 when it exists)
``POST /api/models/{repo}/paths-info/{rev}``                form field ``paths``: file entries with
                                                            ``oid``, ``size`` and ``lfs`` {oid, size}
``GET  /api/models/{repo}/tree/{rev}[/{path}]``             tree listing (``recursive``), one page
``GET  /api/models/{repo}/discussions``                     discussions / pull requests, 50 per page
``HEAD|GET /{repo}/resolve/{rev}/{path}``                   file download with ``X-Repo-Commit``,
                                                            ``ETag`` (git sha1, or sha256 plus
                                                            ``X-Linked-Etag`` / ``X-Linked-Size`` for LFS),
                                                            ``Content-Length``, ``Range: bytes=N-``
==========================================================  ==============================================

Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) so the client
raises its own typed exceptions. Writes need ``Authorization: Bearer <token>`` with the server's token;
private repos are invisible (404 ``RepoNotFound``) without it. Xet is not implemented: run the client with
``HF_HUB_DISABLE_XET=1`` (the :func:`serve_for_test` fixture helper does), so LFS files take the basic
transfer path.

Every request is recorded (:class:`RecordedRequest`: method, path, query, body, headers without
``Authorization``, and whether that header was present), and a failure can be injected into the next
commits (:attr:`HubServer.commit_failures`): ``"drop-before"`` closes the connection without applying
the commit, ``"drop-after"`` applies it and then closes the connection, so the client never sees the reply,
``"http-503"`` answers 503 without applying it.

How the client is pointed here: ``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and
``HF_HUB_DISABLE_XET`` once, at import, and tests/conftest.py has already imported it in offline mode.
:func:`serve_for_test` therefore sets those variables in the environment (for code that reads them at
call time, like ``editor.report.publish``, and for subprocesses, which import the client afresh: the CLI test
runs ``python -m editor push`` exactly as a user would) and sets the same three values on
``huggingface_hub.constants`` for the test's duration (restored afterwards), which is what the import
would have done. Code under test passes ``endpoint=`` explicitly to ``HfApi`` / ``snapshot_download``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import hashlib
import itertools
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

FAKE_TOKEN = "hf_FAKEtestTOKEN0123456789abcdefXYZ"
LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub refuses regular (non-LFS) files above 10 MB
GITATTRIBUTES = (
    "*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
    "*.gguf filter=lfs diff=lfs merge=lfs -text\n*.pt filter=lfs diff=lfs merge=lfs -text\n"
).encode()
DISCUSSIONS_PAGE = 50


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ------------------------------------------------------------------------------------------- repo state
@dataclass(frozen=True)
class Blob:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_oid(self) -> str:
        """The git object id the Hub reports: of the content, or of the LFS pointer for LFS files."""
        return git_blob_sha1(lfs_pointer(self.sha256, len(self.data)) if self.lfs else self.data)

    @property
    def upload_oid(self) -> str:
        """The oid preupload reports, compared by the client with its local one (sha256 for LFS)."""
        return self.sha256 if self.lfs else git_blob_sha1(self.data)


@dataclass
class Commit:
    oid: str
    parent: str | None
    summary: str
    description: str
    files: dict[str, Blob]  # the whole tree after this commit
    created: str = field(default_factory=_now)


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # "main", other branches, "refs/pr/N" -> commit oid
    discussions: list[dict[str, Any]] = field(default_factory=list)
    created: str = field(default_factory=_now)

    def head(self, revision: str) -> Commit | None:
        oid = self.refs.get(revision, revision if revision in self.commits else None)
        return self.commits.get(oid) if oid else None

    def files(self, revision: str = "main") -> dict[str, bytes]:
        """Path -> content at a revision (a branch, ``refs/pr/N`` or a commit oid)."""
        head = self.head(revision)
        if head is None:
            raise KeyError(f"no revision {revision!r} in {self.repo_id}")
        return {path: blob.data for path, blob in head.files.items()}

    def history(self, revision: str = "main") -> list[Commit]:
        """Commits reachable from ``revision``, newest first (the initial commit last)."""
        out, commit = [], self.head(revision)
        while commit is not None:
            out.append(commit)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return out

    def pull_requests(self) -> list[dict[str, Any]]:
        return [d for d in self.discussions if d["isPullRequest"]]


@dataclass
class RecordedRequest:
    method: str
    path: str  # percent-decoded
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names, Authorization removed
    authorized: bool  # an Authorization header was sent
    body: bytes


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **payload: Any):
        super().__init__(message)
        self.status, self.message, self.code, self.payload = status, message, code, payload


# -------------------------------------------------------------------------------------------- server
class HubServer:
    """In-memory Hub: ``repos`` by id, ``requests`` as recorded, ``commit_failures`` to inject."""

    def __init__(self, token: str = FAKE_TOKEN, host: str = "127.0.0.1", port: int = 0):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lfs_store: dict[str, bytes] = {}
        self.requests: list[RecordedRequest] = []
        # consumed one per commit request: "drop-before" | "drop-after" | "http-503"
        self.commit_failures: list[str] = []
        self.lock = threading.RLock()
        self._counter = itertools.count()
        self._httpd = ThreadingHTTPServer((host, port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="hubserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- inspection helpers for tests
    def repo(self, repo_id: str) -> Repo:
        return self.repos[repo_id]

    def recorded(self, method: str | None = None, contains: str = "") -> list[RecordedRequest]:
        with self.lock:
            return [r for r in self.requests if (method is None or r.method == method) and contains in r.path]

    def commit_requests(self) -> list[RecordedRequest]:
        return [r for r in self.recorded("POST") if re.search(r"^/api/models/[^/]+/[^/]+/commit/", r.path)]

    # -- state changes (called with the lock held)
    def _new_oid(self, *parts: str) -> str:
        return hashlib.sha1("\0".join((*parts, str(next(self._counter)))).encode()).hexdigest()

    def _commit(self, repo: Repo, ref: str, parent: Commit | None, summary: str, description: str,
                files: dict[str, Blob]) -> Commit:
        commit = Commit(self._new_oid(repo.repo_id, ref, summary), parent.oid if parent else None, summary,
                        description, files)
        repo.commits[commit.oid] = commit
        repo.refs[ref] = commit.oid
        return commit


# ------------------------------------------------------------------------------------------- handler
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (m, re.compile(p), name)
    for m, p, name in [
        ("POST", r"^/api/repos/create$", "create_repo"),
        ("POST", r"^/api/validate-yaml$", "validate_yaml"),
        ("GET", r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$", "repo_info"),
        ("POST", r"^/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)$", "preupload"),
        ("POST", r"^/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)$", "commit"),
        ("POST", r"^/api/models/(?P<repo>[^/]+/[^/]+)/branch/(?P<branch>[^/]+)$", "create_branch"),
        ("POST", r"^/api/models/(?P<repo>[^/]+/[^/]+)/paths-info/(?P<rev>[^/]+)$", "paths_info"),
        ("GET", r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?$", "tree"),
        ("GET", r"^/api/models/(?P<repo>[^/]+/[^/]+)/discussions$", "discussions"),
        ("POST", r"^/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$", "lfs_batch"),
        ("POST", r"^/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/verify$", "lfs_verify"),
        ("PUT", r"^/lfs-upload/(?P<oid>[0-9a-f]{64})$", "lfs_upload"),
        ("GET", r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
        ("HEAD", r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
    ]
]


class _DropConnection(Exception):
    """Raised by a route to close the socket without any reply (injected network failure)."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hneurons-hub-double/1"

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm meets the client's
        # delayed ACK and every request waits ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the default stderr log
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # -- plumbing
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        # Revisions arrive percent-encoded with safe="" ("refs%2Fpr%2F1"): decode per segment so that an
        # encoded slash stays inside its segment, then re-join with a separator the routes cannot confuse.
        segments = [unquote(s) for s in split.path.split("/")]
        path = "/".join(s.replace("/", "\x00") for s in segments)
        query = parse_qs(split.query, keep_blank_values=True)
        body = self._read_body()
        auth = self.headers.get("Authorization")
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower() != "authorization"}
        with self.hub.lock:
            self.hub.requests.append(RecordedRequest(method, path.replace("\x00", "/"), query, headers,
                                                     auth is not None, body))
        for route_method, pattern, name in _ROUTES:
            match = pattern.match(path) if route_method == method else None
            if match:
                params = {k: (v.replace("\x00", "/") if v else v) for k, v in match.groupdict().items()}
                break
        else:
            return self._send_json(404, {"error": f"no route for {method} {split.path}"})
        try:
            if auth is not None and auth != f"Bearer {self.hub.token}":
                raise HubError(401, "Invalid credentials in Authorization header")
            status, payload, extra = getattr(self, f"_route_{name}")(params=params, query=query, body=body,
                                                                   authorized=auth is not None)
        except _DropConnection:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        except HubError as err:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            return self._send_json(err.status, {"error": err.message, **err.payload}, headers)
        if isinstance(payload, bytes):
            self._send_bytes(status, payload, extra, head=(method == "HEAD"))
        else:
            self._send_json(status, payload, extra)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _send_bytes(self, status: int, data: bytes, headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    # -- helpers
    def _repo(self, repo_id: str, authorized: bool) -> Repo:
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and not authorized):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _writable_repo(self, repo_id: str, authorized: bool) -> Repo:
        if not authorized:
            raise HubError(401, "You must be authenticated to write to a repo")
        return self._repo(repo_id, authorized)

    def _revision(self, repo: Repo, rev: str) -> Commit:
        head = repo.head(rev)
        if head is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return head

    def _entry(self, path: str, blob: Blob) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "path": path, "size": len(blob.data), "oid": blob.git_oid}
        if blob.lfs:
            entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data),
                            "pointerSize": len(lfs_pointer(blob.sha256, len(blob.data)))}
        return entry

    def _repo_url(self, repo_id: str) -> str:
        return f"{self.hub.url}/{repo_id}"

    # -- routes: each returns (status, JSON payload or bytes, extra headers)
    def _route_create_repo(self, params, query, body, authorized):
        if not authorized:
            raise HubError(401, "You must be authenticated to create a repo")
        payload = json.loads(body)
        if payload.get("type", "model") != "model":
            raise HubError(400, "this test double only serves model repos")
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        if "/" not in repo_id:
            raise HubError(400, "this test double needs namespace/name repo ids")
        with self.hub.lock:
            if repo_id in self.hub.repos:
                # The Hub answers 409 with the repo's url, which create_repo(exist_ok=True) returns.
                raise HubError(409, "You already created this model repo", url=self._repo_url(repo_id))
            repo = Repo(repo_id, private=payload.get("visibility") == "private")
            self.hub._commit(repo, "main", None, "initial commit", "",
                             {".gitattributes": Blob(GITATTRIBUTES, lfs=False)})
            self.hub.repos[repo_id] = repo
        return 200, {"url": self._repo_url(repo_id), "name": repo_id, "id": repo_id}, {}

    def _route_validate_yaml(self, params, query, body, authorized):
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---", content, re.S)
        if match:
            try:
                yaml.safe_load(match.group(1))
            except yaml.YAMLError as exc:
                return 400, {"errors": [{"message": f"invalid YAML: {exc}"}], "warnings": []}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _route_repo_info(self, params, query, body, authorized):
        repo = self._repo(params["repo"], authorized)
        head = self._revision(repo, params["rev"] or "main")
        return 200, {
            "id": repo.repo_id, "_id": repo.repo_id, "author": repo.repo_id.split("/")[0], "sha": head.oid,
            "private": repo.private, "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
            "createdAt": repo.created, "lastModified": head.created,
            "siblings": [{"rfilename": p} for p in sorted(head.files)],
        }, {}

    def _route_preupload(self, params, query, body, authorized):
        repo = self._writable_repo(params["repo"], authorized)
        head = self._revision(repo, params["rev"])
        files = []
        for item in json.loads(body)["files"]:
            sample = base64.b64decode(item["sample"])
            mode = "lfs" if (b"\0" in sample or item["size"] > LFS_THRESHOLD) else "regular"
            remote = head.files.get(item["path"])
            files.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False,
                          "oid": remote.upload_oid if remote is not None else None})
        return 200, {"files": files, "commitOid": head.oid}, {}

    def _route_lfs_batch(self, params, query, body, authorized):
        self._writable_repo(params["repo"], authorized)
        payload = json.loads(body)
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.hub.lfs_store:  # already stored objects need no action
                entry["actions"] = {
                    "upload": {"href": f"{self.hub.url}/lfs-upload/{obj['oid']}"},
                    "verify": {"href": f"{self.hub.url}/{params['repo']}.git/info/lfs/objects/verify"},
                }
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}

    def _route_lfs_upload(self, params, query, body, authorized):
        # Like a pre-signed storage URL: no Authorization needed, the content must match the oid.
        if hashlib.sha256(body).hexdigest() != params["oid"]:
            raise HubError(400, "uploaded content does not match its sha256")
        with self.hub.lock:
            self.hub.lfs_store[params["oid"]] = body
        return 200, b"", {}

    def _route_lfs_verify(self, params, query, body, authorized):
        self._writable_repo(params["repo"], authorized)
        payload = json.loads(body)
        data = self.hub.lfs_store.get(payload["oid"])
        if data is None or len(data) != payload["size"]:
            raise HubError(404, f"LFS object {payload['oid']} not found")
        return 200, {"message": "ok"}, {}

    def _route_create_branch(self, params, query, body, authorized):
        repo = self._writable_repo(params["repo"], authorized)
        branch = params["branch"]
        start = (json.loads(body) if body else {}).get("startingPoint") or "main"
        with self.hub.lock:
            if branch in repo.refs:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            if branch.startswith("refs/"):
                raise HubError(400, f"Invalid reference for a branch: {branch}")
            repo.refs[branch] = self._revision(repo, start).oid
        return 200, {}, {}

    def _route_commit(self, params, query, body, authorized):
        repo = self._writable_repo(params["repo"], authorized)
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the commit payload must start with a header line")
        header = lines[0]["value"]
        failure = None
        with self.hub.lock:
            if self.hub.commit_failures:
                failure = self.hub.commit_failures.pop(0)
        if failure == "drop-before":
            raise _DropConnection()
        if failure == "http-503":
            raise HubError(503, "injected failure: service unavailable")
        with self.hub.lock:
            rev = params["rev"]
            base = self._revision(repo, rev)
            if rev not in repo.refs:
                raise HubError(400, f"cannot commit to {rev}: not a branch")
            if header.get("parentCommit") and header["parentCommit"] != base.oid:
                raise HubError(412, "parentCommit is not the head of the revision")
            files = dict(base.files)
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                if key == "file":
                    files[value["path"]] = Blob(base64.b64decode(value["content"]), lfs=False)
                elif key == "lfsFile":
                    data = self.hub.lfs_store.get(value["oid"])
                    if data is None:
                        raise HubError(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                    files[value["path"]] = Blob(data, lfs=True)
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: b for p, b in files.items() if not p.startswith(prefix)}
                else:
                    raise HubError(400, f"unknown commit operation {key!r}")
            pr_url = None
            if query.get("create_pr", ["0"])[0] in ("1", "true"):
                num = len(repo.discussions) + 1
                ref = f"refs/pr/{num}"
                repo.discussions.append({
                    "num": num, "title": header["summary"], "status": "open", "isPullRequest": True,
                    "createdAt": _now(), "author": {"name": repo.repo_id.split("/")[0]},
                    "repo": {"name": repo.repo_id, "type": "model"}, "target": rev,
                })
                pr_url = f"{self._repo_url(repo.repo_id)}/discussions/{num}"
            else:
                ref = rev
            commit = self.hub._commit(repo, ref, base, header["summary"], header.get("description", ""), files)
        if failure == "drop-after":
            raise _DropConnection()
        return 200, {"success": True, "commitOid": commit.oid, "pullRequestUrl": pr_url,
                     "commitUrl": f"{self._repo_url(repo.repo_id)}/commit/{commit.oid}"}, {}

    def _route_paths_info(self, params, query, body, authorized):
        repo = self._repo(params["repo"], authorized)
        head = self._revision(repo, params["rev"])
        form = parse_qs(body.decode(), keep_blank_values=True)
        entries = [self._entry(p, head.files[p]) for p in form.get("paths", []) if p in head.files]
        return 200, entries, {}

    def _route_tree(self, params, query, body, authorized):
        repo = self._repo(params["repo"], authorized)
        head = self._revision(repo, params["rev"])
        prefix = (params["path"] or "").strip("/")
        recursive = query.get("recursive", ["False"])[0].lower() in ("1", "true")
        files, folders = [], set()
        for path in sorted(head.files):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1:] if prefix else path
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                folders.add("/".join(([prefix] if prefix else []) + parts[:depth]))
            if recursive or len(parts) == 1:
                files.append(self._entry(path, head.files[path]))
        if not recursive:
            folders = {f for f in folders if f.count("/") == (prefix.count("/") + 1 if prefix else 0)}
        dirs = [{"type": "directory", "path": f, "size": 0, "oid": git_blob_sha1(f.encode())} for f in sorted(folders)]
        return 200, dirs + files, {}

    def _route_discussions(self, params, query, body, authorized):
        repo = self._repo(params["repo"], authorized)
        items = list(reversed(repo.discussions))  # newest first, as the Hub lists them
        if query.get("type", ["all"])[0] == "pull_request":
            items = [d for d in items if d["isPullRequest"]]
        elif query.get("type", ["all"])[0] == "discussion":
            items = [d for d in items if not d["isPullRequest"]]
        status = query.get("status", ["all"])[0]
        if status != "all":
            items = [d for d in items if d["status"] == status]
        start = int(query.get("p", ["0"])[0]) * DISCUSSIONS_PAGE
        page = [{k: v for k, v in d.items() if k != "target"} for d in items[start:start + DISCUSSIONS_PAGE]]
        return 200, {"count": len(items), "start": start, "numClosedDiscussions": 0, "discussions": page}, {}

    def _route_resolve(self, params, query, body, authorized):
        repo = self._repo(params["repo"], authorized)
        head = self._revision(repo, params["rev"])
        blob = head.files.get(params["path"])
        if blob is None:
            raise HubError(404, f"Entry not found: {params['path']}", "EntryNotFound")
        headers = {"X-Repo-Commit": head.oid, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if blob.lfs:
            headers.update({"ETag": f'"{blob.sha256}"', "X-Linked-Etag": f'"{blob.sha256}"',
                            "X-Linked-Size": str(len(blob.data))})
        else:
            headers["ETag"] = f'"{blob.git_oid}"'
        data, status = blob.data, 200
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            data, status = data[start:], 206
            headers["Content-Range"] = f"bytes {start}-{len(blob.data) - 1}/{len(blob.data)}"
        return status, data, headers


# ------------------------------------------------------------------------------------------ test setup
@contextlib.contextmanager
def serve_for_test(monkeypatch, home: Path) -> Iterator[HubServer]:
    """Start a :class:`HubServer` and point the real ``huggingface_hub`` client at it (see module docstring).

    ``home`` becomes ``HF_HOME`` (no saved login of the machine is read, nothing is cached outside the
    test folder). ``HF_TOKEN`` is the server's fake token.
    """
    from huggingface_hub import constants

    with HubServer() as server:
        home.mkdir(parents=True, exist_ok=True)
        for key, value in {
            "HF_ENDPOINT": server.url, "HF_TOKEN": server.token, "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0", "HF_HOME": str(home), "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
        monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
        # What importing huggingface_hub with the variables above would have set:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
        monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
        yield server

