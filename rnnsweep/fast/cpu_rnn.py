"""One tanh RNN, GRU or LSTM layer on the CPU, its forward and backward passes compiled.

At batch 16 and hidden 32 a recurrent layer is hundreds of tiny operations per batch. PyTorch's
CPU build runs the GRU and the vanilla RNN as a loop of small ops per time step, forward and
backward, where per-op overhead is most of the time; its LSTM has a oneDNN kernel, which still
pays a call per step. Here:

- the input projections of all time steps are one matrix product (torch);
- the recurrence runs in two numba loops, one forward and one backward, that touch only what the
  next step needs: the recurrent matrix-vector product and the gates. The forward loop saves the
  gate activations (and the LSTM's cell states and their tanh) for the backward loop;
- a batch's sequences are independent, so both loops split the batch over numba's threads
  (`prange`, `set_threads`); each sequence is computed by one thread, exactly as on one;
- the weight gradients are again matrix products over all time steps (torch).

The arithmetic is PyTorch's, gate for gate: RNN h' = tanh(W_ih x + b_ih + W_hh h + b_hh); GRU
gates r, z, n with the reset gate scaling the recurrent projection of n, bias included; LSTM
gates i, f, g, o, c' = f c + i g, h' = o tanh(c'). All in float32 from a zero state; sigmoid and
tanh are numba_math's vectorizable routines (within 2.5 ulp, as torch's sigmoid). Every
elementwise loop handles one quantity over the hidden units, which keeps it to a few arrays, so
that LLVM vectorizes it; a loop computing every gate at once stays scalar. Measured speeds against
torch's own layers are in benchmarks/README.md.
"""

from __future__ import annotations

import functools
import importlib

import numba
import numpy as np
import torch
from numba import prange

from .numba_math import INLINE_JIT as _inline
from .numba_math import JIT as _jit
from .numba_math import PARALLEL_JIT as _parallel
from .numba_math import ONE, sigmoid, tanh

WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # torch's names, less the _l{layer} suffix


@_inline
def _add_rows(acc, coef, rows):
    """acc += sum over r of coef[r] * rows[r], taking four rows per pass over acc, added in row
    order: the same sums, rounded the same, as one row per pass, with a quarter of the loads and
    stores of acc."""
    n = coef.shape[0]
    r = 0
    while r + 4 <= n:
        c0, c1, c2, c3 = coef[r], coef[r + 1], coef[r + 2], coef[r + 3]
        m0, m1, m2, m3 = rows[r], rows[r + 1], rows[r + 2], rows[r + 3]
        for j in range(acc.shape[0]):
            acc[j] = (((acc[j] + c0 * m0[j]) + c1 * m1[j]) + c2 * m2[j]) + c3 * m3[j]
        r += 4
    for r in range(r, n):
        c = coef[r]
        for j in range(acc.shape[0]):
            acc[j] += c * rows[r, j]


@_jit
def _recurrent_product(gh, b_hh, w_hh_t, h):
    """gh = b_hh + W_hh h, with W_hh transposed: (H, G)."""
    gh[:] = b_hh
    _add_rows(gh, h, w_hh_t)


@_jit
def _back_through_w_hh(dh_prev, d_gh, w_hh):
    """dh_prev += W_hh^T d_gh, with W_hh: (G, H)."""
    _add_rows(dh_prev, d_gh, w_hh)


@_parallel
def _rnn_forward(gi, w_hh_t, b_hh, out):
    batch, steps, hidden = out.shape
    for b in prange(batch):
        h = np.zeros(hidden, dtype=np.float32)
        gh = np.empty(hidden, dtype=np.float32)
        for t in range(steps):
            _recurrent_product(gh, b_hh, w_hh_t, h)
            gi_bt = gi[b, t]
            for j in range(hidden):
                h[j] = tanh(gi_bt[j] + gh[j])
            out[b, t, :] = h


@_parallel
def _rnn_backward(grad_out, out, w_hh, d_gi):
    """d_gi: the gradient of each step's pre-activation (also W_hh h's)."""
    batch, steps, hidden = out.shape
    for b in prange(batch):
        dh = np.zeros(hidden, dtype=np.float32)
        for t in range(steps - 1, -1, -1):
            out_bt, d_bt, grad_bt = out[b, t], d_gi[b, t], grad_out[b, t]
            for j in range(hidden):
                d_bt[j] = (dh[j] + grad_bt[j]) * (ONE - out_bt[j] * out_bt[j])
            dh[:] = 0.0
            _back_through_w_hh(dh, d_bt, w_hh)


@_parallel
def _gru_forward(gi, w_hh_t, b_hh, out, gates, gh_n):
    """Saves gates r, z, n (B, T, 3H) and gh_n, n's recurrent projection before the reset (B, T, H)."""
    batch, steps, hidden = out.shape
    for b in prange(batch):
        h = np.zeros(hidden, dtype=np.float32)
        gh = np.empty(3 * hidden, dtype=np.float32)
        pre_n = np.empty(hidden, dtype=np.float32)
        for t in range(steps):
            _recurrent_product(gh, b_hh, w_hh_t, h)
            gi_bt, gates_bt, gh_n_bt = gi[b, t], gates[b, t], gh_n[b, t]
            for j in range(2 * hidden):  # r, z
                gates_bt[j] = sigmoid(gi_bt[j] + gh[j])
            for j in range(hidden):
                gh_n_bt[j] = gh[2 * hidden + j]
                pre_n[j] = gi_bt[2 * hidden + j] + gates_bt[j] * gh[2 * hidden + j]
            for j in range(hidden):  # n
                gates_bt[2 * hidden + j] = tanh(pre_n[j])
            for j in range(hidden):
                z = gates_bt[hidden + j]
                h[j] = (ONE - z) * gates_bt[2 * hidden + j] + z * h[j]
            out[b, t, :] = h


@_parallel
def _gru_backward(grad_out, out, gates, gh_n, w_hh, d_gi, d_gh):
    """d_gi: gradients of the input projections; d_gh: of the recurrent ones (they differ in n)."""
    batch, steps, hidden = out.shape
    for b in prange(batch):
        dh, h_prev = np.zeros(hidden, dtype=np.float32), np.zeros(hidden, dtype=np.float32)
        for t in range(steps - 1, -1, -1):
            if t > 0:
                h_prev[:] = out[b, t - 1]
            else:
                h_prev[:] = 0.0
            gates_bt, d_gi_bt, d_gh_bt, grad_bt, gh_n_bt = gates[b, t], d_gi[b, t], d_gh[b, t], grad_out[b, t], gh_n[b, t]
            for j in range(hidden):
                dh[j] += grad_bt[j]
            for j in range(hidden):  # n
                n = gates_bt[2 * hidden + j]
                d_gi_bt[2 * hidden + j] = dh[j] * (ONE - gates_bt[hidden + j]) * (ONE - n * n)
            for j in range(hidden):  # z
                z = gates_bt[hidden + j]
                d_gi_bt[hidden + j] = dh[j] * (h_prev[j] - gates_bt[2 * hidden + j]) * z * (ONE - z)
            for j in range(hidden):  # r
                r = gates_bt[j]
                d_gi_bt[j] = d_gi_bt[2 * hidden + j] * gh_n_bt[j] * r * (ONE - r)
            for j in range(2 * hidden):
                d_gh_bt[j] = d_gi_bt[j]
            for j in range(hidden):
                d_gh_bt[2 * hidden + j] = d_gi_bt[2 * hidden + j] * gates_bt[j]
            for j in range(hidden):
                dh[j] = dh[j] * gates_bt[hidden + j]
            _back_through_w_hh(dh, d_gh_bt, w_hh)


@_parallel
def _lstm_forward(gi, w_hh_t, b_hh, out, gates, cells, tanh_cells):
    """Saves gates i, f, g, o (B, T, 4H), the cell states and their tanh (B, T, H)."""
    batch, steps, hidden = out.shape
    for b in prange(batch):
        c = np.zeros(hidden, dtype=np.float32)
        h = np.zeros(hidden, dtype=np.float32)
        pre = np.empty(4 * hidden, dtype=np.float32)
        for t in range(steps):
            _recurrent_product(pre, b_hh, w_hh_t, h)
            gi_bt, g_bt, c_bt, tc_bt, out_bt = gi[b, t], gates[b, t], cells[b, t], tanh_cells[b, t], out[b, t]
            for j in range(4 * hidden):
                pre[j] += gi_bt[j]
            # One gate per loop, each on its own slices (see the module's docstring).
            i, f, g, o = g_bt[:hidden], g_bt[hidden:2 * hidden], g_bt[2 * hidden:3 * hidden], g_bt[3 * hidden:]
            pre_i, pre_f, pre_g, pre_o = pre[:hidden], pre[hidden:2 * hidden], pre[2 * hidden:3 * hidden], pre[3 * hidden:]
            for j in range(hidden):
                i[j] = sigmoid(pre_i[j])
            for j in range(hidden):
                f[j] = sigmoid(pre_f[j])
            for j in range(hidden):
                g[j] = tanh(pre_g[j])
            for j in range(hidden):
                o[j] = sigmoid(pre_o[j])
            for j in range(hidden):
                c[j] = f[j] * c[j] + i[j] * g[j]
            for j in range(hidden):
                c_bt[j] = c[j]
            for j in range(hidden):
                tc_bt[j] = tanh(c[j])
            for j in range(hidden):
                h[j] = o[j] * tc_bt[j]
            for j in range(hidden):
                out_bt[j] = h[j]


@_parallel
def _lstm_backward(grad_out, gates, cells, tanh_cells, w_hh, d_g):
    """d_g: the gradient of each step's gate pre-activations (input and recurrent projections alike)."""
    batch, steps, hidden = cells.shape
    for b in prange(batch):
        dh = np.zeros(hidden, dtype=np.float32)
        dc = np.zeros(hidden, dtype=np.float32)
        for t in range(steps - 1, -1, -1):
            g_bt, d_bt, grad_bt, tc = gates[b, t], d_g[b, t], grad_out[b, t], tanh_cells[b, t]
            i, f, g, o = g_bt[:hidden], g_bt[hidden:2 * hidden], g_bt[2 * hidden:3 * hidden], g_bt[3 * hidden:]
            d_i, d_f, d_gg, d_o = d_bt[:hidden], d_bt[hidden:2 * hidden], d_bt[2 * hidden:3 * hidden], d_bt[3 * hidden:]
            for j in range(hidden):
                dh[j] += grad_bt[j]
            for j in range(hidden):
                d_o[j] = dh[j] * tc[j] * o[j] * (ONE - o[j])
            for j in range(hidden):
                dc[j] += dh[j] * o[j] * (ONE - tc[j] * tc[j])
            for j in range(hidden):
                d_i[j] = dc[j] * g[j] * i[j] * (ONE - i[j])
            if t > 0:
                c_prev = cells[b, t - 1]
                for j in range(hidden):
                    d_f[j] = dc[j] * c_prev[j] * f[j] * (ONE - f[j])
            else:  # the state before the first step is zero
                for j in range(hidden):
                    d_f[j] = np.float32(0.0)
            for j in range(hidden):
                d_gg[j] = dc[j] * i[j] * (ONE - g[j] * g[j])
            for j in range(hidden):
                dc[j] = dc[j] * f[j]
            dh[:] = 0.0
            _back_through_w_hh(dh, d_bt, w_hh)


_SAVED_WIDTHS = {"rnn": (), "gru": ("width", "hidden"), "lstm": ("width", "hidden", "hidden")}


@_jit
def _zero_rows(d_x, ids, pad):
    """d_x[k] = 0 wherever ids[k] == pad."""
    for k in range(ids.shape[0]):
        if ids[k] == pad:
            d_x[k, :] = 0.0


class _Layer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kind, padding, x, w_ih, w_hh, b_ih, b_hh):
        batch, steps, _ = x.shape
        width, hidden = w_hh.shape
        gi = torch.addmm(b_ih.detach(), x.detach().reshape(-1, x.shape[2]), w_ih.detach().t())
        gi = gi.view(batch, steps, width).numpy()
        out = x.new_empty(batch, steps, hidden)
        # What the backward loop reads besides the outputs: the GRU's gates and n's recurrent
        # projection, the LSTM's gates, cell states and their tanh.
        saved = tuple(x.new_empty(batch, steps, width if w == "width" else hidden) for w in _SAVED_WIDTHS[kind])
        forward = {"rnn": _rnn_forward, "gru": _gru_forward, "lstm": _lstm_forward}[kind]
        forward(gi, w_hh.detach().t().contiguous().numpy(), b_hh.detach().numpy(), out.numpy(),
                *(s.numpy() for s in saved))
        ctx.kind, ctx.padding = kind, padding
        ctx.save_for_backward(x, w_ih, w_hh, out, *saved)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, w_ih, w_hh, out, *saved = ctx.saved_tensors
        batch, steps, hidden = out.shape
        width = w_hh.shape[0]
        grad = grad_out.detach().contiguous().numpy()
        w = w_hh.detach().contiguous().numpy()
        d_gi = x.new_empty(batch, steps, width)
        d_gh = d_gi  # the recurrent projections' gradient: the same, but for the GRU's n
        if ctx.kind == "rnn":
            _rnn_backward(grad, out.numpy(), w, d_gi.numpy())
        elif ctx.kind == "lstm":
            _lstm_backward(grad, *(s.numpy() for s in saved), w, d_gi.numpy())
        else:
            d_gh = x.new_empty(batch, steps, width)
            _gru_backward(grad, out.numpy(), *(s.numpy() for s in saved), w, d_gi.numpy(), d_gh.numpy())
        h_prev = torch.cat([out.new_zeros(batch, 1, hidden), out[:, :-1]], dim=1).reshape(-1, hidden)
        flat_gi, flat_gh = d_gi.view(-1, width), d_gh.view(-1, width)
        d_x = None
        if ctx.needs_input_grad[2]:
            d_x = flat_gi @ w_ih.detach()
            if ctx.padding is not None:  # a fresh tensor of this function's own: zeroed in place
                ids, pad = ctx.padding
                _zero_rows(d_x.numpy(), ids.reshape(-1).numpy(), pad)
            d_x = d_x.view_as(x)
        d_w_ih = flat_gi.t() @ x.detach().reshape(-1, x.shape[2])
        d_b_ih = flat_gi.sum(0)
        d_b_hh = d_b_ih if d_gh is d_gi else flat_gh.sum(0)
        return None, None, d_x, d_w_ih, flat_gh.t() @ h_prev, d_b_ih, d_b_hh


def kind_of(rnn: torch.nn.Module) -> str | None:
    """'rnn', 'gru' or 'lstm' for the layers this module computes, None for the others."""
    if isinstance(rnn, torch.nn.GRU):
        return "gru"
    if isinstance(rnn, torch.nn.LSTM) and not rnn.proj_size:
        return "lstm"
    if isinstance(rnn, torch.nn.RNN) and rnn.nonlinearity == "tanh":
        return "rnn"
    return None


def layer(rnn: torch.nn.Module, x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor,
          b_hh: torch.Tensor, padding: tuple[torch.Tensor, int] | None = None) -> torch.Tensor:
    """Outputs (B, T, H) of one batch-first layer of `rnn`'s kind, from a zero state.

    `padding` = (ids (B, T) int64, pad id): x is an embedding of `ids`, read by nothing else, and
    the gradient that reaches it at the padding positions is left out (zero): all it would do is
    reach the padding row, which takes none. The embedding then needs no padding mask of its own
    in its sparse backward, which costs more than this (see model.TextClassifier)."""
    return _Layer.apply(kind_of(rnn), padding, x.contiguous(), w_ih, w_hh, b_ih, b_hh)


def applies(x: torch.Tensor, rnn: torch.nn.Module) -> bool:
    """Whether `layer` can stand in for `rnn` on input `x`: a GRU, tanh RNN or LSTM without projection,
    with biases, float32, on the CPU."""
    return (kind_of(rnn) is not None and x.device.type == "cpu" and x.dtype == torch.float32 and rnn.bias
            and not torch.is_autocast_enabled())


@functools.cache
def warm_up(cls: type[torch.nn.Module]) -> None:
    """Call the loops of `cls`'s layers (nn.RNN, nn.GRU, nn.LSTM) once on a tiny layer, forward and
    backward: numba compiles a loop at its first call (seconds, the first time after an install; a
    load from its disk cache after that), and a run should not count that as training time."""
    with torch.random.fork_rng(devices=[]):  # the run's own random stream stays where it was
        rnn = cls(2, 2, batch_first=True)
    x = torch.zeros(2, 3, 2, requires_grad=True)
    padding = (torch.zeros(2, 3, dtype=torch.int64), 0)
    layer(rnn, x, *(getattr(rnn, f"{name}_l0") for name in WEIGHTS), padding=padding).sum().backward()


@functools.cache
def _pool_pays() -> bool:
    """Whether numba's thread pool is one that wakes fast enough for these loops: OpenMP or TBB.
    numba falls back to its own `workqueue` pool where neither loads, whose wake-up costs more than
    a step of these loops saves on a second thread. numba tries the same modules in turn."""
    if numba.config.THREADING_LAYER == "workqueue":
        return False
    for pool in ("omppool", "tbbpool"):
        try:
            importlib.import_module(f"numba.np.ufunc.{pool}")
            return True
        except ImportError:
            continue
    return False


def set_threads(n: int) -> int:
    """Split the compiled loops' batches over `n` threads (as many as numba's pool has, at most;
    one where its pool would not pay). Returns the number set."""
    n = max(1, min(n, numba.config.NUMBA_NUM_THREADS)) if _pool_pays() else 1
    torch_threads = torch.get_num_threads()
    numba.set_num_threads(n)
    # The first call starts numba's OpenMP pool, which resets OpenMP's thread count, and with it
    # torch's, to every core: a launcher worker's first job would train on more than its share.
    torch.set_num_threads(torch_threads)
    return n
