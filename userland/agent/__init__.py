"""The agent runtime: tools declared with JSON schemas (tools.py), run as limited subprocesses
(sandbox.py; the calculator in calc.py), and the loop whose every step the kernel constrains to a
tool call or an answer, with planning by fork (runtime.py)."""
