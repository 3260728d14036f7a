"""The row loops of Adam for an embedding table: exact (deferred) Adam and lazy Adam.

With a zero gradient, Adam still moves a row: its moments decay and the parameter takes a step
along them. Dense Adam pays for that by reading and writing the whole table (parameter, gradient,
both moments) on every step: on a CPU that is most of a small recurrent model's step. Here a row
that a batch does not use is left as it is, and the steps it missed are applied when a batch next
reads it (or before anything reads the whole table: evaluation of every row, a checkpoint, the
end of an epoch).

Those missed steps have a closed form. Over steps t = s0+1..s1 with no gradient, the moments only
decay (m_t = b1^j m, v_t = b2^j v, j = t - s0), and the weight moves by

    sum_t  c_t m / (x g_t + eps),   x = sqrt(v),  c_t = lr_t / (1 - b1^t) b1^j D_t,
                                    g_t = b2^(j/2) / sqrt(1 - b2^t)

(D_t: AdamW's decay of the weight over the steps after t). Expanding 1 / (x g + eps) in powers
of eps / (x g) where x g is well above eps, or around the window's middle g_c (powers of
x (g_t - g_c) / (eps + x g_c)) elsewhere, turns that into sums over the steps alone
(`sums_since`), the same for every row that last moved at step s0. One
short recurrence per call gives them for every recent s0; a row then costs a few operations per
element instead of one Adam step per missed step, and the result is Adam's in float64, rounded
once (`replay`). The terms fall by about b1 / sqrt(b2) a step, so a row idle for longer than
`horizon` steps takes its last `horizon` steps' sums (kept per s0, `settled`) and the pure
decay after them. Elements whose window of g_t is too wide for the centred series to converge
fast and exactly, rows idle for a few steps (cheaper so), and betas with b1 >= sqrt(b2), whose
updates do not shrink, are replayed step by step in float32 as torch's single-tensor Adam
computes them (`_steps`), stopping once float32 rounds every update away (unless the rate
rises again).

The loops are compiled by numba (see numba_math): they run over a few hundred rows per step,
element by element, which is exactly what Python and whole-tensor torch ops are bad at. Rows are
independent, so the loops over them are split over numba's threads (cpu_rnn.set_threads).
The optimizers that drive these loops are in optimizers.py.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import get_num_threads, prange

from .numba_math import INLINE_JIT as _inline
from .numba_math import JIT as _jit
from .numba_math import PARALLEL_JIT as _parallel
from .numba_math import prefetch_row as _prefetch_row
from .numba_math import sqrt as _sqrt
from .numba_math import sqrt64 as _sqrt64

# Below this |update| / |weight|, float32 round-to-nearest leaves the weight unchanged (half an ulp).
_HALF_ULP = np.float32(2.0**-25)
_CHECK_EVERY = 8
# Powers of eps / (x g) the closed form keeps; an element uses it while x exceeds _SERIES_LIMIT
# times eps / g (the ratio below 1/2), where the terms left out are below 2^-32 of the sum.
N_TERMS = 32
_SERIES_LIMIT = 2.0
SUMS = 2 * N_TERMS  # the S_n, then the P_n (see sums_since); the decay after them
# Columns of the per-step table (Steps.table): lr_t / (1 - b1^t), sqrt(1 - b2^t), AdamW's decay
# factor 1 - lr_t wd, and the sum of log(decay) up to t.
GAIN, Q, DECAY, LOG_DECAY = 0, 1, 2, 3
# A row idle for longer than this many steps takes the settled sums (see replay); betas that
# would need more are replayed step by step.
MAX_HORIZON = 4096
# Rows idle for fewer steps than this are replayed step by step: cheaper than the series (measured).
_FEW_STEPS = 12
# Rows ahead whose memory the catch-up asks for while it replays the current one.
_AHEAD = 2


def bias_corrections(b1: float, b2: float, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Per step number s (index s; 0 unused): 1 - b1^s in float64, and sqrt(1 - b2^s) rounded to
    float32, each computed as torch's Adam computes it (Python's float power: C's pow; numba's
    power by an integer multiplies instead, which differs in the last bits). The loops below look
    them up instead of computing two powers per replayed step of every row."""
    bc1 = np.zeros(steps + 1)
    bc2_sqrt = np.zeros(steps + 1, dtype=np.float32)
    for s in range(1, steps + 1):
        bc1[s] = 1.0 - b1 ** float(s)
        bc2_sqrt[s] = math.sqrt(1.0 - b2 ** float(s))
    return bc1, bc2_sqrt


def horizon(b1: float, b2: float) -> int:
    """Idle steps after which a row's next update is below 2^-52 of its first (they shrink by
    rho = b1 / sqrt(b2) a step); 0 where they do not shrink fast enough for the closed form."""
    if b1 == 0.0:
        return 1
    rho = b1 / math.sqrt(b2)
    if rho >= 1.0:
        return 0
    steps = math.ceil(52 * math.log(2) / -math.log(rho))
    return steps if steps <= MAX_HORIZON else 0


class Steps:
    """What deferred Adam keeps per step number s (index s; 0 unused) to replay the steps a row
    missed: the learning rate each step used (a schedule may change it every step), torch's
    rounded bias corrections for the step-by-step replay, the float64 table of the closed form,
    and, for the steps since every row was last current (row s - settled_base), the powers of
    sqrt(1 - b2^s) the sums take and the settled sums (filled as rows go idle, NaN until then);
    `forget` drops the older ones, so those take memory for one epoch's steps, not a run's. Grows
    as many again when full."""

    def __init__(self, b1: float, b2: float, capacity: int = 1024):
        self.b1, self.b2 = b1, b2
        self.horizon = horizon(b1, b2)
        self.work = np.empty((2, self.horizon + 1, SUMS + 1))  # see _prepare
        self.lrs = np.zeros(0)
        self.table = np.zeros((0, 4))
        self.settled = np.zeros((0, SUMS + 1))
        self.powers = np.zeros((0, SUMS))
        self.settled_base = 0
        # q^(n+1) for the S_n, q^-n for the P_n (see sums_since)
        self._exponents = np.concatenate([np.arange(1, N_TERMS + 1), -np.arange(N_TERMS)]).astype(np.float64)
        self.last = 0  # the highest step recorded
        self._scalars: dict[tuple, tuple] = {}  # scalars() by its arguments, until an array is replaced
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        self._scalars.clear()
        self.bc1, self.bc2_sqrt = bias_corrections(self.b1, self.b2, capacity)
        size = capacity + 1
        self.lrs = np.concatenate([self.lrs, np.zeros(size - len(self.lrs))])
        self.table = np.concatenate([self.table, np.zeros((size - len(self.table), 4))])
        if len(self.table) and not self.table[0, DECAY]:
            self.table[0] = (0.0, 0.0, 1.0, 0.0)
        more = size - self.settled_base - len(self.settled)
        self.settled = np.concatenate([self.settled, np.full((more, SUMS + 1), np.nan)])
        self.powers = np.concatenate([self.powers, np.zeros((more, SUMS))])

    def forget(self, step: int) -> None:
        """Every row is current at `step`: no replay starts before it again."""
        self._scalars.clear()
        self.settled_base = step
        self.settled = np.full((max(len(self.table) - step, 0), SUMS + 1), np.nan)
        self.powers = np.zeros((len(self.settled), SUMS))

    def record(self, step: int, lr: float, weight_decay: float) -> None:
        """Step `step` used rate `lr` (and AdamW's `weight_decay`)."""
        if len(self.lrs) <= step:
            self._grow(max(2 * (len(self.lrs) - 1), step))
        if step <= self.last:  # steps recorded again (a checkpoint loaded into this optimizer)
            self.settled[max(0, step - self.horizon - self.settled_base):] = np.nan
        self.last = step
        self.lrs[step] = lr
        decay = 1.0 - lr * weight_decay
        if decay <= 0.0:  # a decay that flips the weight's sign has no logarithm: step by step from now on
            self.horizon = 0
            self._scalars.clear()
        q = math.sqrt(1.0 - self.b2 ** float(step))
        self.table[step] = (lr / self.bc1[step], q, decay,
                            self.table[step - 1, LOG_DECAY] + math.log(decay) if decay > 0.0 else 0.0)
        np.power(q, self._exponents, out=self.powers[step - self.settled_base])

    def scalars(self, eps: float, weight_decay: float, closed_form: bool = True) -> tuple:
        """The arguments the loops below take after the step number (kept: a batch's lookup and its
        step each pass them, and building them anew costs a visible part of a small step)."""
        key = (eps, weight_decay, closed_form)
        cached = self._scalars.get(key)
        if cached is None:
            cached = self._scalars[key] = (
                self.lrs, self.bc1, self.bc2_sqrt, self.table, self.powers, self.settled, self.settled_base, self.work,
                self.b1, self.b2, float(eps), float(weight_decay), self.horizon if closed_form else 0,
                self.b1 < math.sqrt(self.b2))
        return cached


@_inline
def _lerp(start, end, weight, rest):
    """torch.lerp(start, end, weight) in float32, as torch computes it (`rest` = 1 - weight in
    float32): Adam's first moment is exp_avg.lerp_(grad, 1 - beta1)."""
    if weight < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * rest


@_jit
def _replay_steps(p, m, v, r, first, last, lrs, bc1, bc2s, b1, b2, eps, wd, may_stop):
    """Zero-gradient Adam steps `first`..`last` (1-based step numbers) on row `r`, step by step."""
    _steps(p[r], m[r], v[r], first, last, lrs, bc1, bc2s, b1, b2, eps, wd, may_stop)


@_jit
def _steps(pr, mr, vr, first, last, lrs, bc1, bc2s, b1, b2, eps, wd, may_stop):
    """Zero-gradient Adam steps `first`..`last` on the weights `pr` and their moments: `lrs[s]` is
    the learning rate step s used (a schedule may change it every step), `wd` AdamW's decay.
    `may_stop`: once float32 rounds every update away (and the rate does not rise again: later
    updates then only shrink), the remaining steps only decay the moments and the weight.

    Element arithmetic in float32, in the order of torch's single-tensor float32 Adam
    (torch.optim.Adam(foreach=False)); per-step scalars in float64, rounded once. For betas whose
    updates do not shrink (no closed form), and for the elements the closed form leaves out."""
    b2f, epsf = np.float32(b2), np.float32(eps)
    gain1 = np.float32(1.0 - b1)
    rest1 = np.float32(1.0) - gain1
    zero = np.float32(0.0)
    flags = np.empty(pr.shape[0] if may_stop else 0, dtype=np.int32)
    s = first
    while s <= last:
        step_size = np.float32(lrs[s] / bc1[s])
        decayf = np.float32(1.0 - lrs[s] * wd)
        bc2_sqrt = bc2s[s]
        # Counting costs as much as the step itself, so only the first step and every
        # _CHECK_EVERY-th after it count (the first: rows that never had a gradient, or whose
        # updates already round away, stop at once); the few steps replayed past the first
        # insignificant one are float32 Adam's own steps.
        check = may_stop and (s - first) % _CHECK_EVERY == 0
        significant = 0  # some element's update float32 would not round away
        moving = 0  # some element has momentum (without it, every later update is zero too)
        # Two copies of the loop, with and without the counting, and the counting as flags per
        # element reduced after it: a branch or a sum inside the loop kept LLVM from running it
        # eight lanes at a time.
        if check:
            for e in range(pr.shape[0]):
                mi = _lerp(mr[e], zero, gain1, rest1)
                vi = vr[e] * b2f
                update = step_size * mi / (_sqrt(vi) / bc2_sqrt + epsf)
                w = pr[e] * decayf
                flags[e] = np.int32(abs(update) >= abs(w) * _HALF_ULP) | (np.int32(mi != zero) << 1)
                mr[e] = mi
                vr[e] = vi
                pr[e] = w - update
            bits = np.int32(0)
            for e in range(pr.shape[0]):
                bits |= flags[e]
            significant, moving = bits & 1, bits >> 1
        else:
            for e in range(pr.shape[0]):
                mi = _lerp(mr[e], zero, gain1, rest1)
                vi = vr[e] * b2f
                update = step_size * mi / (_sqrt(vi) / bc2_sqrt + epsf)
                w = pr[e] * decayf
                mr[e] = mi
                vr[e] = vi
                pr[e] = w - update
        s += 1
        if check and significant == 0 and moving and _rate_rises(lrs, s - 1, last):
            # A rate that rises again (a warm-up, a phase at lr 0) can lift later updates above
            # the rounding: replay every step.
            may_stop = False
        elif check and significant == 0 and s <= last:
            rest = last - s + 1
            # Powers of the float32 factors that each skipped step would have multiplied by.
            fm = np.float32((1.0 - np.float64(gain1)) ** rest)
            fv = np.float32(np.float64(b2f) ** rest)
            fp = _decay_over(lrs, wd, s, last)
            for e in range(pr.shape[0]):
                mr[e] = mr[e] * fm
                vr[e] = vr[e] * fv
                pr[e] = pr[e] * fp
            return


@_inline
def _rate_rises(lrs, now, last):
    """Whether a step after `now`, up to `last`, has a higher learning rate than step `now`."""
    for s in range(now + 1, last + 1):
        if lrs[s] > lrs[now]:
            return True
    return False


@_inline
def _decay_over(lrs, wd, first, last):
    """AdamW's decay of the weight over steps first..last, as one float32 factor: the power of
    the step's factor while the rate is constant, else their product."""
    decayf = np.float32(1.0 - lrs[first] * wd)
    constant = True
    product = np.float64(1.0)
    for s in range(first, last + 1):
        f = np.float32(1.0 - lrs[s] * wd)
        constant = constant and f == decayf
        product *= np.float64(f)
    if constant:
        return np.float32(np.float64(decayf) ** (last - first + 1))
    return np.float32(product)



@_jit
def sums_since(table, powers, base, s1, gaps, b1, b2, out):
    """For a row that last moved at s0 = s1 - g, for g = 1..`gaps`, the sums over its missed steps
    t = s0+1..s1 (j = t - s0) of c_t = lr_t / (1 - b1^t) b1^j D_t (D_t: the weight's decay over
    steps t+1..s1) times a power of g_t = b2^(j/2) / sqrt(1 - b2^t):
    out[g, n] = S_n = sum c_t g_t^-(n+1) and out[g, N_TERMS + n] = P_n = sum c_t g_t^n, for n below
    N_TERMS; out[g, SUMS] = the decay over s0+1..s1. One backward pass serves every g:
    S_n(s0) = rho_n (c-part of step s0+1 + S_n(s0+1)), each power a geometric factor in j; the
    powers of sqrt(1 - b2^t) come from `powers` (row t - base), so the pass vectorizes over n."""
    rho = np.empty(SUMS)
    for n in range(N_TERMS):
        rho[n] = b1 * b2 ** (-(n + 1) / 2.0)
        rho[N_TERMS + n] = b1 * b2 ** (n / 2.0)
    sums = np.zeros(SUMS)
    decay = 1.0  # D_t of the step being added
    for n in range(SUMS):
        out[0, n] = 0.0
    out[0, SUMS] = 1.0
    for g in range(1, gaps + 1):
        t = s1 - g + 1
        a = table[t, GAIN] * decay
        power = powers[t - base]
        row = out[g]
        for n in range(SUMS):  # one loop, not a second to copy the sums out: it runs every step
            x = rho[n] * (a * power[n] + sums[n])
            sums[n] = x
            row[n] = x
        decay *= table[t, DECAY]
        row[SUMS] = decay


@_jit
def _settle(table, powers, settled, base, s0, horizon, b1, b2, scratch):
    """settled[s0 - base] = the sums of a row that last moved at s0, over its next `horizon` steps: all
    that a longer idle stretch adds to them is below 2^-52 of the first step's term."""
    if np.isnan(settled[s0 - base, 0]):
        sums_since(table, powers, base, s0 + horizon, horizon, b1, b2, scratch)
        settled[s0 - base, :] = scratch[horizon, :]


@_jit
def replay(p, m, v, r, s0, s1, table, recent, settled, base, horizon, lrs, bc1, bc2s, b1, b2, eps, wd, tmp, tmp32,
           near_eps):
    """Row `r`, last moved at step s0, brought to step s1 (no gradient in between) in closed form,
    from the sums of `recent` (this s1's, by gap) or, after `horizon` idle steps, of `settled`
    times the decay since. With x = sqrt(v), an element's weight changes by
    (m / x) sum_n (-eps / x)^n S_n where x is well above eps / g_t, or otherwise by
    (m / a) sum_n (-x / a)^n C_n with a = eps + x g_c and C_n the sums of (g_t - g_c)^n around the
    window's middle g_c; the moments decay by b1^gap and b2^gap. Computed in float64, rounded
    once. Elements whose centred ratio exceeds 1/2, or whose terms would carry too much rounding
    (a window of g_t too wide), are replayed step by step. `tmp` (3 x max(width, N_TERMS),
    float64), `tmp32` (3 x width) and `near_eps` (width) are the caller's scratch: an allocation
    per row would cost more than the row."""
    pr, mr, vr = p[r], m[r], v[r]
    gap = s1 - s0
    if gap < horizon:
        sums = recent[gap]
        window, after = gap, 1.0
    else:
        sums = settled[s0 - base]
        window = horizon
        after = math.exp(table[s1, LOG_DECAY] - table[s0 + horizon, LOG_DECAY])  # pure decay past the window
    decay = sums[SUMS] * after
    # g_t falls over the window: from its first step's to its last's.
    g_max = math.sqrt(b2) / table[s0 + 1, Q]
    g_min = b2 ** (window / 2.0) / table[s0 + window, Q]
    above = _SERIES_LIMIT * eps / g_min  # x above this: the first series
    width = pr.shape[0]
    # x per element first, in a loop of its own: the loop that sorts the elements out below
    # cannot run eight lanes at a time, and a square root per element in it cost most of a row.
    xs = tmp[0]
    for e in range(width):
        xs[e] = _sqrt64(np.float64(vr[e]))
    k = 0
    smallest = np.inf  # the smallest x the first series serves: it sets how many terms it needs
    for e in range(width):
        x = xs[e]
        if mr[e] != 0 and not x > above:
            near_eps[k] = e
            k += 1
        elif mr[e] != 0 and x < smallest:
            smallest = x
    ps, ms, vs = tmp32[0, :k], tmp32[1, :k], tmp32[2, :k]
    if k:
        for i in range(k):
            ps[i], ms[i], vs[i] = pr[near_eps[i]], mr[near_eps[i]], vr[near_eps[i]]
    # Terms for a remainder below 2^-32: the ratio eps / (x g) is at most eps / (smallest g_min).
    ratio = eps / (smallest * g_min)  # 0 when no element takes the first series
    terms = 1 if ratio == 0.0 else min(N_TERMS, max(1, int(math.ceil(-32.0 / math.log2(ratio)))))
    fm, fv = b1 ** gap, b2 ** gap
    # Every element by the first series (those near eps are redone below). Horner's rule with the
    # elements innermost, so that the loop runs eight lanes at a time (per element it is a chain).
    scale, y, acc = tmp[0], tmp[1], tmp[2]  # scale takes the place of xs, element by element
    for e in range(width):
        x = xs[e]
        # An element without momentum does not move (and its x may be 0: -eps / 0 would make
        # Horner's sum infinite and the product with a zero scale NaN).
        y[e] = -eps / x if mr[e] != 0 else 0.0
        scale[e] = after * np.float64(mr[e]) / x if mr[e] != 0 else 0.0
        acc[e] = sums[terms - 1]
    for n in range(terms - 2, -1, -1):
        sn = sums[n]
        for e in range(width):
            acc[e] = sn + y[e] * acc[e]
    for e in range(width):
        pr[e] = np.float32(np.float64(pr[e]) * decay - scale[e] * acc[e])
        mr[e] = np.float32(np.float64(mr[e]) * fm)
        vr[e] = np.float32(np.float64(vr[e]) * fv)
    if k == 0:
        return
    # Near eps and below it: 1 / (eps + x g_t) expanded around the window's middle gc instead,
    # (1 / a) sum_n (-x (g_t - gc) / a)^n with a = eps + x gc. Its ratio, x |g_t - gc| / a, is below
    # the half-width h of g_t over the window relative to gc, whatever x is, and far below it where
    # x gc is under eps. Its sums, C_n = sum_t c_t (g_t - gc)^n, come from the P_i by the binomial
    # theorem, whose terms cancel: C_n's rounding is that of sums of size ((2 + h) gc)^n, so term n
    # carries an error of ((2 + h) x gc / a)^n float64 ulps of the update. An element whose highest
    # term would carry more than 2^20 of them (a wide window, x gc near eps) is replayed step by
    # step, so that what the series serves stays float64 Adam's, rounded once.
    g_mid = 0.5 * (g_max + g_min)
    h = (g_max - g_min) / (g_max + g_min)
    widest = 0.0  # the largest ratio among the elements the centred series takes (at most 1/2)
    for i in range(k):
        x = _sqrt64(np.float64(vs[i]))
        ratio = x * h * g_mid / (eps + x * g_mid)
        if widest < ratio <= 0.5:
            widest = ratio
    centred_terms = 1 if widest == 0.0 else min(N_TERMS, max(1, int(math.ceil(-32.0 / math.log2(widest)))))
    if tmp.shape[1] < N_TERMS:
        raise ValueError("replay: scratch narrower than N_TERMS")
    centred = tmp[0, :centred_terms]
    for n in range(centred_terms):
        total, coef = 0.0, 1.0  # coef = binomial(n, i) (-gc)^(n - i), from i = n down
        for i in range(n, -1, -1):
            total += coef * sums[N_TERMS + i]
            coef *= -g_mid * i / (n - i + 1)
        centred[n] = total
    steps = 0  # the elements left for the step-by-step replay (a window too wide), moved to the front
    for i in range(k):
        m0, v0 = np.float64(ms[i]), np.float64(vs[i])
        x = _sqrt64(v0)
        a = eps + x * g_mid
        growth = (2.0 + h) * x * g_mid / a  # of the rounding, from one term to the next
        if x * h * g_mid / a <= 0.5 and (growth <= 1.0 or (centred_terms - 1) * math.log2(growth) <= 20.0):
            w = -x / a
            total = centred[centred_terms - 1]
            for n in range(centred_terms - 2, -1, -1):
                total = centred[n] + w * total
            pr[near_eps[i]] = np.float32(np.float64(ps[i]) * decay - after * m0 / a * total)
        else:
            near_eps[steps], ps[steps], ms[steps], vs[steps] = near_eps[i], ps[i], ms[i], vs[i]
            steps += 1
    if steps:
        _steps(ps[:steps], ms[:steps], vs[:steps], s0 + 1, s1, lrs, bc1, bc2s, b1, b2, eps, wd, True)
        for i in range(steps):
            pr[near_eps[i]], mr[near_eps[i]], vr[near_eps[i]] = ps[i], ms[i], vs[i]


@_jit
def _prepare(table, powers, settled, base, work, step, first, count, horizon, b1, b2):
    """The sums a call's replays to `step` need: this step's, for the largest gap below `horizon`
    among the rows that start after `first[:count]` (in work[0]), and the settled ones of rows idle
    longer. `work` is kept between calls: a table this size, allocated per call, costs a system
    call and fresh pages each time."""
    widest = 0
    for k in range(count):
        gap = step - first[k] + 1
        if gap >= horizon:
            widest = horizon - 1
        elif gap > widest:
            widest = gap
    # One row further, the same pass gives the settled sums of the step `horizon` steps back
    # (bit for bit what _settle computes): one pass a call instead of one more for each step that
    # goes past the horizon.
    settles = step - horizon >= base and np.isnan(settled[step - horizon - base, 0])
    recent = work[0, :horizon + 1]
    sums_since(table, powers, base, step, horizon if settles else widest, b1, b2, recent)
    if settles:
        settled[step - horizon - base, :] = recent[horizon, :]
    for k in range(count):
        if step - first[k] + 1 >= horizon:
            _settle(table, powers, settled, base, first[k] - 1, horizon, b1, b2, work[1])
    return recent


@_jit
def _stale_rows(current, ids, step):
    """Each row named in `ids` (repeats allowed) that is behind `step`, once, and the first step it
    missed; marks them current."""
    stale = np.empty(ids.shape[0], dtype=np.int64)
    first = np.empty(ids.shape[0], dtype=np.int64)
    # All checked before any is marked: this runs before torch's lookup checks the ids, and
    # nothing here checks bounds.
    for i in range(ids.shape[0]):
        if ids[i] < 0 or ids[i] >= current.shape[0]:
            raise IndexError("deferred Adam: a token id is outside the embedding table")
    k = 0
    for i in range(ids.shape[0]):
        r = ids[i]
        if current[r] < step:
            stale[k] = r
            first[k] = current[r] + 1
            current[r] = step
            k += 1
    return stale, first, k


@_inline
def _prefetch_rows(p, m, v, r):
    _prefetch_row(p, r)
    _prefetch_row(m, r)
    _prefetch_row(v, r)


@_inline
def _at_rest(mr, vr):
    """Whether both moments of a row are zero (a row that never had a gradient): then Adam's steps
    without a gradient leave it exactly as it is, apart from AdamW's decay."""
    for e in range(mr.shape[0]):
        if mr[e] != 0 or vr[e] != 0:
            return False
    return True


@_parallel
def _catch_up(p, m, v, current, ids, threads, step, lrs, bc1, bc2s, table, powers, settled, base, work, b1, b2, eps,
              wd, horizon, may_stop):
    """The rows named in `ids` (repeats allowed) that are behind, brought to `step`, split over
    `threads` (numba's thread count: each share of the rows has its own scratch). One compiled
    call: a batch's catch-up runs once per step, where each call's own cost shows."""
    stale, first, count = _stale_rows(current, ids, step)
    if count == 0:
        return
    shares = max(1, min(threads, count))
    if horizon > 0:
        recent = _prepare(table, powers, settled, base, work, step, first, count, horizon, b1, b2)
        # One share of the rows per thread, each with its own scratch (no two threads take the same row).
        width = p.shape[1]
        tmp, tmp32 = np.empty((shares, 3, max(width, N_TERMS))), np.empty((shares, 3, width), np.float32)
        near_eps = np.empty((shares, width), np.int64)
        for share in prange(shares):
            end = (share + 1) * count // shares
            for k in range(share * count // shares, end):
                if k + _AHEAD < end:  # the rows this share takes next start their way from memory
                    _prefetch_rows(p, m, v, stale[k + _AHEAD])
                if wd == 0.0 and _at_rest(m[stale[k]], v[stale[k]]):
                    continue
                if step - first[k] + 1 < _FEW_STEPS:  # a few steps cost less one by one than the series does
                    _replay_steps(p, m, v, stale[k], first[k], step, lrs, bc1, bc2s, b1, b2, eps, wd, may_stop)
                else:
                    replay(p, m, v, stale[k], first[k] - 1, step, table, recent, settled, base, horizon, lrs, bc1,
                           bc2s, b1, b2, eps, wd, tmp[share], tmp32[share], near_eps[share])
    else:
        for k in prange(count):
            if not (wd == 0.0 and _at_rest(m[stale[k]], v[stale[k]])):
                _replay_steps(p, m, v, stale[k], first[k], step, lrs, bc1, bc2s, b1, b2, eps, wd, may_stop)


def catch_up(p, m, v, current, ids, step, *scalars):
    """Bring every row named in `ids` (repeats allowed) up to `step`."""
    _catch_up(p, m, v, current, ids, get_num_threads(), step, *scalars)


def catch_up_all(p, m, v, current, step, *scalars):
    """Bring every row of the table up to `step`."""
    catch_up(p, m, v, current, np.arange(p.shape[0]), step, *scalars)


@_parallel
def adam_rows(p, m, v, current, rows, grads, step, lrs, bc1, bc2s, table, powers, settled, base, work, b1, b2, eps,
              wd, horizon, may_stop):
    """Adam step number `step` for the rows with a gradient (each row once), after the steps they
    missed. As torch's single-tensor Adam: the step's scalars, (1 - beta) included, are computed
    in float64 and rounded once to float32; the element arithmetic is float32, in its order
    (m.lerp_(g, 1 - b1); v.mul_(b2).addcmul_(g, g, value=1 - b2); p.addcdiv_(m, denom, -step)).
    Writes nothing and returns False if a row has missed a step before this one (a gradient on a
    row the forward pass did not read): catch_up first, then call again."""
    for i in range(rows.shape[0]):
        if current[rows[i]] < step - 1:
            return False
    step_size = np.float32(lrs[step] / bc1[step])
    bc2_sqrt = bc2s[step]
    b2f, epsf, decayf = np.float32(b2), np.float32(eps), np.float32(1.0 - lrs[step] * wd)
    gain1, gain2 = np.float32(1.0 - b1), np.float32(1.0 - b2)
    rest1 = np.float32(1.0) - gain1
    for i in prange(rows.shape[0]):  # rows are distinct: each thread owns the rows it takes
        if i + _AHEAD < rows.shape[0]:
            _prefetch_rows(p, m, v, rows[i + _AHEAD])
        r = rows[i]
        pr, mr, vr, gr = p[r], m[r], v[r], grads[i]
        for e in range(pr.shape[0]):
            g = gr[e]
            mi = _lerp(mr[e], g, gain1, rest1)
            vi = vr[e] * b2f + gain2 * g * g
            mr[e] = mi
            vr[e] = vi
            pr[e] = pr[e] * decayf - step_size * mi / (_sqrt(vi) / bc2_sqrt + epsf)
        current[r] = step
    return True


@_jit
def _merge_rows(ids, values, slot):
    """Each row of an uncoalesced sparse gradient once, its values summed in order of appearance:
    what `coalesce()` gives, without its sort. `slot` has one entry per table row, all -1 before
    and after."""
    for i in range(ids.shape[0]):  # a hand-made sparse gradient's indices are not checked by torch
        if ids[i] < 0 or ids[i] >= slot.shape[0]:
            raise IndexError("a sparse gradient names a row outside its table")
    rows = np.empty(ids.shape[0], dtype=np.int64)
    sums = np.empty_like(values)
    k = 0
    for i in range(ids.shape[0]):
        r = ids[i]
        j = slot[r]
        if j < 0:
            slot[r] = k
            rows[k] = r
            sums[k] = values[i]
            k += 1
        else:
            for e in range(values.shape[1]):
                sums[j, e] += values[i, e]
    for j in range(k):
        slot[rows[j]] = -1
    return rows[:k], sums[:k]


def gradient_rows(grad: torch.Tensor, slot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, summed values) of a float32 CPU sparse gradient. An embedding's backward leaves one
    entry per looked-up token; coalescing them costs a sort, a third of a small model's optimizer step."""
    if grad.sparse_dim() != 1:
        raise ValueError(f"a sparse gradient of an embedding table has one sparse dimension, not {grad.sparse_dim()}")
    return _merge_rows(grad._indices()[0].numpy(), grad._values().contiguous().numpy(), slot)
