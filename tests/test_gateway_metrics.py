"""/metrics (parsed with prometheus_client's parser) and the kernel's COUNTERS syscall behind it."""

from __future__ import annotations

import errno
import getpass

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gatewaykit import env, k, settle, url  # noqa: F401 (fixtures)
from llmos.kernel.abi import Sys

USER = getpass.getuser()


def scrape(url: str) -> dict[tuple, float]:
    """{(sample name, frozenset(labels)): value} of one /metrics scrape."""
    r = httpx.get(url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def at(m: dict, name: str, **labels) -> float:
    labels.setdefault("model_name", "tiny-llama")
    return m.get((name, frozenset(labels.items())), 0.0)


def test_vllm_names_under_the_llmos_prefix(url):
    types = {f.name: f.type for f in text_string_to_metric_families(httpx.get(url + "/metrics").text)}
    for name, kind in (("llmos:num_requests_running", "gauge"), ("llmos:num_requests_waiting", "gauge"),
                       ("llmos:kv_cache_usage_perc", "gauge"), ("llmos:prefix_cache_queries", "counter"),
                       ("llmos:prefix_cache_hits", "counter"), ("llmos:num_preemptions", "counter"),
                       ("llmos:preemptions_by_mode", "counter"), ("llmos:prompt_tokens", "counter"),
                       ("llmos:generation_tokens", "counter"), ("llmos:request_success", "counter"),
                       ("llmos:time_to_first_token_seconds", "histogram"),
                       ("llmos:inter_token_latency_seconds", "histogram"),
                       ("llmos:e2e_request_latency_seconds", "histogram")):
        assert types.get(name) == kind, name


def test_a_request_moves_the_counters_by_its_usage(url, k):
    before = scrape(url)
    r = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0).completions.create(
        model="tiny-llama", prompt="count me", max_tokens=7, temperature=0, extra_body={"ignore_eos": True})
    after = scrape(url)

    def grew(name, **labels):
        return at(after, name, user=USER, **labels) - at(before, name, user=USER, **labels)
    assert grew("llmos:generation_tokens_total") == r.usage.completion_tokens == 7
    assert grew("llmos:prompt_tokens_total") == r.usage.prompt_tokens
    assert grew("llmos:request_success_total", finished_reason="length") == 1
    assert grew("llmos:time_to_first_token_seconds_count") == 1
    assert grew("llmos:e2e_request_latency_seconds_count") == 1
    assert grew("llmos:inter_token_latency_seconds_count") == 6
    assert grew("llmos:e2e_request_latency_seconds_bucket", le="+Inf") == 1
    assert grew("llmos:e2e_request_latency_seconds_sum") > 0


def test_gauges_follow_the_process_table(url, k):
    pid = k.spawn("held open", {"max_tokens": 4}, stdin=True)      # prefilled, then asleep
    try:
        for _ in range(100):
            if k.stat(pid)["state"] == "SLEEPING":
                break
        m = scrape(url)
        assert at(m, "llmos:num_requests_sleeping", user=USER) == 1
        k.kill(pid, "STOP")
        m = scrape(url)
        assert at(m, "llmos:num_requests_stopped", user=USER) == 1
        assert at(m, "llmos:num_requests_sleeping", user=USER) == 0
        used = k.meminfo()["kv"]["used"]
        assert used > 0 and at(m, "llmos:kv_cache_usage_perc") == used / k.meminfo()["kv"]["total"]
    finally:
        k.kill(pid, "KILL")
        k.wait(pid)


def test_counters_syscall_block_map_and_errors(k):
    pid = k.spawn("map my blocks " * 4, {"max_tokens": 4}, stdin=True)
    try:
        while k.stat(pid)["state"] != "SLEEPING":
            pass
        c = k.syscall(Sys.COUNTERS, True)
        assert len(c["blocks"]["held"][str(pid)]) == k.stat(pid)["blocks"] > 0
        assert c["kv"]["used"] + c["kv"]["cached"] + c["kv"]["free"] == c["kv"]["total"]
        assert "blocks" not in k.syscall(Sys.COUNTERS)
        with pytest.raises(OSError) as e:
            k.syscall(Sys.COUNTERS, "yes")
        assert e.value.errno == errno.EINVAL
    finally:
        k.kill(pid, "KILL")
        k.wait(pid)
    assert settle(k) == []
