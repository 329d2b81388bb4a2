"""Latency as a scheduling goal: an online model of step time, and the token budget that keeps a
latency-sensitive process's time per token within its target.

Every step the engine reports (tokens in the step, seconds it took); StepModel fits
seconds ≈ a + b·tokens by exponentially weighted least squares (recent steps count most, so it
follows the machine's load). A process's target is its own (`latency_ms`, set at spawn or by the
LATENCY syscall) or, by default, derived from its nice: nice ≤ -10 asks for INTERACTIVE times the
model's idle step (one token), nice -9..-1 for PRIORITY times it; nice ≥ 0 has none. While such a
process runs, the scheduler (kernel/sched.py) serves it first and sizes the step to what the model
says fits in the tightest target; the rest wait a step or two and catch up after it ends, and the
long-run fair share is untouched (virtual time is charged per token as always).
"""

from __future__ import annotations

INTERACTIVE = 1.5       # nice <= -10: time per token within 1.5x an idle step
PRIORITY = 3.0          # nice -9..-1: within 3x
MIN_STEPS = 8           # observations before the model is trusted
DECAY = 0.98            # weight of the past per observation (a half-life of ~34 steps)
SMALL = 4               # a step of at most this many tokens shows the fixed cost per step
SMALL_WITHIN = 100      # ... if one was seen within this many observations


class StepModel:
    """seconds ≈ a + b·tokens, fitted online; runs on the engine's thread."""

    def __init__(self):
        self.w = self.x = self.y = self.xx = self.xy = 0.0
        self.n = 0
        self.since_small = 1 << 30            # observations since the last small step

    def observe(self, tokens: int, seconds: float) -> None:
        if tokens <= 0 or seconds <= 0:
            return
        d = DECAY
        self.w = d * self.w + 1
        self.x = d * self.x + tokens
        self.y = d * self.y + seconds
        self.xx = d * self.xx + tokens * tokens
        self.xy = d * self.xy + tokens * seconds
        self.n += 1
        self.since_small = 0 if tokens <= SMALL else self.since_small + 1

    def ready(self) -> bool:
        return self.n >= MIN_STEPS

    def knows_small(self) -> bool:
        """Has a small step been seen lately? Only then does the fit know the fixed cost of a
        step: from big steps alone, a + b·tokens cannot be told apart (a loaded machine runs
        64-token steps for minutes), and a budget computed from it would be far too large."""
        return self.since_small < SMALL_WITHIN

    def coefficients(self) -> tuple[float, float]:
        """(a, b): fixed seconds per step, seconds per token. With one step size seen so far,
        half the time is taken as fixed (a cautious split that the next sizes correct)."""
        mx, my = self.x / self.w, self.y / self.w
        var = self.xx / self.w - mx * mx
        b = (self.xy / self.w - mx * my) / var if var > 1e-6 * max(1.0, mx * mx) else 0.0
        if b <= 0:
            b = 0.5 * my / max(mx, 1.0)
        a = max(my - b * mx, 0.0)
        return a, b

    def predict(self, tokens: int) -> float:
        a, b = self.coefficients()
        return a + b * tokens

    def tokens_within(self, seconds: float) -> int:
        """The most tokens a step may hold and still take at most `seconds` (at least 1)."""
        a, b = self.coefficients()
        return max(1, int((seconds - a) / b)) if b > 0 else 1 << 30


def target_s(p, model: StepModel) -> float | None:
    """p's time-per-token target in seconds, or None (no latency goal)."""
    if p.latency_ms is not None:
        return p.latency_ms / 1000.0
    if p.nice <= -10:
        return INTERACTIVE * model.predict(1)
    if p.nice < 0:
        return PRIORITY * model.predict(1)
    return None
