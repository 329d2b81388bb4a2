"""`llmos serve --daemon --http HOST:PORT`: the gateway starts beside the kernel, answers once the
kernel does, and exits with it; a bad address is refused before anything starts."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx

from gatewaykit import free_port, llmos


def test_serve_http_starts_and_stops_with_the_kernel(tiny_model_path):
    rt = Path(tempfile.mkdtemp(prefix="llmos-gws-"))
    env = dict(os.environ, LLMOS_RUNTIME_DIR=str(rt / "run"), LLMOS_HOME=str(rt / "home"))
    url = f"http://127.0.0.1:{free_port()}"
    try:
        r = llmos("serve", "--daemon", "--http", url[7:], "--model", tiny_model_path, "--kv-blocks", "64",
                  "--dtype", "fp32", env=env)
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, (rt / "run" / "gateway.log").read_text()
                time.sleep(0.2)
        assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == "tiny-llama"
        assert llmos("stop", env=env).returncode == 0
        deadline = time.monotonic() + 20
        while True:                                   # the gateway exits with the kernel
            try:
                httpx.get(url + "/health", timeout=1)
            except httpx.ConnectError:
                break
            except httpx.TransportError:          # accepted while it shut down, then dropped: ask again
                pass
            assert time.monotonic() < deadline, "the gateway outlived the kernel"
            time.sleep(0.2)
        r = llmos("serve", "--daemon", "--http", "nowhere", "--model", tiny_model_path, env=env)
        assert r.returncode == 2 and r.stderr == "llmos serve: --http wants HOST:PORT, got 'nowhere'\n"
    finally:
        llmos("stop", env=env)
        shutil.rmtree(rt, ignore_errors=True)
