"""A local stand-in for the Hugging Face Hub, so that push / pull round trips are tested without internet.

It speaks the part of the Hub's HTTP API that `huggingface_hub` (2.x) uses to create a repository, commit a
folder and download files back (read from `huggingface_hub/hf_api.py`, `_commit_api.py`, `file_download.py`
and `_snapshot_download.py`):

    POST /api/repos/create                                   create_repo (409 when it exists)
    GET  /api/{type}s/{repo}[/revision/{rev}]                model_info / repo_info (sha + siblings)
    GET  /api/{type}s/{repo}/tree/{rev}[/{path}]             list_repo_tree (snapshot_download)
    POST /api/{type}s/{repo}/preupload/{rev}                 upload modes: always "regular" (see below)
    POST /api/{type}s/{repo}/commit/{rev}                    NDJSON commit: header + base64 files + deletions
    POST /api/validate-yaml                                  README front matter check (create_commit asks)
    HEAD/GET /[{type}s/]{repo}/resolve/{rev}/{path}          file metadata (ETag, X-Repo-Commit, size) and bytes

Errors carry the `X-Error-Code` header (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`) that
`huggingface_hub` turns into its typed exceptions, so "file not in repo" behaves as on the real Hub (for
example transformers probing for optional files).

One simplification: the preupload answer says every file is a "regular" git file, so clients send the
bytes base64-encoded inside the commit itself instead of through LFS or Xet storage. That is a choice the
real Hub also makes (for small text files) and that clients must honour, so both of `upload_folder`'s
code paths (the Xet-era pipelined upload and the legacy single commit) work against this server without
a storage backend. Everything else is honest: the server keeps exactly the bytes it received, per commit,
and serves exactly those; `files(repo_id)` exposes them so tests can compare byte for byte.

Use it as a context manager; it binds a free port on 127.0.0.1 and serves from a daemon thread:

    with LocalHubServer() as hub:
        env = {"HF_ENDPOINT": hub.url, ...}   # set before huggingface_hub is imported (it reads it once)

It can also run on its own for manual experiments: `python tests/hub_server.py` prints its URL.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

REPO_TYPES = ("model", "dataset", "space")
DEFAULT_NAMESPACE = "user"  # whose repositories un-namespaced names create (the real Hub uses the token's owner)
# The biggest request body accepted (a commit carries its files base64-encoded).
MAX_BODY_BYTES = 512 * 1024 * 1024


def git_blob_sha1(content: bytes) -> str:
    """The id git (and therefore the Hub's ETag for regular files) gives a file's content."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    oid: str
    message: str
    files: dict[str, bytes]  # the whole tree at this commit: path -> content


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool = False
    history: list[Commit] = field(default_factory=list)  # the `main` branch, oldest first

    @property
    def head(self) -> Commit:
        return self.history[-1]

    def commit_at(self, revision: str) -> Commit | None:
        """`main` (the only branch) or a full commit id."""
        if revision == "main":
            return self.head
        return next((c for c in self.history if c.oid == revision), None)


class HubError(Exception):
    def __init__(self, status: int, message: str, error_code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.error_code = status, message, error_code


class LocalHubServer:
    """An in-memory Hub on 127.0.0.1; `url` is what `HF_ENDPOINT` should be set to."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for tests to inspect
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "LocalHubServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "LocalHubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """The files of `repo_id` at `revision` exactly as they were received."""
        return dict(self._commit(self._repo(repo_type, repo_id), revision).files)

    # -- the API, one method per endpoint; each returns (status, headers, body) --------------------------------
    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository {repo_id!r} not found", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.commit_at(unquote(revision))
        if commit is None:
            raise HubError(404, f"Revision {revision!r} not found in {repo.repo_id!r}", "RevisionNotFound")
        return commit

    def create_repo(self, payload: dict, base_url: str):
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"type: expected one of {REPO_TYPES}, got {repo_type!r}")
        name = payload.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name):
            raise HubError(400, f"name: expected a repository name of letters, digits, '-', '_', '.', got {name!r}")
        repo_id = f"{payload.get('organization') or DEFAULT_NAMESPACE}/{name}"
        with self._lock:
            if (repo_type, repo_id) in self.repos:
                raise HubError(409, f"You already created this {repo_type} repo: {repo_id}")
            repo = Repo(repo_type, repo_id, private=payload.get("visibility") == "private")
            # like the Hub, a new repository starts with one (here: empty) commit, so `main` has an id
            repo.history.append(Commit(oid=hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest(),
                                       message="initial commit", files={}))
            self.repos[(repo_type, repo_id)] = repo
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return 200, {}, {"url": f"{base_url}/{prefix}{repo_id}", "name": repo_id}

    def validate_yaml(self, payload: dict):
        """The README's metadata block must be a YAML mapping (the Hub checks far more: tags, licences...)."""
        import yaml

        content = payload.get("content")
        if not isinstance(content, str):
            raise HubError(400, "content: expected the README text")
        match = re.match(r"^---\n(.*?)\n---\n", content, flags=re.DOTALL)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as err:
            return 400, {"X-Error-Message": "Invalid YAML"}, {"errors": [{"message": f"YAML: {err}"}]}
        if metadata is not None and not isinstance(metadata, dict):
            return 400, {"X-Error-Message": "Invalid YAML"}, {"errors": [{"message": "metadata must be a mapping"}]}
        return 200, {}, {"errors": [], "warnings": []}

    def repo_info(self, repo: Repo, revision: str):
        commit = self._commit(repo, revision)
        return 200, {}, {
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "private": repo.private,
            "sha": commit.oid,
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        }

    def tree(self, repo: Repo, revision: str, path: str, recursive: bool):
        commit = self._commit(repo, revision)
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        entries, folders = [], set()
        for name in sorted(commit.files):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix):]
            parts = rest.split("/")
            for depth in range(1, len(parts)):  # the folders on the way
                folder = prefix + "/".join(parts[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append({"type": "directory", "path": folder, "oid": hashlib.sha1(folder.encode()).hexdigest()})
            if recursive or len(parts) == 1:
                content = commit.files[name]
                entries.append({"type": "file", "path": name, "size": len(content), "oid": git_blob_sha1(content)})
        if prefix and not entries:
            raise HubError(404, f"Path {path!r} not found at {revision!r}", "EntryNotFound")
        return 200, {}, entries

    def preupload(self, repo: Repo, revision: str, payload: dict):
        self._commit(repo, revision)
        files = payload.get("files")
        if not isinstance(files, list):
            raise HubError(400, "files: expected a list of {path, sample, size}")
        head = self._commit(repo, revision)
        answers = []
        for entry in files:
            path = entry.get("path")
            remote = head.files.get(path)
            answers.append({
                "path": path,
                "uploadMode": "regular",  # see the module docstring: no LFS/Xet storage behind this server
                "shouldIgnore": False,
                "oid": git_blob_sha1(remote) if remote is not None else None,
            })
        return 200, {}, {"files": answers}

    def commit(self, repo: Repo, revision: str, body: bytes, base_url: str):
        if unquote(revision) != "main":
            raise HubError(400, f"revision: this local hub commits to 'main' only, got {revision!r}")
        lines = [json.loads(line) for line in body.decode("utf-8").splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "commit: expected an NDJSON body starting with a 'header' line")
        header = lines[0]["value"]
        with self._lock:
            parent = repo.head
            if header.get("parentCommit") and header["parentCommit"] != parent.oid:
                raise HubError(412, f"parentCommit {header['parentCommit']!r} is not the head of 'main'")
            files = dict(parent.files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                path = _safe_path(value.get("path"))
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise HubError(400, f"file {path!r}: expected base64 encoding, got {value.get('encoding')!r}")
                    files[path] = base64.b64decode(value["content"], validate=True)
                elif key == "deletedFile":
                    files.pop(path, None)
                elif key == "deletedFolder":
                    files = {p: c for p, c in files.items() if not p.startswith(path.rstrip("/") + "/")}
                else:  # lfsFile / copies need a storage backend this server does not have
                    raise HubError(400, f"commit: operation {key!r} is not supported by the local hub")
            digest = hashlib.sha1(parent.oid.encode() + header.get("summary", "").encode())
            for path in sorted(files):
                digest.update(path.encode() + b"\0" + git_blob_sha1(files[path]).encode())
            digest.update(str(time.time_ns()).encode())
            commit = Commit(oid=digest.hexdigest(), message=header.get("summary", ""), files=files)
            repo.history.append(commit)
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return 200, {}, {
            "success": True,
            "commitOid": commit.oid,
            "commitUrl": f"{base_url}/{prefix}{repo.repo_id}/commit/{commit.oid}",
            "pullRequestUrl": None,
        }

    def resolve(self, repo: Repo, revision: str, path: str):
        commit = self._commit(repo, revision)
        content = commit.files.get(unquote(path))
        if content is None:
            raise HubError(404, f"Entry {path!r} not found in {repo.repo_id!r} at {revision!r}", "EntryNotFound")
        etag = git_blob_sha1(content)
        return 200, {"ETag": f'"{etag}"', "X-Repo-Commit": commit.oid, "Content-Type": "application/octet-stream"}, content


def _safe_path(path) -> str:
    if not isinstance(path, str) or not path or path.startswith("/") or ".." in path.split("/"):
        raise HubError(400, f"path: expected a relative path inside the repository, got {path!r}")
    return path


# Routes: (method, regex) -> handler name. Repo ids are always "namespace/name".
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES = [
    ("POST", re.compile(r"/api/repos/create"), "create"),
    ("POST", re.compile(r"/api/validate-yaml"), "validate-yaml"),
    ("GET", re.compile(rf"/api/(?P<type>models|datasets|spaces)/{_REPO}(?:/revision/(?P<rev>[^/]+))?"), "info"),
    ("GET", re.compile(rf"/api/(?P<type>models|datasets|spaces)/{_REPO}/tree/(?P<rev>[^/]+)(?P<path>/.*)?"), "tree"),
    ("POST", re.compile(rf"/api/(?P<type>models|datasets|spaces)/{_REPO}/preupload/(?P<rev>[^/]+)"), "preupload"),
    ("POST", re.compile(rf"/api/(?P<type>models|datasets|spaces)/{_REPO}/commit/(?P<rev>[^/]+)"), "commit"),
    ("GET", re.compile(rf"/(?:(?P<type>datasets|spaces)/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"), "resolve"),
]


def _make_handler(hub: LocalHubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean; `hub.requests` records what happened
            pass

        def do_GET(self):
            self._serve("GET")

        def do_HEAD(self):
            self._serve("HEAD")

        def do_POST(self):
            self._serve("POST")

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                raise HubError(413, f"request body of {length} bytes is over the local hub's limit")
            return self.rfile.read(length)

        def _serve(self, method: str):
            url = urlsplit(self.path)
            hub.requests.append((method, url.path))
            base_url = f"http://{self.headers.get('Host', hub.url.split('://', 1)[1])}"
            try:
                body = self._body() if method == "POST" else b""
                status, headers, payload = self._dispatch(method, url, body, base_url)
            except HubError as err:
                status, headers, payload = err.status, {"X-Error-Message": err.message}, {"error": err.message}
                if err.error_code:
                    headers["X-Error-Code"] = err.error_code
            except (ValueError, KeyError, json.JSONDecodeError) as err:
                status, headers, payload = 400, {"X-Error-Message": str(err)}, {"error": str(err)}
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            if not isinstance(payload, bytes):
                headers.setdefault("Content-Type", "application/json")
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(data)

        def _dispatch(self, method, url, body, base_url):
            # HEAD is a GET without the body (what hf_hub_download asks first for the metadata)
            wanted = "GET" if method == "HEAD" else method
            for route_method, pattern, name in _ROUTES:
                match = pattern.fullmatch(url.path)
                if route_method != wanted or match is None:
                    continue
                if name == "create":
                    return hub.create_repo(json.loads(body or b"{}"), base_url)
                if name == "validate-yaml":
                    return hub.validate_yaml(json.loads(body or b"{}"))
                groups = match.groupdict()
                repo_type = (groups.get("type") or "models")[:-1]
                repo = hub._repo(repo_type, unquote(groups["repo"]))
                revision = groups.get("rev") or "main"
                if name == "info":
                    return hub.repo_info(repo, revision)
                if name == "tree":
                    recursive = parse_qs(url.query).get("recursive", ["false"])[0].lower() in ("1", "true")
                    return hub.tree(repo, revision, unquote(groups.get("path") or ""), recursive)
                if name == "preupload":
                    return hub.preupload(repo, revision, json.loads(body))
                if name == "commit":
                    return hub.commit(repo, revision, body, base_url)
                return hub.resolve(repo, revision, groups["path"])
            raise HubError(404, f"{method} {url.path} is not part of the local hub's API")

    return Handler


if __name__ == "__main__":  # manual use: serve until interrupted
    with LocalHubServer() as server:
        print(f"local hub at {server.url} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
