"""The agent runtime: tools declared with JSON schemas (tools.py), run as limited subprocesses
(sandbox.py; the calculator in calc.py), the loop whose every step the kernel constrains to a
tool call, a plan or an answer (runtime.py), and fork/join over a session's KV, the one
mechanism behind plans and the map step of summarize/translate (forks.py)."""
