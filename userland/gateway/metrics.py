"""/metrics: the kernel's COUNTERS (one syscall per scrape) in Prometheus' text format, named as
vLLM names them with the ``llmos:`` prefix instead of ``vllm:``, labelled by model_name and, where
the kernel keeps them per user, by user. So Grafana dashboards made for vLLM work with the prefix
changed.

    llmos:num_requests_running / _waiting / _stopped / _sleeping   gauge, per user
    llmos:kv_cache_usage_perc                  gauge, used KV blocks / all (0..1)
    llmos:kv_cache_blocks{state}               gauge, blocks free / used / cached / swapped
    llmos:prefix_cache_queries / _hits         counter (tokens looked up / found)
    llmos:num_preemptions                      counter, per user
    llmos:preemptions_by_mode{mode}            counter, swap / recompute
    llmos:prompt_tokens / generation_tokens    counter, per user
    llmos:request_success{finished_reason}     counter, per user
    llmos:time_to_first_token_seconds, llmos:inter_token_latency_seconds,
    llmos:e2e_request_latency_seconds          histograms, per user (kernel/ledger.py says how)
(prometheus_client adds ``_total`` to counters, as it does for vLLM's.)
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmos.kernel.abi import Sys

from .app import Gateway

P = "llmos:"
HISTOGRAMS = {"ttft": ("time_to_first_token_seconds", "Time to first token (s)."),
              "itl": ("inter_token_latency_seconds", "Inter-token latency (s)."),
              "e2e": ("e2e_request_latency_seconds", "End-to-end request latency (s).")}


def routes() -> list[Route]:
    return [Route("/metrics", metrics)]


async def metrics(request: Request) -> Response:
    gw: Gateway = request.app.state.gw
    who = gw.who(request)
    model = (await gw.uname(who))["model"]
    c = await gw.call(who, "syscall", Sys.COUNTERS)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot(c, model))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class Snapshot:
    """A prometheus_client collector over one COUNTERS reply."""

    def __init__(self, c: dict, model: str):
        self.c, self.model = c, model

    def collect(self):
        c, m = self.c, self.model
        users = sorted(c["users"].items())
        for state in ("running", "waiting", "stopped", "sleeping"):
            g = GaugeMetricFamily(f"{P}num_requests_{state}", f"Processes {state.upper()} "
                                  f"({'NEW or READY' if state == 'waiting' else state.upper()}).",
                                  labels=["model_name", "user"])
            for user, u in users:
                g.add_metric([m, user], u[state])
            yield g
        kv = c["kv"]
        g = GaugeMetricFamily(f"{P}kv_cache_usage_perc", "KV-cache usage (1 = every block in use).",
                              labels=["model_name"])
        g.add_metric([m], kv["used"] / kv["total"] if kv["total"] else 0.0)
        yield g
        g = GaugeMetricFamily(f"{P}kv_cache_blocks", "KV blocks by state.", labels=["model_name", "state"])
        for state in ("free", "used", "cached", "swapped"):
            g.add_metric([m, state], kv[state])
        yield g
        for name, key, doc in (("prefix_cache_queries", "queries", "Prompt tokens looked up in the prefix cache."),
                               ("prefix_cache_hits", "hits", "Prompt tokens found in the prefix cache.")):
            yield _counter(name, doc, [([m], c["prefix_cache"][key])], ["model_name"])
        yield _counter("preemptions_by_mode", "Evictions of a process's KV, by swap or recompute.",
                       [([m, mode], n) for mode, n in sorted(c["preemptions"].items())], ["model_name", "mode"])
        for name, key, doc in (("num_preemptions", "preemptions", "Preemptions of running processes."),
                               ("prompt_tokens", "prompt_tokens", "Prompt tokens (input) of processes."),
                               ("generation_tokens", "generation_tokens", "Generated tokens.")):
            yield _counter(name, doc, [([m, user], u[key]) for user, u in users], ["model_name", "user"])
        yield _counter("request_success", "Processes that exited, by reason.",
                       [([m, user, r], n) for user, u in users for r, n in sorted(u["finished"].items())],
                       ["model_name", "user", "finished_reason"])
        for key, (name, doc) in HISTOGRAMS.items():
            h = HistogramMetricFamily(f"{P}{name}", doc, labels=["model_name", "user"])
            bounds = [str(float(b)) for b in c["buckets"][key]] + ["+Inf"]
            for user, u in users:
                running, buckets = 0, []
                for bound, n in zip(bounds, u[key]["counts"]):
                    running += n
                    buckets.append((bound, running))
                h.add_metric([m, user], buckets, u[key]["sum"])
            yield h


def _counter(name: str, doc: str, rows, labels) -> CounterMetricFamily:
    f = CounterMetricFamily(f"{P}{name}", doc, labels=labels)
    for values, n in rows:
        f.add_metric(values, n)
    return f
