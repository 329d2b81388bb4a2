"""Identity: Authorization: Bearer KEY -> llmos user from the keys file (mode 0600 enforced),
loopback only without keys, per-user processes and metrics, admin-only actions on others'
processes."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gatewaykit import env, environ, gateway, k, settle  # noqa: F401 (fixtures)
from llmos.userland import lib

ALICE, BOB = "alice-key-0123456789abcdef", "bob-key-0123456789abcdef00"


@pytest.fixture(scope="module")
def keys(env):
    path = os.path.join(env["LLMOS_HOME"], "gateway.keys")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(f"# key user [admin]\n{ALICE} alice admin\n{BOB} bob\n")
    return path


@pytest.fixture(scope="module")
def url(env, keys):
    with gateway(env) as url:          # the default keys file, $LLMOS_HOME/gateway.keys
        yield url


def start(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmos.shell.cli", "gateway", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_missing_and_bad_keys_are_401_in_openai_shape(url):
    r = httpx.post(url + "/v1/completions", json={"model": "tiny-llama", "prompt": "x"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "invalid_api_key" and r.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong-key-0123456789", max_retries=0).models.list()
    r = httpx.get(url + "/api/tags", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and set(r.json()) == {"error"}
    assert httpx.get(url + "/health").status_code == 200          # no key needed


def test_each_key_runs_as_its_user(url, k):
    for key, user in ((ALICE, "alice"), (BOB, "bob")):
        oa = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        r = oa.completions.create(model="tiny-llama", prompt="who am i", max_tokens=3, temperature=0,
                                  extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 3
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {BOB}"}).text
    tokens = {s.labels["user"]: s.value for f in text_string_to_metric_families(text)
              if f.name == "llmos:generation_tokens" for s in f.samples}
    assert tokens["alice"] == tokens["bob"] == 3


def test_only_admins_act_on_others_processes(url, env):
    with environ(env), lib.Client(user="alice", client="test-identity") as alice:
        pid = alice.spawn("alice's held prompt", {"max_tokens": 4}, stdin=True)
        try:
            r = httpx.post(url + "/dashboard/signal", json={"pid": pid, "signal": "STOP"},
                           headers={"Authorization": f"Bearer {BOB}"})
            assert r.status_code == 403 and "admin" in r.json()["error"]["message"]
            assert alice.stat(pid)["state"] != "STOPPED"
            r = httpx.post(url + "/dashboard/nice", json={"pid": pid, "nice": 5},
                           headers={"Authorization": f"Bearer {ALICE}"})
            assert r.status_code == 200 and alice.stat(pid)["nice"] == 5
            with lib.Client(user="bob", client="test-identity") as bob:
                bpid = bob.spawn("bob's held prompt", {"max_tokens": 4}, stdin=True)
                r = httpx.post(url + "/dashboard/signal", json={"pid": bpid, "signal": "KILL"},
                               headers={"Authorization": f"Bearer {ALICE}"})     # alice is admin
                assert r.status_code == 200 and bob.wait(bpid)["reason"] == "signal"
                r = httpx.post(url + "/dashboard/signal", json={"pid": 10**6, "signal": "KILL"},
                               headers={"Authorization": f"Bearer {ALICE}"})
                assert r.status_code == 404
        finally:
            alice.kill(pid, "KILL")
            alice.wait(pid)


def test_keys_file_must_be_private(env, keys):
    os.chmod(keys, 0o644)
    try:
        r = start(env, "--listen", "127.0.0.1:1")
        assert r.returncode == 1 and "chmod 600" in r.stderr
    finally:
        os.chmod(keys, 0o600)
    bad = os.path.join(env["LLMOS_HOME"], "bad.keys")
    with open(os.open(bad, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write("short alice\n")
    r = start(env, "--keys", bad)
    assert r.returncode == 1 and "at least 16" in r.stderr


def test_without_keys_only_loopback(env, tmp_path):
    r = start({**env, "LLMOS_HOME": str(tmp_path)}, "--listen", "0.0.0.0:8000")
    assert r.returncode == 1 and "loopback only" in r.stderr
