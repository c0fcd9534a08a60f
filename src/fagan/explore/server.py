"""The local HTTP server of ``fagan explore`` (standard library only).

Routes (every answer other than the page, its two assets and PNGs is JSON; every error
is a 4xx/5xx with ``{"error": message}``):

=====================================  =====================================================
``GET /``, ``/explore.js``,             the page and its assets, from the package's data
``/explore.css``                        (nothing else is served: no file system path is
                                        ever built from a request)
``GET /api/info``                       sizes, attention layers, limits
``GET /api/generate``                   ``seed`` [``truncation``] [``seed2`` ``mix``]
                                        [``class``] [``dtype``]: image, maps, critic's view
``GET /api/image.png``                  the same image as a PNG file
``GET /api/query``                      ``net`` ``layer`` ``x`` ``y`` and the image
                                        (as for generate, or ``upload``): one query's row
``POST /api/discriminate``              body: a PNG or JPEG (``Content-Type`` image/png or
                                        image/jpeg, at most 10 MiB) [``dtype``] [``class``:
                                        required by a class-conditional critic]
=====================================  =====================================================

Bound to a loopback address, the server also refuses requests whose ``Host`` is not a
loopback name, so that a web page cannot reach it through DNS rebinding.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qsl, urlsplit

from fagan.errors import FaganError
from fagan.explore.explorer import Explorer
from fagan.explore.params import (
    DTYPES,
    MAX_UPLOAD_BYTES,
    RequestError,
    parse_choice,
    parse_image_request,
    parse_index,
    parse_upload_key,
    single_values,
)

__all__ = ["ASSETS", "ExploreServer", "read_asset", "make_server"]

#: The files the server serves: URL path -> (package data file, content type).
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/explore.js": ("explore.js", "text/javascript; charset=utf-8"),
    "/explore.css": ("explore.css", "text/css; charset=utf-8"),
}

_IMAGE_PARAMS = ("seed", "truncation", "seed2", "mix", "class")
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
#: The page may load its own files and data: URLs, and talk to this server only.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def read_asset(name: str) -> bytes:
    """One of the page's files shipped in ``fagan/explore/assets``."""
    return resources.files("fagan.explore").joinpath("assets", name).read_bytes()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ExploreServer(ThreadingHTTPServer):
    """A threading HTTP server holding the :class:`Explorer` its handlers answer from."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], explorer: Explorer) -> None:
        self.explorer = explorer
        self.loopback_only = _is_loopback(address[0])
        super().__init__(address, ExploreHandler)

    @property
    def url(self) -> str:
        """The page's address, as a browser takes it."""
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"


class _ExploreServer6(ExploreServer):
    address_family = socket.AF_INET6


def make_server(explorer: Explorer, host: str = "127.0.0.1", port: int = 7860) -> ExploreServer:
    """A bound (not yet serving) server; port 0 picks a free port.

    Raises:
        FaganError: the address cannot be used (port in use, unknown host, no permission).
    """
    if not 0 <= port <= 65535:
        raise FaganError(f"port must be from 0 to 65535, got {port}")
    cls = _ExploreServer6 if ":" in host else ExploreServer
    try:
        return cls((host, port), explorer)
    except OSError as error:
        reason = error.strerror or str(error)
        raise FaganError(f"cannot listen on {host}:{port}: {reason}") from None


class ExploreHandler(BaseHTTPRequestHandler):
    """Answers one request; every refusal is JSON and leaves the server serving."""

    server: ExploreServer
    #: answer malformed requests with a status line too (the base class assumes HTTP/0.9)
    default_request_version = "HTTP/1.0"
    #: seconds a connection may stay silent before it is dropped
    timeout = 30

    def version_string(self) -> str:
        """The ``Server`` header: no Python version."""
        return "fagan-explore"

    # ---------------------------------------------------------------- plumbing
    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the terminal shows the address and errors only."""

    def _send(
        self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, value: object, status: int = 200) -> None:
        self._send(status, json.dumps(value, allow_nan=False).encode(), "application/json")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors the base class finds (malformed request line, bad method) as JSON too."""
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self.close_connection = True
        self._json({"error": message or phrase}, code)

    def _guard(self, answer) -> None:
        try:
            if not self._host_allowed():
                raise RequestError("this server answers requests for localhost only", 403)
            answer()
        except RequestError as error:
            self._json({"error": str(error)}, error.status)
        except FaganError as error:
            self._json({"error": str(error)}, 400)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception as error:  # a bug: say so, keep serving
            traceback.print_exc(file=sys.stderr)
            self._json({"error": f"internal error: {type(error).__name__}"}, 500)

    def _host_allowed(self) -> bool:
        if not self.server.loopback_only:
            return True
        host = self.headers.get("Host")
        if host is None:
            return True  # HTTP/1.0 without Host: not a browser
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]").lower()
        return name in _LOOPBACK_NAMES

    def _params(self, allowed: tuple[str, ...]) -> dict[str, str]:
        query = urlsplit(self.path).query
        try:
            pairs = parse_qsl(
                query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=32
            )
        except ValueError as error:
            raise RequestError(f"malformed query string: {error}") from None
        return single_values(pairs, allowed)

    def _dtype(self, values: dict[str, str]) -> str:
        return parse_choice(values.get("dtype", "float16"), "dtype", DTYPES)

    # ---------------------------------------------------------------- methods
    def do_GET(self) -> None:
        self._guard(self._get)

    def do_HEAD(self) -> None:
        self._guard(self._get)

    def do_POST(self) -> None:
        self._guard(self._post)

    def _not_allowed(self) -> None:
        self._guard(self._refuse_method)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def _refuse_method(self) -> None:
        raise RequestError(f"method {self.command} is not allowed", 405)

    # ---------------------------------------------------------------- routes
    def _get(self) -> None:
        path = urlsplit(self.path).path
        explorer = self.server.explorer
        if path in ASSETS:
            self._params(())
            name, content_type = ASSETS[path]
            self._send(200, read_asset(name), content_type, {"Content-Security-Policy": _CSP})
        elif path == "/api/info":
            self._params(())
            self._json(explorer.info())
        elif path == "/api/generate":
            values = self._params((*_IMAGE_PARAMS, "dtype"))
            dtype = self._dtype(values)
            self._json(explorer.generate(parse_image_request(values, explorer.num_classes), dtype))
        elif path == "/api/image.png":
            values = self._params(_IMAGE_PARAMS)
            request = parse_image_request(values, explorer.num_classes)
            name = f"fagan_seed{request.seed}" + (
                f"_to{request.seed2}_{request.mix:.3f}" if request.seed2 is not None else ""
            )
            self._send(
                200,
                explorer.image_png(request),
                "image/png",
                {"Content-Disposition": f'inline; filename="{name}.png"'},
            )
        elif path == "/api/query":
            self._json(self._query())
        elif path == "/api/discriminate":
            raise RequestError(f"{path} takes POST", 405)
        else:
            raise RequestError(f"not found: {path[:200]}", 404)

    def _query(self) -> dict[str, object]:
        explorer = self.server.explorer
        values = self._params((*_IMAGE_PARAMS, "dtype", "net", "layer", "x", "y", "upload"))
        for name in ("net", "layer", "x", "y"):
            if name not in values:
                raise RequestError(f"missing parameter {name!r}")
        net = parse_choice(values["net"], "net", ("generator", "discriminator"))
        layer = values["layer"]
        x = parse_index(values["x"], "x", explorer.image_size)
        y = parse_index(values["y"], "y", explorer.image_size)
        if "upload" in values:
            if any(name in values for name in _IMAGE_PARAMS):
                raise RequestError("give either upload or seed, not both")
            return explorer.query(
                net,
                layer,
                x,
                y,
                upload=parse_upload_key(values["upload"]),
                dtype=self._dtype(values),
            )
        request = parse_image_request(values, explorer.num_classes)
        return explorer.query(net, layer, x, y, request=request, dtype=self._dtype(values))

    def _post(self) -> None:
        path = urlsplit(self.path).path
        if path != "/api/discriminate":
            raise RequestError(f"not found: {path[:200]}", 404 if path not in ASSETS else 405)
        values = self._params(("dtype", "class"))
        dtype = self._dtype(values)
        explorer = self.server.explorer
        label = None
        if "class" in values:
            if not explorer.num_classes:
                raise RequestError("this critic is unconditional: it takes no class")
            label = parse_index(values["class"], "class", explorer.num_classes)
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise RequestError("send the image with a Content-Length, not chunked", 411)
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.isdigit():
            self.close_connection = True
            raise RequestError("a Content-Length is needed", 411)
        length = int(length_text)
        if length > MAX_UPLOAD_BYTES:
            self.close_connection = True  # the body stays unread
            raise RequestError(
                f"the upload is {length} bytes; at most {MAX_UPLOAD_BYTES} are accepted", 413
            )
        data = self.rfile.read(length)
        if len(data) != length:
            raise RequestError("the upload ended before its Content-Length")
        self._json(
            explorer.discriminate_upload(data, self.headers.get("Content-Type", ""), dtype, label)
        )
