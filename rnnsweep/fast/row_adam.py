"""The row loops of Adam for an embedding table: exact (deferred) Adam and lazy Adam.

With a zero gradient, Adam still moves a row: its moments decay and the parameter takes a step
along them. Dense Adam pays for that by reading and writing the whole table (parameter, gradient,
both moments) on every step: on a CPU that is most of a small recurrent model's step. Here a row
that a batch does not use is left as it is, and the steps it missed are replayed, one by one,
with Adam's own formula and that step's bias corrections, when a batch next reads it (or before
anything reads the whole table: evaluation of every row, a checkpoint, the end of an epoch).

An untouched row's update shrinks geometrically (by about beta1 / sqrt(beta2) a step). Once every
element's update is below half a unit in the last place of its weight, float32 Adam rounds the
update away, so the replay stops there and only decays the moments for the remaining steps (and
AdamW's decoupled decay of the weight) in closed form. The result is Adam's, to float32 rounding,
as fused and for-loop Adam agree with each other.

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

# Below this |update| / |weight|, float32 round-to-nearest leaves the weight unchanged (half an ulp).
_HALF_ULP = np.float32(2.0**-25)
_CHECK_EVERY = 8


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


@_inline
def _lerp(start, end, weight, rest):
    """torch.lerp(start, end, weight) in float32, as torch computes it (`rest` = 1 - weight in
    float32): Adam's first moment is exp_avg.lerp_(grad, 1 - beta1)."""
    if weight < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * rest


@_jit
def _replay(p, m, v, r, first, last, lrs, bc1, bc2s, b1, b2, eps, wd, may_stop):
    """Zero-gradient Adam steps `first`..`last` (1-based step numbers) on row `r`; `lrs[s]` is the
    learning rate step s used (a schedule may change it every step), `wd` AdamW's weight decay.

    Element arithmetic in float32, in the order of torch's single-tensor float32 Adam
    (torch.optim.Adam(foreach=False)); per-step scalars in float64, rounded once."""
    pr, mr, vr = p[r], m[r], v[r]
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


@_parallel
def catch_up(p, m, v, current, ids, step, lrs, bc1, bc2s, b1, b2, eps, wd, may_stop):
    """Bring every row named in `ids` (repeats allowed) up to `step`."""
    stale = np.empty(ids.shape[0], dtype=np.int64)
    first = np.empty(ids.shape[0], dtype=np.int64)
    k = 0
    for i in range(ids.shape[0]):  # each stale row once: no two threads may replay the same row
        r = ids[i]
        if current[r] < step:
            stale[k] = r
            first[k] = current[r] + 1
            current[r] = step
            k += 1
    for j in prange(k):
        _replay(p, m, v, stale[j], first[j], step, lrs, bc1, bc2s, b1, b2, eps, wd, may_stop)


@_parallel
def catch_up_all(p, m, v, current, step, lrs, bc1, bc2s, b1, b2, eps, wd, may_stop):
    for r in prange(p.shape[0]):
        if current[r] < step:
            _replay(p, m, v, r, current[r] + 1, step, lrs, bc1, bc2s, b1, b2, eps, wd, may_stop)
            current[r] = step


@_parallel
def adam_rows(p, m, v, current, rows, grads, step, lrs, bc1, bc2s, b1, b2, eps, wd, may_stop):
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
        if current[r] < step - 1:
            _replay(p, m, v, r, current[r] + 1, step - 1, lrs, bc1, bc2s, b1, b2, eps, wd, may_stop)
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
