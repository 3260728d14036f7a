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
of eps / (x g) turns that into sum_n (-eps)^n x^-(n+1) S_n, where the S_n are sums over the steps
alone: the same for every row that last moved at step s0. So one short recurrence per call gives
S_n for every recent s0, a row costs a few operations per element instead of one Adam step per
missed step, and the result is Adam's in float64, rounded once (`replay`, `sums_since`). The
terms fall by about b1 / sqrt(b2) a step, so a row idle for longer than `horizon` steps takes
its last `horizon` steps' sums (kept per s0, `settled`) and the pure decay after them. Elements
whose second moment is so small that eps dominates (the series would converge slowly) are summed
step by step in float64 instead; betas with b1 >= sqrt(b2), whose updates do not shrink, are
replayed step by step in float32, as torch's single-tensor Adam computes them (`_replay_steps`).

The loops are compiled by numba (see numba_math): they run over a few hundred rows per step,
element by element, which is exactly what Python and whole-tensor torch ops are bad at. Rows are
independent, so the loops over them are split over numba's threads (cpu_rnn.set_threads).
The optimizers that drive these loops are in optimizers.py.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import prange

from .numba_math import INLINE_JIT as _inline
from .numba_math import JIT as _jit
from .numba_math import PARALLEL_JIT as _parallel
from .numba_math import sqrt as _sqrt
from .numba_math import sqrt64 as _sqrt64

# Below this |update| / |weight|, float32 round-to-nearest leaves the weight unchanged (half an ulp).
_HALF_ULP = np.float32(2.0**-25)
_CHECK_EVERY = 8
# Powers of eps / (x g) the closed form keeps; an element uses it while x exceeds _SERIES_LIMIT
# times eps / g (the ratio below 1/2), where the terms left out are below 2^-32 of the sum.
N_TERMS = 32
_SERIES_LIMIT = 2.0
# Columns of the per-step table (Steps.table): lr_t / (1 - b1^t), sqrt(1 - b2^t), AdamW's decay
# factor 1 - lr_t wd, and the sum of log(decay) up to t.
GAIN, Q, DECAY, LOG_DECAY = 0, 1, 2, 3
# A row idle for longer than this many steps takes the settled sums (see replay); betas that
# would need more are replayed step by step.
MAX_HORIZON = 4096
# Rows idle for fewer steps than this are replayed step by step: cheaper than the series (measured).
_FEW_STEPS = 12


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
    and the settled sums of the steps since every row was last current (row s0 - settled_base,
    filled as rows go idle, NaN until then; `forget` drops the older ones, so they take memory for
    one epoch's steps, not a run's). Grows as many again when full."""

    def __init__(self, b1: float, b2: float, capacity: int = 1024):
        self.b1, self.b2 = b1, b2
        self.horizon = horizon(b1, b2)
        self.lrs = np.zeros(0)
        self.table = np.zeros((0, 4))
        self.settled = np.zeros((0, N_TERMS + 1))
        self.settled_base = 0
        self.last = 0  # the highest step recorded
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        self.bc1, self.bc2_sqrt = bias_corrections(self.b1, self.b2, capacity)
        size = capacity + 1
        self.lrs = np.concatenate([self.lrs, np.zeros(size - len(self.lrs))])
        self.table = np.concatenate([self.table, np.zeros((size - len(self.table), 4))])
        if len(self.table) and not self.table[0, DECAY]:
            self.table[0] = (0.0, 0.0, 1.0, 0.0)
        more = size - self.settled_base - len(self.settled)
        self.settled = np.concatenate([self.settled, np.full((more, N_TERMS + 1), np.nan)])

    def forget(self, step: int) -> None:
        """Every row is current at `step`: no replay starts before it again."""
        self.settled_base = step
        self.settled = np.full((max(len(self.table) - step, 0), N_TERMS + 1), np.nan)

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
        self.table[step] = (lr / self.bc1[step], math.sqrt(1.0 - self.b2 ** float(step)), decay,
                            self.table[step - 1, LOG_DECAY] + math.log(decay) if decay > 0.0 else 0.0)

    def scalars(self, eps: float, weight_decay: float, closed_form: bool = True) -> tuple:
        """The arguments the loops below take after the step number."""
        return (self.lrs, self.bc1, self.bc2_sqrt, self.table, self.settled, self.settled_base, self.b1, self.b2,
                float(eps),
                float(weight_decay),
                self.horizon if closed_form else 0, self.b1 < math.sqrt(self.b2))


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

    Element arithmetic in float32, in the order of torch's single-tensor float32 Adam
    (torch.optim.Adam(foreach=False)); per-step scalars in float64, rounded once. For betas whose
    updates do not shrink (no closed form), and for the elements the closed form leaves out."""
    b2f, epsf = np.float32(b2), np.float32(eps)
    gain1 = np.float32(1.0 - b1)
    rest1 = np.float32(1.0) - gain1
    zero = np.float32(0.0)
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
        significant = 0  # elements whose update float32 would not round away
        for e in range(pr.shape[0]):
            mi = _lerp(mr[e], zero, gain1, rest1)
            vi = vr[e] * b2f
            update = step_size * mi / (_sqrt(vi) / bc2_sqrt + epsf)
            w = pr[e] * decayf
            if check:
                significant += np.int32(abs(update) >= abs(w) * _HALF_ULP)
            mr[e] = mi
            vr[e] = vi
            pr[e] = w - update
        s += 1
        if check and significant == 0 and s <= last:
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
def sums_since(table, s1, gaps, b1, b2, out):
    """For a row that last moved at s0 = s1 - g, for g = 1..`gaps`: out[g, n] = S_n, the sum over the
    steps t = s0+1..s1 of lr_t / (1 - b1^t) b1^j D_t h_t^(n+1), with j = t - s0,
    h_t = sqrt(1 - b2^t) / b2^(j/2) and D_t the weight's decay over steps t+1..s1; and
    out[g, N_TERMS] = the decay over s0+1..s1. One backward pass serves every g:
    S_n(s0) = rho_n (A_n(s0+1) D_(s0+1) + S_n(s0+1)), rho_n = b1 / b2^((n+1)/2)."""
    rho = np.empty(N_TERMS)
    for n in range(N_TERMS):
        rho[n] = b1 * b2 ** (-(n + 1) / 2.0)
    sums = np.zeros(N_TERMS)
    decay = 1.0  # D_t of the step being added
    for n in range(N_TERMS):
        out[0, n] = 0.0
    out[0, N_TERMS] = 1.0
    for g in range(1, gaps + 1):
        t = s1 - g + 1
        a = table[t, GAIN] * decay
        q = table[t, Q]
        power = q
        for n in range(N_TERMS):
            sums[n] = rho[n] * (a * power + sums[n])
            power *= q
        decay *= table[t, DECAY]
        for n in range(N_TERMS):
            out[g, n] = sums[n]
        out[g, N_TERMS] = decay


@_jit
def _settle(table, settled, base, s0, horizon, b1, b2, scratch):
    """settled[s0 - base] = the sums of a row that last moved at s0, over its next `horizon` steps: all
    that a longer idle stretch adds to them is below 2^-52 of the first step's term."""
    if np.isnan(settled[s0 - base, 0]):
        sums_since(table, s0 + horizon, horizon, b1, b2, scratch)
        settled[s0 - base, :] = scratch[horizon, :]


@_jit
def replay(p, m, v, r, s0, s1, table, recent, settled, base, horizon, lrs, bc1, bc2s, b1, b2, eps, wd):
    """Row `r`, last moved at step s0, brought to step s1 (no gradient in between) in closed form:
    every element's weight change is (m/x) sum_n (-eps/x)^n S_n with x = sqrt(v), the S_n of
    `recent` (this s1's sums, by gap) or, after `horizon` idle steps, of `settled` times the decay
    since; the moments decay by b1^gap and b2^gap. Computed in float64, rounded once. Elements
    whose x is within a few eps (the series would not converge) are replayed step by step."""
    pr, mr, vr = p[r], m[r], v[r]
    gap = s1 - s0
    if gap < horizon:
        sums = recent[gap]
        window, after = gap, 1.0
    else:
        sums = settled[s0 - base]
        window = horizon
        after = math.exp(table[s1, LOG_DECAY] - table[s0 + horizon, LOG_DECAY])  # pure decay past the window
    decay = sums[N_TERMS] * after
    # eps / (x g_t) over the window is at most eps * widest / x (g_t >= b2^(window/2)).
    widest = _SERIES_LIMIT * eps * b2 ** (-window / 2.0)
    width = pr.shape[0]
    near_eps = np.empty(width, dtype=np.int64)
    k = 0
    for e in range(width):
        if mr[e] != 0 and not _sqrt64(np.float64(vr[e])) > widest:
            near_eps[k] = e
            k += 1
    if k:
        ps, ms, vs = np.empty(k, np.float32), np.empty(k, np.float32), np.empty(k, np.float32)
        for i in range(k):
            ps[i], ms[i], vs[i] = pr[near_eps[i]], mr[near_eps[i]], vr[near_eps[i]]
    fm, fv = b1 ** gap, b2 ** gap
    for e in range(width):  # every element by the series (those near eps are redone below): vectorized
        m0, v0 = np.float64(mr[e]), np.float64(vr[e])
        x = _sqrt64(v0)
        y = -eps / x
        acc = sums[N_TERMS - 1]
        for n in range(N_TERMS - 2, -1, -1):
            acc = sums[n] + y * acc
        change = after * m0 / x * acc if m0 != 0.0 else 0.0
        pr[e] = np.float32(np.float64(pr[e]) * decay - change)
        mr[e] = np.float32(m0 * fm)
        vr[e] = np.float32(v0 * fv)
    if k:
        _steps(ps, ms, vs, s0 + 1, s1, lrs, bc1, bc2s, b1, b2, eps, wd, True)
        for i in range(k):
            pr[near_eps[i]], mr[near_eps[i]], vr[near_eps[i]] = ps[i], ms[i], vs[i]


@_jit
def _prepare(table, settled, base, step, first, count, horizon, b1, b2):
    """The sums a call's replays to `step` need: this step's, for the largest gap below `horizon`
    among the rows that start after `first[:count]`, and the settled ones of rows idle longer."""
    widest = 0
    for k in range(count):
        gap = step - first[k] + 1
        if gap >= horizon:
            widest = horizon - 1
        elif gap > widest:
            widest = gap
    recent = np.empty((widest + 1, N_TERMS + 1))
    sums_since(table, step, widest, b1, b2, recent)
    scratch = np.empty((horizon + 1, N_TERMS + 1))
    for k in range(count):
        if step - first[k] + 1 >= horizon:
            _settle(table, settled, base, first[k] - 1, horizon, b1, b2, scratch)
    return recent


@_jit
def _stale_rows(current, ids, step):
    """Each row named in `ids` (repeats allowed) that is behind `step`, once, and the first step it
    missed; marks them current."""
    stale = np.empty(ids.shape[0], dtype=np.int64)
    first = np.empty(ids.shape[0], dtype=np.int64)
    k = 0
    for i in range(ids.shape[0]):
        r = ids[i]
        if current[r] < step:
            stale[k] = r
            first[k] = current[r] + 1
            current[r] = step
            k += 1
    return stale, first, k


@_parallel
def _bring_up(p, m, v, stale, first, count, step, lrs, bc1, bc2s, table, settled, base, b1, b2, eps, wd, horizon,
              may_stop):
    """Rows stale[:count] (distinct), each missing steps first[k]..step, brought to `step`."""
    if horizon > 0:
        recent = _prepare(table, settled, base, step, first, count, horizon, b1, b2)
        for k in prange(count):  # no two threads take the same row
            if step - first[k] < _FEW_STEPS:  # a few steps cost less one by one than the series does
                _replay_steps(p, m, v, stale[k], first[k], step, lrs, bc1, bc2s, b1, b2, eps, wd, may_stop)
            else:
                replay(p, m, v, stale[k], first[k] - 1, step, table, recent, settled, base, horizon, lrs, bc1,
                       bc2s, b1, b2, eps, wd)
    else:
        for k in prange(count):
            _replay_steps(p, m, v, stale[k], first[k], step, lrs, bc1, bc2s, b1, b2, eps, wd, may_stop)


def catch_up(p, m, v, current, ids, step, *scalars):
    """Bring every row named in `ids` (repeats allowed) up to `step`."""
    stale, first, count = _stale_rows(current, ids, step)
    if count:
        _bring_up(p, m, v, stale, first, count, step, *scalars)


def catch_up_all(p, m, v, current, step, *scalars):
    """Bring every row of the table up to `step`."""
    catch_up(p, m, v, current, np.arange(p.shape[0]), step, *scalars)


@_parallel
def adam_rows(p, m, v, current, rows, grads, step, lrs, bc1, bc2s, table, settled, base, b1, b2, eps, wd, horizon,
              may_stop):
    """Adam step number `step` for the rows with a gradient (each row once), after the steps they
    missed. As torch's single-tensor Adam: the step's scalars, (1 - beta) included, are computed
    in float64 and rounded once to float32; the element arithmetic is float32, in its order
    (m.lerp_(g, 1 - b1); v.mul_(b2).addcmul_(g, g, value=1 - b2); p.addcdiv_(m, denom, -step))."""
    step_size = np.float32(lrs[step] / bc1[step])
    bc2_sqrt = bc2s[step]
    b2f, epsf, decayf = np.float32(b2), np.float32(eps), np.float32(1.0 - lrs[step] * wd)
    gain1, gain2 = np.float32(1.0 - b1), np.float32(1.0 - b2)
    rest1 = np.float32(1.0) - gain1
    for i in prange(rows.shape[0]):  # rows are distinct: each thread owns the rows it takes
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


@_jit
def _merge_rows(ids, values, slot):
    """Each row of an uncoalesced sparse gradient once, its values summed in order of appearance:
    what `coalesce()` gives, without its sort. `slot` has one entry per table row, all -1 before
    and after."""
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
    return _merge_rows(grad._indices()[0].numpy(), grad._values().contiguous().numpy(), slot)
