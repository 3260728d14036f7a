"""One GRU or tanh RNN layer on the CPU with its forward and backward passes as compiled loops.

PyTorch's CPU build has a oneDNN kernel for the LSTM only; its GRU and vanilla RNN run a loop of
small ops per time step, forward and backward, and at batch 16 and hidden 32 the per-op overhead
is most of the step. Here the input projection of all time steps is one matrix product (torch),
and the recurrence runs in two numba loops, one forward, one backward, saving what the backward
pass needs. The arithmetic is PyTorch's, gate for gate (GRU: r, z, n, the reset gate scaling the
recurrent projection of n, bias included), in float32, from a zero initial state; sigmoid and
tanh are numba_math's vectorizable float32 routines (as accurate as torch's own).
"""

from __future__ import annotations

import numpy as np
import torch

from .numba_math import JIT as _jit
from .numba_math import sigmoid, tanh

WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # nn.GRU's / nn.RNN's, less _l{layer}


@_jit
def _forward(gi, w_hh_t, b_hh, out, gates, gh_n):
    """gi: (B, T, 3H) input projections incl. b_ih; w_hh_t: (H, 3H). Writes out (B, T, H), the
    gates r, z, n (B, T, 3H) and the recurrent projection of n before the reset, gh_n (B, T, H)."""
    batch, steps, three_h = gi.shape
    hidden = three_h // 3
    h = np.zeros(hidden, dtype=np.float32)
    gh = np.empty(three_h, dtype=np.float32)
    for b in range(batch):
        h[:] = 0.0
        for t in range(steps):
            gh[:] = b_hh
            for k in range(hidden):
                hk = h[k]
                for j in range(three_h):
                    gh[j] += hk * w_hh_t[k, j]
            gi_bt, gates_bt, out_bt, gh_n_bt = gi[b, t], gates[b, t], out[b, t], gh_n[b, t]
            for j in range(hidden):
                r = sigmoid(gi_bt[j] + gh[j])
                z = sigmoid(gi_bt[hidden + j] + gh[hidden + j])
                n = tanh(gi_bt[2 * hidden + j] + r * gh[2 * hidden + j])
                gates_bt[j] = r
                gates_bt[hidden + j] = z
                gates_bt[2 * hidden + j] = n
                gh_n_bt[j] = gh[2 * hidden + j]
                h[j] = (np.float32(1.0) - z) * n + z * h[j]
                out_bt[j] = h[j]


@_jit
def _backward(grad_out, out, gates, gh_n, w_hh, d_gi, d_w_hh, d_b_hh):
    """Gradients from grad_out (B, T, H): d_gi (B, T, 3H) (for x, W_ih and b_ih, by matrix
    products outside), and accumulated into d_w_hh (3H, H) and d_b_hh (3H)."""
    batch, steps, hidden = out.shape
    three_h = 3 * hidden
    dh = np.zeros(hidden, dtype=np.float32)
    dh_prev = np.zeros(hidden, dtype=np.float32)
    d_gh = np.empty(three_h, dtype=np.float32)
    h_prev = np.empty(hidden, dtype=np.float32)
    one = np.float32(1.0)
    for b in range(batch):
        dh[:] = 0.0
        for t in range(steps - 1, -1, -1):
            for j in range(hidden):
                h_prev[j] = out[b, t - 1, j] if t > 0 else np.float32(0.0)
                dh[j] += grad_out[b, t, j]
            for j in range(hidden):
                r = gates[b, t, j]
                z = gates[b, t, hidden + j]
                n = gates[b, t, 2 * hidden + j]
                d_n = dh[j] * (one - z) * (one - n * n)
                d_z = dh[j] * (h_prev[j] - n) * z * (one - z)
                d_r = d_n * gh_n[b, t, j] * r * (one - r)
                d_gi[b, t, j] = d_r
                d_gi[b, t, hidden + j] = d_z
                d_gi[b, t, 2 * hidden + j] = d_n
                d_gh[j] = d_r
                d_gh[hidden + j] = d_z
                d_gh[2 * hidden + j] = d_n * r
                dh_prev[j] = dh[j] * z
            for j in range(three_h):
                g = d_gh[j]
                d_b_hh[j] += g
                for k in range(hidden):
                    d_w_hh[j, k] += g * h_prev[k]
                    dh_prev[k] += g * w_hh[j, k]
            dh[:] = dh_prev


@_jit
def _rnn_forward(gi, w_hh_t, b_hh, out):
    """h_t = tanh(gi_t + W_hh h_(t-1) + b_hh); gi: (B, T, H) input projections incl. b_ih."""
    batch, steps, hidden = gi.shape
    h = np.zeros(hidden, dtype=np.float32)
    gh = np.empty(hidden, dtype=np.float32)
    for b in range(batch):
        h[:] = 0.0
        for t in range(steps):
            gh[:] = b_hh
            for k in range(hidden):
                hk = h[k]
                for j in range(hidden):
                    gh[j] += hk * w_hh_t[k, j]
            gi_bt, out_bt = gi[b, t], out[b, t]
            for j in range(hidden):
                h[j] = tanh(gi_bt[j] + gh[j])
                out_bt[j] = h[j]


@_jit
def _rnn_backward(grad_out, out, w_hh, d_gi, d_w_hh, d_b_hh):
    batch, steps, hidden = out.shape
    dh = np.zeros(hidden, dtype=np.float32)
    dh_prev = np.zeros(hidden, dtype=np.float32)
    h_prev = np.empty(hidden, dtype=np.float32)
    one = np.float32(1.0)
    for b in range(batch):
        dh[:] = 0.0
        for t in range(steps - 1, -1, -1):
            out_bt, d_gi_bt = out[b, t], d_gi[b, t]
            for j in range(hidden):
                h_prev[j] = out[b, t - 1, j] if t > 0 else np.float32(0.0)
                d_gi_bt[j] = (dh[j] + grad_out[b, t, j]) * (one - out_bt[j] * out_bt[j])
                dh_prev[j] = 0.0
            for j in range(hidden):
                g = d_gi_bt[j]
                d_b_hh[j] += g
                for k in range(hidden):
                    d_w_hh[j, k] += g * h_prev[k]
                    dh_prev[k] += g * w_hh[j, k]
            dh[:] = dh_prev


class _Layer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gru, x, w_ih, w_hh, b_ih, b_hh):
        batch, steps, _ = x.shape
        hidden, gates_n = w_hh.shape[1], w_hh.shape[0]
        gi = torch.addmm(b_ih, x.reshape(-1, x.shape[2]), w_ih.t()).view(batch, steps, gates_n)
        out = x.new_empty(batch, steps, hidden)
        w_hh_t = w_hh.detach().t().contiguous().numpy()
        if gru:
            gates = x.new_empty(batch, steps, gates_n)
            gh_n = x.new_empty(batch, steps, hidden)
            _forward(gi.detach().numpy(), w_hh_t, b_hh.detach().numpy(), out.numpy(), gates.numpy(), gh_n.numpy())
            ctx.save_for_backward(x, w_ih, w_hh, out, gates, gh_n)
        else:
            _rnn_forward(gi.detach().numpy(), w_hh_t, b_hh.detach().numpy(), out.numpy())
            ctx.save_for_backward(x, w_ih, w_hh, out)
        ctx.gru = gru
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, w_ih, w_hh, out, *gru_saved = ctx.saved_tensors
        batch, steps, hidden = out.shape
        gates_n = w_hh.shape[0]
        d_gi = x.new_empty(batch, steps, gates_n)
        d_w_hh = torch.zeros_like(w_hh)
        d_b_hh = x.new_zeros(gates_n)
        grad_out = grad_out.detach().contiguous().numpy()
        w_hh_np = w_hh.detach().contiguous().numpy()
        if ctx.gru:
            gates, gh_n = gru_saved
            _backward(grad_out, out.numpy(), gates.numpy(), gh_n.numpy(), w_hh_np, d_gi.numpy(), d_w_hh.numpy(),
                      d_b_hh.numpy())
        else:
            _rnn_backward(grad_out, out.numpy(), w_hh_np, d_gi.numpy(), d_w_hh.numpy(), d_b_hh.numpy())
        flat = d_gi.view(-1, gates_n)
        d_x = (flat @ w_ih.detach()).view_as(x) if ctx.needs_input_grad[1] else None
        d_w_ih = flat.t() @ x.detach().reshape(-1, x.shape[2])
        return None, d_x, d_w_ih, d_w_hh, flat.sum(0), d_b_hh


def layer(rnn: torch.nn.Module, x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor,
          b_hh: torch.Tensor) -> torch.Tensor:
    """Outputs (B, T, H) of one batch-first layer of `rnn`'s kind (GRU or tanh RNN) from a zero state."""
    return _Layer.apply(isinstance(rnn, torch.nn.GRU), x.contiguous(), w_ih, w_hh, b_ih, b_hh)


def applies(x: torch.Tensor, rnn: torch.nn.Module) -> bool:
    """Whether `layer` can stand in for `rnn` on input `x`: a GRU or tanh RNN with biases, float32, CPU."""
    kind_ok = isinstance(rnn, torch.nn.GRU) or (isinstance(rnn, torch.nn.RNN) and rnn.nonlinearity == "tanh")
    return (kind_ok and x.device.type == "cpu" and x.dtype == torch.float32 and rnn.bias
            and not torch.is_autocast_enabled())
