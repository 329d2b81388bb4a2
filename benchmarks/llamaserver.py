"""llama-server on the same GGUF and workload, for `llmos bench serve --vs llama-server BINARY`.

llama-cpp-python does not ship llama-server; its source package carries llama.cpp, which builds it:

    pip download --no-deps --no-binary :all: llama-cpp-python && tar xzf llama_cpp_python-*.tar.gz
    cd llama_cpp_python-*/vendor/llama.cpp && cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \\
        && cmake --build build --target llama-server -j

The server runs with one slot per process (-np N, continuous batching, each slot a context of
input + output tokens), the same thread count as llmos; every process is one /completion request
with the same prompt token ids, greedy, exactly output_len tokens (ignore_eos), sent all at once
from N client threads. Output throughput = N x output_len / wall time from the first request to
the last answer (HTTP included, as llmos's figure includes its ABI when measured through it).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """A llama-server child process on 127.0.0.1 (stopped on exit)."""

    def __init__(self, binary: str, model: str, slots: int, slot_ctx: int, threads: int):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [binary, "-m", model, "--host", "127.0.0.1", "--port", str(self.port),
                    "-np", str(slots), "-c", str(slots * slot_ctx), "-t", str(threads), "-tb", str(threads),
                    "--cont-batching", "--no-webui"]
        self.proc = None

    def __enter__(self):
        import llmos
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=llmos.user_environ())       # as a user runs it (llmos/__init__.py)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited: {self.proc.stderr.read()[-600:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise RuntimeError("llama-server did not become healthy within 120 s")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def complete(self, prompt_ids: list[int], n: int) -> int:
        """One greedy completion of exactly n tokens; returns the tokens it reports generated."""
        body = json.dumps({"prompt": prompt_ids, "n_predict": n, "ignore_eos": True, "temperature": 0,
                           "cache_prompt": False}).encode()
        req = urllib.request.Request(self.url + "/completion", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=3600) as r:
            out = json.loads(r.read())
        return int(out.get("tokens_predicted", n))

    def serve(self, ids: list[list[int]], output_len: int) -> dict:
        """All prompts at once; output throughput over the whole run."""
        self.complete(ids[0][:8], 2)                       # warm-up
        t0 = time.perf_counter()
        with ThreadPoolExecutor(len(ids)) as pool:
            produced = sum(pool.map(lambda p: self.complete(p, output_len), ids))
        wall = time.perf_counter() - t0
        return {"duration_s": wall, "output_tokens": produced, "output_throughput": produced / wall}
