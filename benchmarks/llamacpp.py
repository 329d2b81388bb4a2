"""llama.cpp on the same GGUF, timed the way `llmos bench forward` times llmos (for `--vs llama.cpp`).

Uses llama-cpp-python's low-level API (the optional `bench` extra: pip install 'llmos[bench]',
which builds llama.cpp from source for this CPU): one context with a unified KV cache for up to
64 sequences, batches filled by hand as llama-batched-bench does. Figures are tokens per second.
``measure`` runs it in a child process with the user's environment, as a user would run
llama.cpp: this file imports nothing of llmos, so neither llmos's OpenMP wait policy (see
llmos/__init__.py) nor torch's OpenMP runtime reaches it.
"""

from __future__ import annotations

import ctypes
import json
import statistics
import subprocess
import sys
import time


class LlamaCpp:
    """One llama.cpp model + context with `threads` threads and room for `n_seq` sequences."""

    def __init__(self, path: str, threads: int, n_ctx: int, n_seq: int = 64):
        import llama_cpp as L               # optional dependency: imported only when asked for
        self.L = L
        self._quiet = L.llama_log_callback(lambda level, text, data: None)
        L.llama_log_set(self._quiet, ctypes.c_void_p())
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, 512, 512, n_seq
        cp.n_threads = cp.n_threads_batch = threads
        cp.kv_unified = True
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.batch = L.llama_batch_init(512, 0, n_seq)
        self.mem = L.llama_get_memory(self.ctx)

    def close(self) -> None:
        L = self.L
        L.llama_batch_free(self.batch)
        L.llama_free(self.ctx)
        L.llama_model_free(self.model)

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> float:
        """One llama_decode of (token, pos, seq, wants_logits) entries; returns its seconds."""
        b = self.batch
        b.n_tokens = len(entries)
        for i, (tok, pos, seq, logits) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, int(logits)
            b.seq_id[i][0] = seq
        t = time.perf_counter()
        rc = self.L.llama_decode(self.ctx, b)
        self.L.llama_synchronize(self.ctx)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        return time.perf_counter() - t

    def prefill(self, seq: int, n: int, start: int = 0) -> float:
        """Prefill n tokens of sequence `seq` in chunks of 512; returns the total seconds."""
        total = 0.0
        for c in range(0, n, 512):
            m = min(512, n - c)
            total += self.decode([(1 + (start + c + i) % 100, start + c + i, seq, c + i == n - 1)
                                  for i in range(m)])
        return total

    def decode_tok_s(self, batch: int, context: int, steps: int) -> float:
        """Tokens/s of decode steps of `batch` sequences that each hold `context` tokens."""
        self.L.llama_memory_clear(self.mem, True)
        self.prefill(0, context)
        for s in range(1, batch):                      # the same prefix for every sequence
            self.L.llama_memory_seq_cp(self.mem, 0, s, -1, -1)
        times = [self.decode([(1 + (i + step) % 100, context + step, i, True) for i in range(batch)])
                 for step in range(steps + 2)]
        return batch / statistics.median(times[2:])

    def prefill_tok_s(self, n: int, repeats: int = 3) -> float:
        """Tokens/s of prefilling one fresh sequence of n tokens (best of `repeats`)."""
        best = float("inf")
        for _ in range(repeats):
            self.L.llama_memory_clear(self.mem, True)
            best = min(best, self.prefill(0, n))
        return n / best


def measure(path: str, threads: int, n_ctx: int, batches: list[int], context: int, steps: int,
            prefill: int) -> dict[str, float]:
    """Tokens/s per figure ('decode b1', ..., 'prefill 512'), from a child process."""
    import llmos
    job = {"path": path, "threads": threads, "n_ctx": n_ctx, "batches": batches, "context": context,
           "steps": steps, "prefill": prefill}
    r = subprocess.run([sys.executable, __file__, json.dumps(job)], capture_output=True, text=True,
                       env=llmos.user_environ(), timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"llama.cpp run failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _child(job: dict) -> dict[str, float]:
    llm = LlamaCpp(job["path"], job["threads"], job["n_ctx"])
    out = {f"decode b{b}": llm.decode_tok_s(b, job["context"], job["steps"]) for b in job["batches"]}
    if job["prefill"]:
        out[f"prefill {job['prefill']}"] = llm.prefill_tok_s(job["prefill"])
    llm.close()
    return out


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
