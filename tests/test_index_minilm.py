"""Retrieval with the real models (slow): a daemon on SmolLM2 with all-MiniLM-L6-v2 as its
encoder, a small corpus generated here (fictional facts, so the model cannot know the answers),
and fixed questions worded differently from the facts. Every question must find the chunk that
holds its fact in the top 3 of 12 (about a paragraph each) of `llmos index search`, and `llmos ask` must cite it as file:line."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from llmos.drivers import catalog
from llmos.kernel import abi

pytestmark = pytest.mark.slow

# file -> paragraphs; each question names the (file, paragraph index) that answers it
CORPUS = {
    "geology/volcanoes.md": [
        "# Volcanoes of the Tamsu archipelago",
        "Mount Keralo is the tallest volcano on Tamsu island. It last erupted in 1911, and its crater "
        "now holds a green acid lake that visitors reach by a six-hour trail.",
        "Pelleron is a shield volcano to the south. Its lava flows are slow and wide, and the village "
        "of Ostra was built on a flow that cooled in the year 1640.",
        "Seismologists keep three listening stations on the ridge between the two mountains.",
    ],
    "kitchen/bread.md": [
        "# Bread at the Hollin bakery",
        "The Hollin rye loaf is made from dark rye flour, water, salt and a sourdough starter. The "
        "dough rises for fourteen hours in a cold cellar and bakes at 240 degrees for fifty minutes.",
        "Their white sandwich bread uses milk and butter and is sold sliced every morning at seven.",
        "Leftover loaves go to the Ostra food bank on Fridays.",
    ],
    "travel/trains.txt": [
        "Night trains",
        "The night train from Velmar to Oskarsby leaves platform 9 at 22:40. It has sleeping cars "
        "with two berths each and arrives at 07:15 the next morning.",
        "Tickets for bicycles must be bought in advance; only six bicycles fit on each train.",
        "The dining car closes at midnight and reopens for breakfast an hour before arrival.",
    ],
    "club/chess.txt": [
        "Chess club rules",
        "The Wednesday tournament uses a clock of fifteen minutes per player with a five-second "
        "increment. Late players lose five minutes from their clock.",
        "Membership costs forty crowns a year; students pay half.",
        "The club library lends opening books for two weeks at a time.",
    ],
    "garden/tomatoes.md": [
        "# Growing tomatoes",
        "Sow tomato seeds indoors eight weeks before the last frost, then plant the seedlings out "
        "when nights stay above ten degrees.",
        "Water deeply twice a week rather than a little every day, and pinch out side shoots.",
        "Yellow leaves at the bottom of the plant usually mean it needs more nitrogen.",
    ],
}
QUESTIONS = [
    ("When did the Keralo volcano last erupt?", "geology/volcanoes.md", 1),
    ("What is in the crater of Mount Keralo?", "geology/volcanoes.md", 1),
    ("How long does the rye dough rise before baking?", "kitchen/bread.md", 1),
    ("What time does the overnight train to Oskarsby depart?", "travel/trains.txt", 1),
    ("How many bikes can the train carry?", "travel/trains.txt", 2),
    ("What time control is used in the weekly chess tournament?", "club/chess.txt", 1),
    ("How much does a chess club membership cost?", "club/chess.txt", 2),
    ("When should I start tomato seeds?", "garden/tomatoes.md", 1),
    ("Why are the lower leaves of my tomato plant turning yellow?", "garden/tomatoes.md", 3),
]


def line_of(name: str, para: int) -> int:
    """1-based line of paragraph `para` in the generated file (paragraphs are one line each,
    separated by blank lines)."""
    return 2 * para + 1


def llmos(*args, env, cwd, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmos.shell.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def world(smollm2_path, tmp_path_factory):
    base = tmp_path_factory.mktemp("retrieval")
    corpus = base / "corpus"
    for name, paras in CORPUS.items():
        (corpus / name).parent.mkdir(parents=True, exist_ok=True)
        (corpus / name).write_text("\n\n".join(paras) + "\n")
    rt = Path(tempfile.mkdtemp(prefix="llmos-r-"))
    env = dict(os.environ, LLMOS_RUNTIME_DIR=str(rt), LLMOS_HOME=str(base / "home"), PYTHONUNBUFFERED="1",
               LLMOS_EMBED_MODEL=str(catalog.pull("minilm")))
    r = llmos("serve", "--daemon", "--model", smollm2_path, env=env, cwd=base)
    assert r.returncode == 0, r.stderr
    pid = int(abi.pid_path(rt).read_text())
    r = llmos("index", "add", "--max-chars", "200", ".", env=env, cwd=corpus)    # a chunk per paragraph
    assert r.returncode == 0, r.stderr
    assert int(re.match(r"indexed 5 files \((\d+) chunks\)", r.stdout).group(1)) >= 12, r.stdout
    yield env, corpus
    llmos("stop", env=env, cwd=base)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    shutil.rmtree(rt, ignore_errors=True)


def hits(stdout: str) -> list[tuple[str, int, int]]:
    out = []
    for line in stdout.splitlines():
        m = re.match(r"\s*[\d.]+\s+(\S+):(\d+)-(\d+)\s", line)
        if m:
            out.append((m.group(1), int(m.group(2)), int(m.group(3))))
    return out


def test_every_question_finds_its_chunk_in_the_top_3(world):
    env, corpus = world
    missed = []
    for q, name, para in QUESTIONS:
        r = llmos("index", "search", "-k", "3", q, env=env, cwd=corpus)
        assert r.returncode == 0, r.stderr
        line = line_of(name, para)
        if not any(f == name and s <= line <= e for f, s, e in hits(r.stdout)):
            missed.append((q, name, line, r.stdout))
    assert not missed, missed


def test_ask_cites_the_chunk_that_holds_the_answer(world):
    env, corpus = world
    q, name, para = QUESTIONS[3]
    r = llmos("ask", "-k", "3", "--max-tokens", "48", q, env=env, cwd=corpus)
    assert r.returncode == 0, r.stderr
    answer, sources = r.stdout.split("\nSources:\n")
    cited = [(f, int(s), int(e)) for f, s, e in re.findall(r"\]\s+(\S+):(\d+)-(\d+)", "\n" + sources)]
    line = line_of(name, para)
    assert any(f == name and s <= line <= e for f, s, e in cited), r.stdout
    print(r.stdout)
