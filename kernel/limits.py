"""Limits per user and per group of users, like cgroups: processes, KV blocks, tokens per minute,
context length, and how far below 0 a user may nice.

Rules come from a TOML file (``llmos serve --limits FILE``; default ``$LLMOS_HOME/limits.toml``)
and from admins at run time (syscall LIMITS); a scope is ``default``, ``user:NAME`` or
``group:NAME`` (a Unix group: the limit holds for its members together)::

    [default]
    max_procs = 256
    [user.alice]
    tokens_per_min = 6000
    nice_min = -5          # alice may nice down to -5 without being an admin
    [group.students]
    max_kv_blocks = 4096

A user is bound by every scope that names it (its own, its groups', the default); the first one
exceeded answers EAGAIN (processes, tokens per minute: try later) or EDQUOT (KV blocks), E2BIG
(context), with a message naming the limit, the scope and the usage; breaches are logged for audit.
KV blocks are counted as committed (each live process's context plus what it may still generate,
in blocks), so a process admitted within its user's quota never has to be stopped for it.
Tokens per minute are a throttle: the scheduler skips a user's processes while its last 60 s of
generated tokens exceed it (kernel/sched.py asks `throttled`). Everything runs on the kernel's
thread; usage is computed from the process table when asked (spawn, fork, write, LIMITS).
"""

from __future__ import annotations

import errno as E
import grp
import logging
import pwd
import time
import tomllib
from collections import defaultdict, deque
from pathlib import Path

from .procops import KernelError

log = logging.getLogger("llmos.kernel")

KEYS = {  # name -> (lowest value, highest value)
    "max_procs": (1, 1 << 20),
    "max_kv_blocks": (1, 1 << 40),
    "tokens_per_min": (1, 1 << 40),
    "max_context": (2, 1 << 30),
    "nice_min": (-20, 0),
}
DEFAULT = {"max_procs": 1024}            # one user cannot fill the whole 4,096-entry process table
WINDOW_S = 60.0
BUCKET_S = 0.05           # token counts within this of each other share one history entry


class LimitsError(ValueError):
    """A limits file or change that cannot be applied: one line naming it and the problem."""


def check_scope(scope: str) -> str:
    kind, _, name = scope.partition(":")
    if scope == "default":
        return scope
    if kind == "user" and name:
        try:
            pwd.getpwnam(name)
        except KeyError:
            raise LimitsError(f"{scope}: no such user") from None
        return scope
    if kind == "group" and name:
        try:
            grp.getgrnam(name)
        except KeyError:
            raise LimitsError(f"{scope}: no such group") from None
        return scope
    raise LimitsError(f"{scope!r}: a scope is 'default', 'user:NAME' or 'group:NAME'")


def check_values(scope: str, values) -> dict[str, int | None]:
    """{limit: int, or None to remove it}; LimitsError names the bad key or value."""
    if not isinstance(values, dict) or not values:
        raise LimitsError(f"{scope}: limits are a non-empty map of {', '.join(sorted(KEYS))}")
    out = {}
    for key, v in values.items():
        if key not in KEYS:
            raise LimitsError(f"{scope}: unknown limit {str(key)[:40]!r} (known: {', '.join(sorted(KEYS))})")
        lo, hi = KEYS[key]
        if v is not None and (type(v) is not int or not lo <= v <= hi):
            raise LimitsError(f"{scope}: {key} must be an int in [{lo}, {hi}] (or nil to remove), got {v!r}"[:160])
        out[key] = v
    return out


def load(path: Path) -> dict[str, dict[str, int]]:
    """Rules from a TOML file: {scope: {limit: value}}."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise LimitsError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise LimitsError(f"{path}: {e}") from None
    rules: dict[str, dict[str, int]] = {}
    for section, body in data.items():
        if section == "default":
            entries = {"default": body}
        elif section in ("user", "group") and isinstance(body, dict):
            entries = {f"{section}:{name}": v for name, v in body.items()}
        else:
            raise LimitsError(f"{path}: unknown section [{section}] (use [default], [user.NAME], [group.NAME])")
        for scope, values in entries.items():
            try:
                rules[check_scope(scope)] = {k: v for k, v in check_values(scope, values).items()}
            except LimitsError as e:
                raise LimitsError(f"{path}: {e}") from None
    return rules


class Limits:
    def __init__(self, rules: dict[str, dict[str, int]] | None = None):
        self.rules: dict[str, dict[str, int]] = {"default": dict(DEFAULT)}
        for scope, values in (rules or {}).items():
            self.rules.setdefault(scope, {}).update({k: v for k, v in values.items() if v is not None})
        self._tokens: dict[str, deque] = defaultdict(deque)    # user -> (time, tokens) of the last minute
        self._members: dict[str, frozenset[str]] = {}

    # ---- who is bound by what ---------------------------------------------------------------
    def scopes_of(self, user: str) -> list[str]:
        """The scopes that bind user, most specific first."""
        out = [f"user:{user}"] if f"user:{user}" in self.rules else []
        out += [s for s in self.rules if s.startswith("group:") and user in self._group(s[6:])]
        return out + ["default"]

    def _group(self, name: str) -> frozenset[str]:
        members = self._members.get(name)
        if members is None:
            try:
                g = grp.getgrnam(name)
                members = frozenset(g.gr_mem) | {p.pw_name for p in pwd.getpwall() if p.pw_gid == g.gr_gid}
            except KeyError:
                members = frozenset()
            self._members[name] = members
        return members

    def _users_of(self, scope: str, engine) -> set[str]:
        if scope.startswith("user:"):
            return {scope[5:]}
        owners = {p.owner for p in engine.procs.all()} | set(self._tokens)
        if scope.startswith("group:"):
            return owners & self._group(scope[6:])
        return owners

    # ---- usage ------------------------------------------------------------------------------
    def usage(self, engine, users: set[str]) -> dict[str, int]:
        """Summed usage of users: processes, committed KV blocks, tokens in the last minute."""
        bs, procs, blocks = engine.kv.block_size, 0, 0
        for p in engine.procs.all():
            if p.owner in users:
                procs += 1
                if p.alive:
                    blocks += self._commitment(p, bs)
        return {"max_procs": procs, "max_kv_blocks": blocks,
                "tokens_per_min": sum(self._recent(u) for u in users)}

    @staticmethod
    def _commitment(p, bs: int) -> int:
        left = max(0, p.params.max_tokens - p.turn_tokens)
        return -(-(len(p.tokens) + left) // bs)

    def _recent(self, user: str, now: float | None = None) -> int:
        q = self._tokens.get(user)
        if not q:
            return 0
        cut = (now or time.monotonic()) - WINDOW_S
        while q and q[0][0] < cut:
            q.popleft()
        return sum(n for _, n in q)

    # ---- checks (syscall boundary) ------------------------------------------------------------
    def check_new(self, engine, user: str, tokens: int, max_tokens: int) -> None:
        """May `user` start one more process of `tokens` context that may generate `max_tokens`?"""
        bs = engine.kv.block_size
        want = {"max_procs": 1, "max_kv_blocks": -(-(tokens + max_tokens) // bs), "tokens_per_min": 0}
        for scope in self.scopes_of(user):
            rule = self.rules[scope]
            ctx = rule.get("max_context")
            if ctx is not None and tokens >= ctx:
                self._breach(user, scope, f"max_context={ctx}: a context of {tokens} tokens", E.E2BIG)
            if not {"max_procs", "max_kv_blocks", "tokens_per_min"} & set(rule):
                continue
            used = self.usage(engine, self._users_of(scope, engine))
            for key, err in (("max_procs", E.EAGAIN), ("max_kv_blocks", E.EDQUOT), ("tokens_per_min", E.EAGAIN)):
                lim = rule.get(key)
                if lim is None:
                    continue
                over = used[key] >= lim if key == "tokens_per_min" else used[key] + want[key] > lim
                if over:
                    self._breach(user, scope, f"{key}={lim} (in use: {used[key]}"
                                 + (f", asked: {want[key]})" if want[key] else ")"), err)

    def context_cap(self, user: str) -> int | None:
        """The tightest max_context that binds user (None: only the model's)."""
        caps = [self.rules[s]["max_context"] for s in self.scopes_of(user) if "max_context" in self.rules[s]]
        return min(caps) if caps else None

    def nice_floor(self, user: str) -> int:
        """The lowest nice user may set without being an admin (0 unless a limit allows less)."""
        floors = [self.rules[s]["nice_min"] for s in self.scopes_of(user) if "nice_min" in self.rules[s]]
        return min(floors) if floors else 0

    def _breach(self, user: str, scope: str, what: str, err: int):
        log.warning("audit: %s over the limit %s of %s", user, what, scope)
        raise KernelError(err, f"limit {what} of {scope} reached for {user}")

    # ---- the token-rate throttle (kernel/sched.py) -------------------------------------------
    def has_rates(self) -> bool:
        return any("tokens_per_min" in r for r in self.rules.values())

    def note_tokens(self, user: str, n: int) -> None:
        """Count n generated tokens now. Entries within BUCKET_S of the newest are merged and those
        older than the window dropped here, so a user's history stays ~WINDOW_S / BUCKET_S entries
        however long the kernel runs (it is read only where a rate limit or a report asks)."""
        if not n:
            return
        q, now = self._tokens[user], time.monotonic()
        if q and now - q[-1][0] < BUCKET_S:
            q[-1] = (q[-1][0], q[-1][1] + n)
            return
        q.append((now, n))
        cut = now - WINDOW_S
        while q[0][0] < cut:
            q.popleft()

    def throttled(self, user: str) -> bool:
        """True while some tokens_per_min binding user is spent (its processes wait a step)."""
        for scope in self.scopes_of(user):
            lim = self.rules[scope].get("tokens_per_min")
            if lim is not None and sum(self._recent(u) for u in self._users_of_tokens(scope, user)) >= lim:
                return True
        return False

    def _users_of_tokens(self, scope: str, user: str):
        if scope.startswith("user:"):
            return (user,)
        if scope.startswith("group:"):
            return [u for u in self._tokens if u in self._group(scope[6:])]
        return list(self._tokens)

    # ---- admin changes (syscall LIMITS) -------------------------------------------------------
    def set(self, engine, scope: str, values) -> dict[str, int]:
        """Change a scope's limits (None removes one); refused if a new limit is below usage."""
        scope, values = check_scope(scope), check_values(scope, values)
        used = self.usage(engine, self._users_of(scope, engine))
        for key, v in values.items():
            if v is not None and key in used and used[key] > v:
                raise LimitsError(f"{scope}: {key}={v} is below the current usage ({used[key]}); "
                                  f"end some processes first")
        rule = self.rules.setdefault(scope, {})
        for key, v in values.items():
            if v is None:
                rule.pop(key, None)
            else:
                rule[key] = v
        log.info("audit: limits of %s set to %s", scope, rule)
        return dict(rule)

    def snapshot(self, engine, users: set[str] | None) -> dict:
        """The rules and, for `users` (None: everyone with processes), their usage."""
        users = {p.owner for p in engine.procs.all()} | set(self._tokens) if users is None else users
        usage = {}
        for u in sorted(users):
            usage[u] = {**self.usage(engine, {u}), "throttled": self.throttled(u),
                        "scopes": self.scopes_of(u)}
        return {"rules": {s: dict(r) for s, r in self.rules.items()}, "usage": usage}
