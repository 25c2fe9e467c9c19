"""16-lane float vectors for numba kernels (<16 x float> or <16 x double> LLVM values) and their
arithmetic intrinsics; those that move, pick or reinterpret lanes are simdlanes.py's. Not a SIMD
library: no bounds checks (the kernels' wrappers check the shapes), no general shuffles.
"""

# 16-lane float vectors for numba kernels: a numba type whose LLVM value is <16 x float> (or
# <16 x double>), and their arithmetic: load, store, splat, add, subtract, multiply, divide, fused
# multiply-add (and its scalar form), lane sum, widening to float64 (the direct convolutions, the
# fc products, BN's statistics and sums); floor (augmentation's bilinear warp); square root (BN's
# invstd). The shuffles, selects, int8 loads/stores, dtype conversion, gathers and 2^k from exponent
# bits are simdlanes.py's.
# A kernel keeps a tile of such vectors as loop variables, and LLVM keeps them in registers: the
# register-blocked inner loops numba's vectorizers do not find.
#
# `vfma` is llvm.fma: one rounding, the same bits on every CPU (with or without FMA hardware), so
# results stay bitwise reproducible; this is explicit arithmetic, not `fastmath` contraction (which
# would let LLVM choose). `vhsum` adds the lanes left to right, a fixed order.
# The kernels' cache stamp covers this file (cachestamp.py): after an edit every kernel compiles again.

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

LANES = 16                     # conv2's maps are 16 wide: one output row is one vector


def _wide_registers() -> bool:
    """True when numba compiles for AVX-512 (32 vector registers of 16 float32 lanes), False for
    AVX2 and narrower (a 16-lane vector takes two of 16 registers, or more). The convolutions'
    register tiles follow it: see conv16.py. numba's target: NUMBA_CPU_NAME/NUMBA_CPU_FEATURES when
    set (e.g. a portable cache), else this machine's CPU."""
    from numba.core import config

    if config.CPU_NAME:
        return "+avx512f" in (config.CPU_FEATURES or "")
    try:
        import llvmlite.binding as ll

        return bool(ll.get_host_cpu_features().get("avx512f", False))
    except Exception:  # noqa: BLE001 -- a CPU llvmlite cannot describe: the narrow tiles work anywhere
        return False


WIDE = _wide_registers()       # compile-time constant of the kernels (numba's cache is per CPU too)


class Vec(types.Type):
    """LANES values of one float dtype (float32 or float64)."""

    def __init__(self, dtype):
        self.dtype = dtype
        super().__init__(name=f"Vec{LANES}({dtype})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(dmm.lookup(fe_type.dtype).get_value_type(), LANES))


def vec_ptr(context, builder, arrty, arr, idxty, idx, vecty):
    # address of element `idx` of a C-contiguous array, counted over its flat data
    data = context.make_array(arrty)(context, builder, arr).data
    i = context.cast(builder, idx, idxty, types.intp)
    return builder.bitcast(builder.gep(data, [i]), vecty.as_pointer())


def check_float_array(arr):
    """TypeError unless arr is a C-contiguous float32/float64 array (numba's type of it)."""
    if not (isinstance(arr, types.Array) and arr.dtype in (types.float32, types.float64)
            and arr.layout == "C"):
        raise TypeError(f"simd: need a C-contiguous float32/float64 array, got {arr}")


@intrinsic
def vload(typingctx, arr, idx):
    """arr[flat idx : flat idx + LANES] as one vector (any alignment)."""
    check_float_array(arr)
    vt = Vec(arr.dtype)

    def codegen(context, builder, sig, args):
        p = vec_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1], context.get_value_type(vt))
        return builder.load(p, align=arr.dtype.bitwidth // 8)
    return vt(arr, idx), codegen


@intrinsic
def vstore(typingctx, arr, idx, v):
    """arr[flat idx : flat idx + LANES] = v."""
    check_float_array(arr)
    if not (isinstance(v, Vec) and v.dtype == arr.dtype):
        raise TypeError(f"simd.vstore: {v} does not match {arr}")

    def codegen(context, builder, sig, args):
        p = vec_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1], context.get_value_type(v))
        builder.store(args[2], p, align=arr.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.none(arr, idx, v), codegen


@intrinsic
def vsplat(typingctx, x):
    """A vector with x in every lane (x: a float32 or float64 scalar, e.g. one weight)."""
    if x not in (types.float32, types.float64):
        raise TypeError(f"simd.vsplat: need a float32/float64 scalar, got {x}")
    vt = Vec(x)

    def codegen(context, builder, sig, args):
        vecty = context.get_value_type(vt)
        undef = ir.Constant(vecty, ir.Undefined)
        v = builder.insert_element(undef, args[0], ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))
    return vt(x), codegen


@intrinsic
def vzero(typingctx, like):
    """A zero vector of the dtype of the array `like`."""
    check_float_array(like)
    vt = Vec(like.dtype)

    def codegen(context, builder, sig, args):
        return ir.Constant(context.get_value_type(vt), None)
    return vt(like), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """a * b + c in every lane, rounded once (llvm.fma)."""
    if not (isinstance(a, Vec) and a == b == c):
        raise TypeError(f"simd.vfma: need three vectors of one dtype, got {a}, {b}, {c}")

    def codegen(context, builder, sig, args):
        vecty = args[0].type
        name = f"llvm.fma.v{LANES}f{'32' if a.dtype == types.float32 else '64'}"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vecty, [vecty] * 3), name)
        return builder.call(fn, list(args))
    return a(a, b, c), codegen


@intrinsic
def sfma(typingctx, a, b, c):
    """a * b + c for three float32 or three float64 scalars, rounded once: one lane of vfma."""
    if not (a in (types.float32, types.float64) and a == b == c):
        raise TypeError(f"simd.sfma: need three scalars of one float dtype, got {a}, {b}, {c}")

    def codegen(context, builder, sig, args):
        ty = args[0].type
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty] * 3),
                                            f"llvm.fma.f{'32' if a == types.float32 else '64'}")
        return builder.call(fn, list(args))
    return a(a, b, c), codegen


def _binary_intrinsic(name, op, doc):
    # a vector intrinsic (a, b) -> builder.<op>(a, b) lane by lane, for two vectors of one dtype
    @intrinsic
    def binary(typingctx, a, b):
        if not (isinstance(a, Vec) and a == b):
            raise TypeError(f"simd.{name}: need two vectors of one dtype, got {a}, {b}")

        def codegen(context, builder, sig, args):
            return getattr(builder, op)(args[0], args[1])
        return a(a, b), codegen
    binary.__doc__ = doc
    return binary


vadd = _binary_intrinsic("vadd", "fadd", "a + b in every lane.")
vsub = _binary_intrinsic("vsub", "fsub", "a - b in every lane.")
vmul = _binary_intrinsic("vmul", "fmul", "a * b in every lane.")
vdiv = _binary_intrinsic("vdiv", "fdiv", "a / b in every lane (IEEE division, as the scalar a / b).")


@intrinsic
def vhsum(typingctx, v):
    """The sum of the lanes, added left to right: ((v0 + v1) + v2) + ... + v15."""
    if not isinstance(v, Vec):
        raise TypeError(f"simd.vhsum: need a vector, got {v}")

    def codegen(context, builder, sig, args):
        lane = lambda i: builder.extract_element(args[0], ir.Constant(ir.IntType(32), i))  # noqa: E731
        acc = lane(0)
        for i in range(1, LANES):
            acc = builder.fadd(acc, lane(i))
        return acc
    return v.dtype(v), codegen


@intrinsic
def vwiden(typingctx, v):
    """v in float64 lanes (exact: float32 -> float64 loses nothing; a float64 vector as is)."""
    if not isinstance(v, Vec):
        raise TypeError(f"simd.vwiden: need a vector, got {v}")
    vt = Vec(types.float64)

    def codegen(context, builder, sig, args):
        if v.dtype == types.float64:
            return args[0]
        return builder.fpext(args[0], context.get_value_type(vt))
    return vt(v), codegen


def _unary_intrinsic(name, llvm, doc):
    # a vector intrinsic v -> llvm.<llvm>.v16f32/64(v) lane by lane
    @intrinsic
    def unary(typingctx, v):
        if not isinstance(v, Vec):
            raise TypeError(f"simd.{name}: need a vector, got {v}")

        def codegen(context, builder, sig, args):
            vecty = args[0].type
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vecty, [vecty]),
                                                f"llvm.{llvm}.v{LANES}f{v.dtype.bitwidth}")
            return builder.call(fn, [args[0]])
        return v(v), codegen
    unary.__doc__ = doc
    return unary


vfloor = _unary_intrinsic("vfloor", "floor", "floor(v) in every lane (llvm.floor: exact).")
vsqrt = _unary_intrinsic("vsqrt", "sqrt", "sqrt(v) in every lane (llvm.sqrt: correctly rounded, the bits of "
                         "math.sqrt lane by lane).")
