"""The command line's way to a running Easel server: when one answers (`EASEL_HOST`, by default the address `easel
serve` listens on), `easel generate/edit/vary` hand it their jobs and follow their progress, as `ollama run` does,
so that a call pays neither the imports nor the model load; when none answers, they run in-process.

The images come back by signed link and land in the caller's workspace (or `--out`) with their parameters and a
history row, unless the server shares the caller's workspace, which already holds them.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shutil
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import GenerationError, error_from

if TYPE_CHECKING:
    from .config import Settings
    from .engine.runner import Runner
    from .store import Workspace
    from .types import ImageRequest, ImageResult

OFF = ("", "0", "off", "none", "no")
_FILE_URL = re.compile(r"/v1/files/([A-Za-z0-9]+)/content")


def server_url(host: str) -> str | None:
    """`EASEL_HOST` ("127.0.0.1:8000", "http://gpu-box:8000") as a base URL; None when it says off."""
    host = host.strip()
    if host.lower() in OFF:
        return None
    return (host if "://" in host else f"http://{host}").rstrip("/")


def can_delegate(request: ImageRequest) -> bool:
    """A server never opens a folder or file a client names: a request for a local pipeline folder, or with a LoRA
    given as a path, runs in-process."""
    from .catalog import names_a_file

    model = request.model or ""
    if model.startswith(("/", ".", "~")) or os.sep in model and Path(model).expanduser().exists():
        return False
    named = [unit.model for unit in request.control] + ([request.ip_adapter.model] if request.ip_adapter else [])
    if any(Path(name).expanduser().exists() for name in named):  # a ControlNet or IP-Adapter folder by path
        return False
    return not any(names_a_file(name) for name in request.loras)


class ServerClient:
    """A running Easel server, as the CLI uses it: jobs with progress, edits and variations, images by link.

    It speaks HTTP with the standard library's `http.client` (one connection, kept open): a CLI call that hands its
    job over must start in a fraction of a second, and an HTTP library's import alone costs a good part of one."""

    def __init__(self, base_url: str, key: str | None, timeout_s: float):
        url = urllib.parse.urlsplit(base_url)
        self.https, self.netloc = url.scheme == "https", url.netloc
        self.prefix = url.path.rstrip("/")
        self.headers = {"authorization": f"Bearer {key}"} if key else {}
        self.timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None

    @classmethod
    def find(cls, settings: Settings) -> ServerClient | None:
        """The server at `EASEL_HOST` if it answers /health as an Easel server that can work now, else None."""
        url = server_url(settings.host)
        if url is None:
            return None
        keys = settings.server_keys
        client = cls(url, keys[0] if keys else None, settings.job_timeout_s + 60)
        try:
            status, body = client.request("GET", "/health", timeout_s=0.5)
            health = json.loads(body)
        except (OSError, http.client.HTTPException, ValueError):
            return None
        easel = isinstance(health, dict) and ("engine" in health or health.get("service") == "easel")
        if status != 200 or not easel or health.get("status") != "ok":  # (without a key: the status alone)
            return None
        return client

    def _connection(self, timeout_s: float) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            self._conn = cls(self.netloc, timeout=timeout_s)
        self._conn.timeout = timeout_s
        if self._conn.sock is not None:
            self._conn.sock.settimeout(timeout_s)
        return self._conn

    def open(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
             timeout_s: float | None = None) -> http.client.HTTPResponse:
        """Send a request (a path on the server, or a link it gave) and return its response, unread."""
        if "://" in path:
            url = urllib.parse.urlsplit(path)
            path = url.path + (f"?{url.query}" if url.query else "")
        else:
            path = self.prefix + path
        conn = self._connection(timeout_s or self.timeout_s)
        try:
            conn.request(method, path, body=body, headers={**self.headers, **(headers or {})})
            return conn.getresponse()
        except (OSError, http.client.HTTPException):
            conn.close()  # a connection the server closed: one more try on a new one
            self._conn = None
            conn = self._connection(timeout_s or self.timeout_s)
            conn.request(method, path, body=body, headers={**self.headers, **(headers or {})})
            return conn.getresponse()

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                timeout_s: float | None = None) -> tuple[int, bytes]:
        response = self.open(method, path, body, headers, timeout_s)
        return response.status, response.read()

    def _json(self, method: str, path: str, payload: dict | None = None) -> dict[str, Any]:
        body = json.dumps(payload).encode() if payload is not None else None
        status, data = self.request(method, path, body, {"content-type": "application/json"} if body else None)
        return _answer(status, data)

    # -- jobs, followed as they run --------------------------------------------------------------------------------
    def generate(self, requests: list[ImageRequest], on_step: Callable | None = None) -> list[dict[str, Any]]:
        """Queue every request at once (so that the server batches them), then follow each to its end; the final
        job bodies, with `urls`. Any mode: the request travels whole (`request_json`), its images as files."""
        jobs = [self._submit(r)["id"] for r in requests]
        return [self._follow(job_id, on_step) for job_id in jobs]

    def _submit(self, request: ImageRequest) -> dict[str, Any]:
        from .request_json import to_json

        fields, images = to_json(request, images="files")
        if not images:
            return self._json("POST", "/v1/jobs", {"request": fields})
        files = [(name, (f"{name}.png", _png(image), "image/png")) for name, image in images.items()]
        body, content_type = _multipart({"request": json.dumps(fields)}, files)
        return _answer(*self.request("POST", "/v1/jobs", body, {"content-type": content_type}))

    def _follow(self, job_id: str, on_step: Callable | None) -> dict[str, Any]:
        response = self.open("GET", f"/v1/jobs/{job_id}/events?previews=false")
        if response.status != 200:
            _answer(response.status, response.read())
        event = None
        for raw in response:
            line = raw.decode("utf-8").rstrip("\r\n")
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                body = json.loads(line.removeprefix("data: "))
                if event == "progress" and on_step is not None and body.get("step"):
                    on_step(body["step"], body["total_steps"], None)
                elif event in ("succeeded", "failed", "cancelled"):
                    response.read()  # the stream's end, so that the connection can carry the next request
                    return _outcome(body)
        raise GenerationError(f"The server's stream of job {job_id} ended before the job did.")

    # -- images ----------------------------------------------------------------------------------------------------
    def fetch(self, urls: list[str], warnings: list[str], workspace: Workspace, model: str) -> ImageResult:
        """The images behind signed links, in the caller's workspace: the file already there when the server
        shares it, else written there with its parameters and a history row."""
        from PIL import Image

        from .metadata import read_parameters
        from .store import Workspace
        from .types import GeneratedImage, ImageResult

        images = []
        for url in urls:
            match = _FILE_URL.search(url)
            image_id = match.group(1) if match else None
            here = Workspace(workspace.home).image_file(image_id) if image_id else None  # the server's own file
            data = here.read_bytes() if here is not None else self.download(url)
            picture = Image.open(io.BytesIO(data))
            params = read_parameters(picture) or {}
            fmt = {"JPEG": "jpeg", "WEBP": "webp"}.get(picture.format or "", "png")
            image = GeneratedImage(image=picture, seed=params.get("seed"), parameters=params, output_format=fmt,
                                   id=image_id)
            image._encoded = data  # the bytes the server saved are the bytes kept
            if here is None:
                image = workspace.save_all([image])[0]
            elif workspace.out_dir is None:
                image.path = str(here)
            else:  # already in the history: a copy in --out, no second row
                workspace.out_dir.mkdir(parents=True, exist_ok=True)
                image.path = str(shutil.copy2(here, workspace.out_dir / here.name))
            images.append(image)
        first = images[0].parameters if images else {}
        return ImageResult(images=images, model=first.get("model", model), prompt=first.get("prompt", ""),
                           revised_prompt=first.get("revised_prompt"), warnings=warnings)

    def download(self, url: str) -> bytes:
        """The bytes behind a signed link of this server."""
        status, data = self.request("GET", url)
        if status != 200:
            _answer(status, data)
        return data


def _answer(status: int, data: bytes) -> dict[str, Any]:
    """The answer's JSON, or the server's error raised as the same Easel error."""
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if status >= 400:
        error = body.get("error") if isinstance(body, dict) else None
        raise error_from(status, error if isinstance(error, dict) else {})
    if not isinstance(body, dict):
        raise GenerationError(f"The server answered {status} with something that is not JSON.")
    return body


def _multipart(fields: dict[str, str], files: list[tuple[str, tuple[str, bytes, str]]]) -> tuple[bytes, str]:
    """A multipart/form-data body: the fields, then the files."""
    boundary = f"easel-{uuid.uuid4().hex}"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\ncontent-disposition: form-data; name="{name}"\r\n\r\n'.encode()
                     + value.encode() + b"\r\n")
    for name, (filename, data, media) in files:
        parts.append(f'--{boundary}\r\ncontent-disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"content-type: {media}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _outcome(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("status") == "succeeded":
        return body
    error = body.get("error") or {}
    status = 409 if body.get("status") == "cancelled" else {"invalid_request_error": 400}.get(error.get("type"), 500)
    raise error_from(status, error)


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()



class ServerRunner:
    """Runs requests on a server with the interface of the in-process `Runner` (`run`, `run_many`), so that the
    library's `generate`, `edit` and `vary` work on it unchanged; a request for a local folder runs in-process."""

    def __init__(self, client: ServerClient, settings: Settings):
        self.client, self.settings = client, settings
        self._local: Runner | None = None

    def local(self) -> Runner:
        if self._local is None:
            from .engine.runner import Runner

            self._local = Runner(self.settings)
        return self._local

    def run(self, request: ImageRequest, *, save: bool = True, out_dir: Path | None = None,
            on_step: Callable | None = None) -> ImageResult:
        return self.run_many([request], save=save, out_dir=out_dir, on_step=on_step)[0]

    def run_many(self, requests: list[ImageRequest], *, save: bool = True, out_dir: Path | None = None,
                 on_step: Callable | None = None) -> list[ImageResult]:
        if not save or not all(can_delegate(r) for r in requests):
            return self.local().run_many(requests, save=save, out_dir=out_dir, on_step=on_step)
        from .store import Workspace

        workspace = Workspace(self.settings.home, out_dir)
        named = [r.replace(model=r.model or self.settings.default_model) for r in requests]
        return [self.client.fetch(job["urls"], job.get("warnings", []), workspace, r.model)
                for r, job in zip(named, self.client.generate(named, on_step))]
