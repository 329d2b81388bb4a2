"""The calculator tool: arithmetic parsed with `ast` and evaluated over a whitelist, never eval().

Allowed: int and float literals, + - * / // % ** (exponents up to 1000 and results up to 10**1000
digits' worth, so `9**9**9` is refused, not computed), unary + -, parentheses, the names pi, e,
tau, and the functions abs round min max sqrt exp log log10 sin cos tan floor ceil. Anything else
(names, attributes, calls of other things, comprehensions, strings) is a CalcError naming it.
"""

from __future__ import annotations

import ast
import math
import operator

MAX_CHARS = 500
MAX_EXPONENT = 1000
MAX_DIGITS = 1000

BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
          ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
          ast.Pow: operator.pow}
UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
NAMES = {"pi": math.pi, "e": math.e, "tau": math.tau}
FUNCTIONS = {"abs": abs, "round": round, "min": min, "max": max, "sqrt": math.sqrt, "exp": math.exp,
             "log": math.log, "log10": math.log10, "sin": math.sin, "cos": math.cos, "tan": math.tan,
             "floor": math.floor, "ceil": math.ceil}


class CalcError(ValueError):
    """An expression the calculator refuses or cannot evaluate; the message says why."""


def evaluate(expression: str) -> int | float:
    if not isinstance(expression, str) or not expression.strip():
        raise CalcError("an expression is a non-empty string")
    if len(expression) > MAX_CHARS:
        raise CalcError(f"expression of {len(expression)} chars exceeds {MAX_CHARS}")
    try:
        tree = ast.parse(expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/"),
                         mode="eval")
    except SyntaxError as e:
        raise CalcError(f"not an arithmetic expression: {e.msg}") from None
    try:
        return _eval(tree.body)
    except (ZeroDivisionError, OverflowError, ValueError, TypeError) as e:
        if isinstance(e, CalcError):
            raise
        raise CalcError(f"{type(e).__name__}: {e}") from None


def _eval(node):
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > MAX_EXPONENT or
                                             abs(left) > 1 and abs(right) * math.log10(abs(left)) > MAX_DIGITS):
            raise CalcError(f"{left} ** {right} is too large")
        return BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Name) and node.id in NAMES:
        return NAMES[node.id]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
            and not node.keywords and node.args):
        return FUNCTIONS[node.func.id](*[_eval(a) for a in node.args])
    what = node.id if isinstance(node, ast.Name) else type(node).__name__
    raise CalcError(f"not allowed in an expression: {what}")


def format_number(x: int | float) -> str:
    """12.0 -> '12', 0.1+0.2 -> '0.3' (12 significant digits), big ints in full."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.12g}" if isinstance(x, float) else str(x)
