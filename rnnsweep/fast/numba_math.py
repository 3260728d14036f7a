"""float32 math for rnnsweep's numba loops, written so that LLVM can vectorize the loops.

numba turns math.sqrt, math.exp and math.tanh into calls to the C library, which LLVM will not
vectorize, and its Python-style division checks for zero. The loops here run a few thousand
elements per call, so eight lanes per instruction decide their speed:

- `sqrt` is LLVM's square root intrinsic (IEEE, correctly rounded, as libm's);
- `exp`, `sigmoid` and `tanh` are the Cephes float32 routines (range reduction and a
  polynomial). Measured over 3 million points in [-30, 30] against float64: exp within 0.98 ulp,
  sigmoid 2.41 (torch's own float32 sigmoid: 2.46), tanh 1.28 (torch: 0.51);
- `JIT` compiles with numpy's error model (IEEE division) and caches the machine code on disk;
  `PARALLEL_JIT` the same, with numba's parallel loops (`prange`).

numba's disk cache is keyed by each kernel's own source file, not by the helpers it inlines from
here: after editing this module, delete `rnnsweep/fast/__pycache__/*.nb[ic]` (an installed release
is recompiled anyway, its files being new).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from llvmlite.binding import llvm_version_info
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

JIT = njit(cache=True, nogil=True, error_model="numpy")
# Loops whose outer `prange` splits independent work (a batch's sequences) over numba's threads.
PARALLEL_JIT = njit(cache=True, nogil=True, error_model="numpy", parallel=True)
# Helpers inlined into the loops that call them (numba IR inlining: the caller is compiled as one piece).
INLINE_JIT = njit(cache=True, nogil=True, error_model="numpy", inline="always")
F = np.float32
ONE = F(1.0)  # a global: numba compiles it in as a float32 constant


@intrinsic
def sqrt(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.call(builder.module.declare_intrinsic("llvm.sqrt", [ir.FloatType()]), args)
    return types.float32(types.float32), codegen


@intrinsic
def sqrt64(typingctx, x):
    """`sqrt` for float64."""
    def codegen(context, builder, signature, args):
        return builder.call(builder.module.declare_intrinsic("llvm.sqrt", [ir.DoubleType()]), args)
    return types.float64(types.float64), codegen


@intrinsic
def _prefetch(typingctx, array, row, col):
    """Ask the CPU to bring the cache line holding array[row, col] in, without waiting for it."""
    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        data = context.make_array(array_type)(context, builder, args[0])
        index = [context.cast(builder, value, fromty, types.intp)
                 for value, fromty in zip(args[1:], signature.args[1:])]
        pointer = cgutils.get_item_pointer(context, builder, array_type, data, index)
        byte_pointer = ir.IntType(8).as_pointer()
        int32 = ir.IntType(32)
        # The intrinsic's name carries its pointer type: `p0` with LLVM's opaque pointers, `p0i8` before.
        name = "llvm.prefetch.p0" if llvm_version_info[0] >= 15 else "llvm.prefetch.p0i8"
        signature_ = ir.FunctionType(ir.VoidType(), [byte_pointer, int32, int32, int32])
        fn = cgutils.get_or_insert_function(builder.module, signature_, name)
        # read, keep in every cache level, data (not instructions)
        builder.call(fn, [builder.bitcast(pointer, byte_pointer), int32(0), int32(3), int32(1)])
        return context.get_dummy_value()
    return types.void(array, row, col), codegen


@INLINE_JIT
def prefetch_row(array, row):
    """Every cache line of row `row` of a 2-D C-contiguous array: a table's rows read in an order
    the CPU cannot foresee (a batch's tokens) each wait for memory otherwise."""
    step = max(1, 64 // array.itemsize)
    for col in range(0, array.shape[1], step):
        _prefetch(array, row, col)


@intrinsic
def _bits_as_float(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@INLINE_JIT
def exp(x):
    x = min(max(x, F(-87.3)), F(88.0))
    # n = round(x / ln 2) by the 1.5 * 2**23 trick; r = x - n ln 2 in two parts (Cody-Waite).
    n = (x * F(1.44269504088896341) + F(12582912.0)) - F(12582912.0)
    r = x - n * F(0.693359375) - n * F(-2.12194440e-4)
    p = F(1.9875691500e-4)
    p = p * r + F(1.3981999507e-3)
    p = p * r + F(8.3334519073e-3)
    p = p * r + F(4.1665795894e-2)
    p = p * r + F(1.6666665459e-1)
    p = p * r + F(5.0000001201e-1)
    p = p * r * r + r + F(1.0)
    return p * _bits_as_float((np.int32(n) + np.int32(127)) << np.int32(23))  # p * 2**n


@INLINE_JIT
def sigmoid(x):
    return F(1.0) / (F(1.0) + exp(-x))


@INLINE_JIT
def tanh(x):
    a = abs(x)
    z = x * x
    near_zero = ((((F(-5.70498872745e-3) * z + F(2.06390887954e-2)) * z - F(5.37397155531e-2)) * z
                  + F(1.33314422036e-1)) * z - F(3.33332819422e-1)) * z * x + x
    far = F(1.0) - F(2.0) / (exp(a + a) + F(1.0))
    far = far if x >= F(0.0) else -far
    return near_zero if a < F(0.625) else far
