"""CML Model adapter for sealserve.

A Cloudera ML (CML) Model is a Python function that CML's model runtime calls
with the parsed JSON request and whose return value it sends back; it is not an
HTTP server. This module makes `serve` answer such calls:

- on import it starts /usr/local/bin/serve (the "sealserve GPU" runtime's
  binary; SEALSERVE_SERVE overrides the path) on a free loopback port and waits
  until GET /ready answers 200, i.e. until the sealed model was verified,
  loaded and warmed up; it then reads GET /info once;
- `predict(args)` (also exported as `embed` and `chat`) forwards `args` to serve:
    * the model is a generation model (/info "kind" is "generation"):
      POST /v1/chat/completions, `args` in OpenAI's chat shape;
    * otherwise, with an "input" field: POST /v1/embeddings (OpenAI shape),
      serve's JSON response is returned as is;
    * otherwise: POST /embed (TEI shape, {"inputs": ...}); returns
      {"embeddings": [[...]], "model": "<model id>"}.
  On PBJ runtimes the function is registered with `cml.models_v1.cml_model`;
  where that module is absent (legacy engines, tests) it is a plain function.

Create the Model with file runtime-image/cml_model.py and function `predict`
on the "sealserve GPU" runtime; settings come from the environment as for the
Application (SEALSERVE_DEVICE, SEALSERVE_API_KEY, ...). serve's trust anchor is
the runtime's /etc/sealserve/trust (SEALSERVE_TRUSTED_KEYS_DIR): without it
serve refuses to start and this module raises at import, which CML reports as a
failed Model build/deployment.

Environment: SEALSERVE_SERVE (serve's path), SEALSERVE_CML_READY_TIMEOUT
(seconds to wait for /ready, default 600), SEALSERVE_API_KEY (sent to serve
as a bearer token when set).
"""

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

SERVE = os.environ.get("SEALSERVE_SERVE", "/usr/local/bin/serve")
READY_TIMEOUT = float(os.environ.get("SEALSERVE_CML_READY_TIMEOUT", "600"))
REQUEST_TIMEOUT = 300.0


class ServeError(RuntimeError):
    """serve could not be started or answered with an error."""


def _free_loopback_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _headers():
    headers = {"Content-Type": "application/json"}
    key = os.environ.get("SEALSERVE_API_KEY")
    if key:
        headers["Authorization"] = "Bearer " + key
    return headers


class _Server:
    """The serve child process on 127.0.0.1:<port>."""

    def __init__(self):
        if not os.path.isfile(SERVE):
            raise ServeError(
                SERVE + " not found: run this Model on the 'sealserve GPU' runtime"
            )
        self.port = _free_loopback_port()
        self.base = "http://127.0.0.1:%d" % self.port
        env = dict(os.environ)
        # serve reads HOST/PORT/CDSW_APP_PORT as its address; the flags below must win.
        for name in ("HOST", "PORT", "CDSW_APP_PORT"):
            env.pop(name, None)
        self.process = subprocess.Popen(
            [SERVE, "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdin=subprocess.DEVNULL,
            # serve's log lines go to stderr: stdout stays the model runtime's.
            stdout=sys.stderr.fileno() if hasattr(sys.stderr, "fileno") else subprocess.DEVNULL,
        )
        atexit.register(self.stop)
        self._wait_ready()
        self.info = self.call("GET", "/info")

    def _wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise ServeError(
                    "serve exited with status %d before it was ready (see its log above)" % code
                )
            try:
                with urllib.request.urlopen(self.base + "/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise ServeError("serve was not ready within %.0f s" % READY_TIMEOUT)

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers=_headers()
        )
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", "replace")
            raise ServeError("serve answered %d on %s: %s" % (error.code, path, detail))

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _registered(function):
    try:
        import cml.models_v1 as models  # PBJ runtimes ship it
    except ImportError:
        return function
    return models.cml_model(function)


_server = _Server()
_generation = _server.info.get("kind") == "generation"
print(
    "cml_model: serve ready on %s (%s model %s)"
    % (_server.base, "generation" if _generation else "embedding", _server.info.get("model_id")),
    file=sys.stderr,
)


@_registered
def predict(args):
    """Forwards one CML Model request to serve; see the module documentation."""
    if not isinstance(args, dict):
        raise ServeError("expected a JSON object, got %s" % type(args).__name__)
    if _generation:
        return _server.call("POST", "/v1/chat/completions", args)
    if "input" in args:
        return _server.call("POST", "/v1/embeddings", args)
    embeddings = _server.call("POST", "/embed", args)
    return {"embeddings": embeddings, "model": _server.info.get("model_id")}


embed = predict
chat = predict
