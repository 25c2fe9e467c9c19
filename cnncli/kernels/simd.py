"""16-lane float vectors for numba kernels (<16 x float> or <16 x double> LLVM values) and the few
intrinsics the kernels need. Not a SIMD library: no bounds checks (the kernels' wrappers check the
shapes), no general shuffles.
"""

# 16-lane float vectors for numba kernels: a numba type whose LLVM value is <16 x float> (or
# <16 x double>), and the few intrinsics the kernels need: load, store, splat, add, subtract,
# multiply, divide, fused multiply-add (and its scalar form), lane sum, widening to float64 (the
# direct convolutions, the fc products, BN's statistics and sums); even/odd and interleave
# shuffles, compare-and-select, int8 loads/stores (the 2x2 pooling); floor, conversion to an array's
# dtype and a gather (augmentation's bilinear warp); square root (BN's invstd); plus 2^k from
# exponent bits, scalar and vector (ELU's expm1).
# A kernel keeps a tile of such vectors as loop variables, and LLVM keeps them in registers: the
# register-blocked inner loops numba's vectorizers do not find.
#
# `vfma` is llvm.fma: one rounding, the same bits on every CPU (with or without FMA hardware), so
# results stay bitwise reproducible; this is explicit arithmetic, not `fastmath` contraction (which
# would let LLVM choose). `vhsum` adds the lanes left to right, a fixed order.
# Numba's cache does not see edits to this file: after changing it, clear the kernels' cache.

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


def _vec_ptr(context, builder, arrty, arr, idxty, idx, vecty):
    # address of element `idx` of a C-contiguous array, counted over its flat data
    data = context.make_array(arrty)(context, builder, arr).data
    i = context.cast(builder, idx, idxty, types.intp)
    return builder.bitcast(builder.gep(data, [i]), vecty.as_pointer())


def _check_float_array(arr):
    if not (isinstance(arr, types.Array) and arr.dtype in (types.float32, types.float64)
            and arr.layout == "C"):
        raise TypeError(f"simd: need a C-contiguous float32/float64 array, got {arr}")


@intrinsic
def vload(typingctx, arr, idx):
    """arr[flat idx : flat idx + LANES] as one vector (any alignment)."""
    _check_float_array(arr)
    vt = Vec(arr.dtype)

    def codegen(context, builder, sig, args):
        p = _vec_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1], context.get_value_type(vt))
        return builder.load(p, align=arr.dtype.bitwidth // 8)
    return vt(arr, idx), codegen


@intrinsic
def vstore(typingctx, arr, idx, v):
    """arr[flat idx : flat idx + LANES] = v."""
    _check_float_array(arr)
    if not (isinstance(v, Vec) and v.dtype == arr.dtype):
        raise TypeError(f"simd.vstore: {v} does not match {arr}")

    def codegen(context, builder, sig, args):
        p = _vec_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1], context.get_value_type(v))
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
    _check_float_array(like)
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
def float_from_bits(typingctx, i):
    """The float whose IEEE bits are the integer i: float32 for an int32, float64 for an int64
    (a bitcast; e.g. 2^-m = float_from_bits(np.int32(127 - m) << 23) exactly)."""
    out = {types.int32: types.float32, types.int64: types.float64}.get(i)
    if out is None:
        raise TypeError(f"simd.float_from_bits: need an int32 or int64, got {i}")

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(out))
    return out(i), codegen


@intrinsic
def vexp2(typingctx, k):
    """2^k in every lane, for whole-valued lanes k with 2^k a normal number (its exponent bits;
    the vector form of float_from_bits((bias + k) << mantissa bits), exact)."""
    if not isinstance(k, Vec):
        raise TypeError(f"simd.vexp2: need a vector, got {k}")
    bits, bias, shift = (32, 127, 23) if k.dtype == types.float32 else (64, 1023, 52)

    def codegen(context, builder, sig, args):
        ivec = ir.VectorType(ir.IntType(bits), LANES)
        i = builder.add(builder.fptosi(args[0], ivec), ir.Constant(ivec, [bias] * LANES))
        return builder.bitcast(builder.shl(i, ir.Constant(ivec, [shift] * LANES)), args[0].type)
    return k(k), codegen


def _shuffle_intrinsic(mask, doc):
    # a vector intrinsic (a, b) -> lanes of the 32-lane concatenation [a, b] picked by `mask`
    @intrinsic
    def shuffle(typingctx, a, b):
        if not (isinstance(a, Vec) and a == b):
            raise TypeError(f"simd: need two vectors of one dtype, got {a}, {b}")

        def codegen(context, builder, sig, args):
            m = ir.Constant(ir.VectorType(ir.IntType(32), LANES), list(mask))
            return builder.shuffle_vector(args[0], args[1], m)
        return a(a, b), codegen
    shuffle.__doc__ = doc
    return shuffle


veven = _shuffle_intrinsic(range(0, 2 * LANES, 2), "The even lanes of [a, b]: a0 a2 .. a14 b0 b2 .. b14.")
vodd = _shuffle_intrinsic(range(1, 2 * LANES, 2), "The odd lanes of [a, b]: a1 a3 .. a15 b1 b3 .. b15.")
vzip_lo = _shuffle_intrinsic([j for i in range(LANES // 2) for j in (i, i + LANES)],
                             "a0 b0 a1 b1 .. a7 b7 (the low halves interleaved).")
vzip_hi = _shuffle_intrinsic([j for i in range(LANES // 2, LANES) for j in (i, i + LANES)],
                             "a8 b8 a9 b9 .. a15 b15 (the high halves interleaved).")


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


def _select_intrinsic(op, doc):
    # (a, b, x, y) -> x where `a op b` (ordered: false for NaN), else y; lane by lane
    @intrinsic
    def select(typingctx, a, b, x, y):
        if not (isinstance(a, Vec) and a == b == x == y):
            raise TypeError(f"simd: need four vectors of one dtype, got {a}, {b}, {x}, {y}")

        def codegen(context, builder, sig, args):
            return builder.select(builder.fcmp_ordered(op, args[0], args[1]), args[2], args[3])
        return a(a, b, x, y), codegen
    select.__doc__ = doc
    return select


vsel_gt = _select_intrinsic(">", "x where a > b, else y (lane by lane; a NaN compares false).")
vsel_eq = _select_intrinsic("==", "x where a == b, else y (lane by lane).")


@intrinsic
def vload_i8(typingctx, arr, idx, like):
    """arr[flat idx : flat idx + LANES] of an int8 array, as a vector of the dtype of `like`."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int8 and arr.layout == "C"):
        raise TypeError(f"simd.vload_i8: need a C-contiguous int8 array, got {arr}")
    _check_float_array(like)
    vt = Vec(like.dtype)

    def codegen(context, builder, sig, args):
        i8v = ir.VectorType(ir.IntType(8), LANES)
        p = _vec_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1], i8v)
        return builder.sitofp(builder.load(p, align=1), context.get_value_type(vt))
    return vt(arr, idx, like), codegen


@intrinsic
def vstore_i8(typingctx, arr, idx, v):
    """arr[flat idx : flat idx + LANES] = v converted to int8 (v holds small whole numbers)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int8 and arr.layout == "C"):
        raise TypeError(f"simd.vstore_i8: need a C-contiguous int8 array, got {arr}")
    if not isinstance(v, Vec):
        raise TypeError(f"simd.vstore_i8: need a vector, got {v}")

    def codegen(context, builder, sig, args):
        i8v = ir.VectorType(ir.IntType(8), LANES)
        p = _vec_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1], i8v)
        builder.store(builder.fptosi(args[2], i8v), p, align=1)
        return context.get_dummy_value()
    return types.none(arr, idx, v), codegen


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


@intrinsic
def vconvert(typingctx, v, like):
    """v in the dtype of the array `like`, rounded to nearest as a scalar store of it would be."""
    if not isinstance(v, Vec):
        raise TypeError(f"simd.vconvert: need a vector, got {v}")
    _check_float_array(like)
    vt = Vec(like.dtype)

    def codegen(context, builder, sig, args):
        to = context.get_value_type(vt)
        if v.dtype == like.dtype:
            return args[0]
        conv = builder.fptrunc if v.dtype.bitwidth > like.dtype.bitwidth else builder.fpext
        return conv(args[0], to)
    return vt(v, like), codegen


def _gather(builder, data, at, off, stride, valty):
    # llvm.masked.gather (every lane on) of valty (a vector of N values) from the addresses
    # data + (at + off) * stride bytes: `at` a vector of N whole floats, `off` an i64
    width = valty.count
    i64 = ir.IntType(64)
    iv = ir.VectorType(i64, width)
    start = builder.add(builder.ptrtoint(data, i64), builder.mul(off, ir.Constant(i64, stride)))
    undef = ir.Constant(iv, ir.Undefined)
    start = builder.shuffle_vector(builder.insert_element(undef, start, ir.Constant(ir.IntType(32), 0)), undef,
                                   ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width))
    offsets = builder.mul(builder.fptosi(at, iv), ir.Constant(iv, [stride] * width))
    ptrs = builder.inttoptr(builder.add(start, offsets), ir.VectorType(data.type, width))
    mask = ir.Constant(ir.VectorType(ir.IntType(1), width), [1] * width)
    elem = {ir.FloatType: "f32", ir.DoubleType: "f64"}.get(type(valty.element), "i64")
    fnty = ir.FunctionType(valty, [ptrs.type, ir.IntType(32), mask.type, valty])
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.masked.gather.v{width}{elem}.v{width}p0")
    return builder.call(fn, [ptrs, ir.Constant(ir.IntType(32), 4), mask, ir.Constant(valty, None)])


@intrinsic
def vgather_pair(typingctx, arr, at, off):
    """(arr's flat elements at + off, those at + off + 1), lane by lane (llvm.masked.gather): two
    neighbours per lane, `at` a float64 vector of whole numbers, `off` an int; the caller keeps
    every at + off + 1 inside arr. For float32 each pair is one 64-bit element of the gather, split
    by even/odd shuffles (half the loads of two gathers); float64 runs two gathers."""
    _check_float_array(arr)
    if not isinstance(at, Vec) or at.dtype != types.float64:
        raise TypeError(f"simd.vgather_pair: need a float64 vector of indices, got {at}")
    vt = Vec(arr.dtype)

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        off = context.cast(builder, args[2], sig.args[2], types.int64)
        valty = context.get_value_type(vt)
        if arr.dtype == types.float64:
            first = _gather(builder, data, args[1], off, 8, valty)
            second = _gather(builder, data, args[1], builder.add(off, ir.Constant(off.type, 1)), 8, valty)
        else:
            i32, half = ir.IntType(32), LANES // 2
            parts = []
            for lanes in (range(half), range(half, LANES)):
                at = builder.shuffle_vector(args[1], args[1], ir.Constant(ir.VectorType(i32, half), list(lanes)))
                pairs = _gather(builder, data, at, off, 4, ir.VectorType(ir.IntType(64), half))
                parts.append(builder.bitcast(pairs, valty))       # little-endian: lane 2k = the pair's first
            first = builder.shuffle_vector(parts[0], parts[1], ir.Constant(ir.VectorType(i32, LANES),
                                                                           list(range(0, 2 * LANES, 2))))
            second = builder.shuffle_vector(parts[0], parts[1], ir.Constant(ir.VectorType(i32, LANES),
                                                                            list(range(1, 2 * LANES, 2))))
        tup = context.get_value_type(sig.return_type)
        return builder.insert_value(builder.insert_value(ir.Constant(tup, ir.Undefined), first, 0), second, 1)
    return types.UniTuple(vt, 2)(arr, at, off), codegen
