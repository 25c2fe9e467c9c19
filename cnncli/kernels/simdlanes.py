"""The intrinsics of simd.py's 16-lane vectors that move, pick or reinterpret lanes rather than compute
on them: even/odd and interleave shuffles, compare-and-select, int8 loads/stores, dtype conversion,
gathers, and floats from exponent bits. Not the vector type nor its arithmetic (simd.py).
"""

# The 2x2 pooling takes the even/odd and interleave shuffles, compare-and-select and the int8
# loads/stores (its argmax); augmentation's bilinear warp the conversion to an array's dtype and a
# gather of neighbouring pairs; ELU's expm1 2^k from exponent bits, scalar and vector. As simd.py's:
# no bounds checks, the kernels' wrappers check the shapes.

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .simd import LANES, Vec, check_float_array, vec_ptr


@intrinsic
def float_from_bits(typingctx, i):
    """The float whose IEEE bits are the integer i: float32 for an int32, float64 for an int64
    (a bitcast; e.g. 2^-m = float_from_bits(np.int32(127 - m) << 23) exactly)."""
    out = {types.int32: types.float32, types.int64: types.float64}.get(i)
    if out is None:
        raise TypeError(f"simdlanes.float_from_bits: need an int32 or int64, got {i}")

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(out))
    return out(i), codegen


@intrinsic
def vexp2(typingctx, k):
    """2^k in every lane, for whole-valued lanes k with 2^k a normal number (its exponent bits;
    the vector form of float_from_bits((bias + k) << mantissa bits), exact)."""
    if not isinstance(k, Vec):
        raise TypeError(f"simdlanes.vexp2: need a vector, got {k}")
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
            raise TypeError(f"simdlanes: need two vectors of one dtype, got {a}, {b}")

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


def _select_intrinsic(op, doc):
    # (a, b, x, y) -> x where `a op b` (ordered: false for NaN), else y; lane by lane
    @intrinsic
    def select(typingctx, a, b, x, y):
        if not (isinstance(a, Vec) and a == b == x == y):
            raise TypeError(f"simdlanes: need four vectors of one dtype, got {a}, {b}, {x}, {y}")

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
        raise TypeError(f"simdlanes.vload_i8: need a C-contiguous int8 array, got {arr}")
    check_float_array(like)
    vt = Vec(like.dtype)

    def codegen(context, builder, sig, args):
        i8v = ir.VectorType(ir.IntType(8), LANES)
        p = vec_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1], i8v)
        return builder.sitofp(builder.load(p, align=1), context.get_value_type(vt))
    return vt(arr, idx, like), codegen


@intrinsic
def vstore_i8(typingctx, arr, idx, v):
    """arr[flat idx : flat idx + LANES] = v converted to int8 (v holds small whole numbers)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int8 and arr.layout == "C"):
        raise TypeError(f"simdlanes.vstore_i8: need a C-contiguous int8 array, got {arr}")
    if not isinstance(v, Vec):
        raise TypeError(f"simdlanes.vstore_i8: need a vector, got {v}")

    def codegen(context, builder, sig, args):
        i8v = ir.VectorType(ir.IntType(8), LANES)
        p = vec_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1], i8v)
        builder.store(builder.fptosi(args[2], i8v), p, align=1)
        return context.get_dummy_value()
    return types.none(arr, idx, v), codegen


@intrinsic
def vconvert(typingctx, v, like):
    """v in the dtype of the array `like`, rounded to nearest as a scalar store of it would be."""
    if not isinstance(v, Vec):
        raise TypeError(f"simdlanes.vconvert: need a vector, got {v}")
    check_float_array(like)
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
    check_float_array(arr)
    if not isinstance(at, Vec) or at.dtype != types.float64:
        raise TypeError(f"simdlanes.vgather_pair: need a float64 vector of indices, got {at}")
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
