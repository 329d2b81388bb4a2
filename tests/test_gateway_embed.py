"""Embeddings through the gateway: OpenAI's /v1/embeddings (float and base64, as the openai client
asks by default) and Ollama's /api/embed, answered by the kernel's encoder model (syscall EMBED, on
the tiny generated BERT); a kernel without that syscall answers 501 in OpenAI's shape."""

from __future__ import annotations

import httpx
import ollama
import openai
import pytest

from gatewaykit import environ, kernel, url  # noqa: F401 (fixtures)
from llmos.kernel.abi import Sys
from llmos.userland import lib

HAS_EMBED = hasattr(Sys, "EMBED")


@pytest.fixture(scope="module")
def env(tiny_model_path, tmp_path_factory):
    if HAS_EMBED:
        import tinybert
        bert = tinybert.build_tiny_bert(tmp_path_factory.mktemp("tinybert") / "tiny-bert")
        with kernel(tiny_model_path, LLMOS_EMBED_MODEL=str(bert)) as env:
            yield env
    else:
        with kernel(tiny_model_path) as env:
            yield env


@pytest.mark.skipif(HAS_EMBED, reason="this kernel has the EMBED syscall (tested below)")
def test_without_the_syscall_it_is_501(url):
    r = httpx.post(url + "/v1/embeddings", json={"model": "any", "input": "x"})
    assert r.status_code == 501 and "embedding" in r.json()["error"]["message"]


@pytest.mark.skipif(not HAS_EMBED, reason="this kernel has no EMBED syscall (tested above)")
def test_openai_and_ollama_embeddings_are_the_kernels(url, env):
    texts = ["a red river", "the blue sky", "a red river"]
    with environ(env), lib.Client(client="test-embed") as k:
        want = k.syscall(Sys.EMBED, texts)
    oa = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    got = oa.embeddings.create(model="tiny-bert", input=texts)               # base64 on the wire
    assert [d.index for d in got.data] == [0, 1, 2]
    for d, w in zip(got.data, want):
        assert d.embedding == pytest.approx(w, abs=1e-6)
    one = oa.embeddings.create(model="tiny-bert", input="the blue sky", encoding_format="float")
    assert one.data[0].embedding == pytest.approx(want[1], abs=1e-6)
    r = ollama.Client(host=url).embed(model="tiny-bert", input=texts[:2])
    assert r.embeddings[0] == pytest.approx(want[0], abs=1e-6) and len(r.embeddings) == 2
    bad = httpx.post(url + "/v1/embeddings", json={"model": "tiny-bert", "input": [1, 2, 3]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"
