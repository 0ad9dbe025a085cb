"""Eight bytes at a time (SWAR): loading a 64-bit word from any byte offset and testing all its bytes at once, for
the compiled loops over text (textkernels, textmarkup)."""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.extending import intrinsic

ONES = np.uint64(0x0101010101010101)
HIGH = np.uint64(0x8080808080808080)


@intrinsic
def unaligned_u64(typingctx, data, index):
    """The eight bytes at data[index:index + 8] as one little-endian uint64: a single unaligned load, where numba
    would otherwise load and shift each byte."""

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        address = builder.gep(array.data, [args[1]])
        pointer = builder.bitcast(address, ir.IntType(64).as_pointer())
        return builder.load(pointer, align=1)

    return numba.types.uint64(data, index), codegen


@numba.njit(inline="always")
def load(data: np.ndarray, i: int, count: int) -> np.uint64:
    """count (at most 8) bytes from data[i], little-endian (the caller keeps i + count within data)."""
    if count >= 8:
        return unaligned_u64(data, i)
    word = np.uint64(0)
    for k in range(count):
        word |= np.uint64(data[i + k]) << np.uint64(8 * k)
    return word


@numba.njit(inline="always")
def at_least(word: np.uint64, value: int) -> np.uint64:
    """The high bit of each byte (of an ASCII word) that is >= value."""
    return ((word | HIGH) - np.uint64(value) * ONES) & HIGH


@numba.njit(inline="always")
def equal(word: np.uint64, value: int) -> np.uint64:
    """The high bit of each byte (of an ASCII word) equal to value."""
    return ~at_least(word ^ (np.uint64(value) * ONES), 1) & HIGH


@numba.njit(nogil=True)
def digits(word: np.uint64) -> np.uint64:
    """The high bit of each byte (of an ASCII word) that is an ASCII digit."""
    return at_least(word, 0x30) & ~at_least(word, 0x3A)


@numba.njit(nogil=True)
def letters(word: np.uint64) -> np.uint64:
    """The high bit of each byte (of an ASCII word) that is an ASCII letter."""
    folded = word | (np.uint64(0x20) * ONES)
    return at_least(folded, 0x61) & ~at_least(folded, 0x7B)


@numba.njit(nogil=True)
def lanes(size: int) -> np.uint64:
    """The high bit of each of the first size (1 to 8) bytes of a word: those a shorter load filled."""
    return HIGH if size == 8 else HIGH & ((np.uint64(1) << np.uint64(8 * size)) - np.uint64(1))


@numba.njit(inline="always")
def marked(marks: np.uint64) -> int:
    """How many bytes have their high bit marked."""
    return int(((marks >> np.uint64(7)) * ONES) >> np.uint64(56))


@numba.njit(inline="always")
def skip_to(data: np.ndarray, i: int, end: int, a: int, b: int) -> int:
    """i, moved past the 8-byte words that hold neither byte a nor b (it may stop early at a non-ASCII byte: the
    caller tests each byte from there)."""
    while i + 8 <= end:
        word = unaligned_u64(data, i)
        if equal(word, a) | equal(word, b):
            return i
        i += 8
    return i


@intrinsic
def store_u64(typingctx, out, index, value):
    """Write value's eight bytes, little-endian, at out[index:index + 8]: a single unaligned store."""

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        address = builder.gep(array.data, [args[1]])
        pointer = builder.bitcast(address, ir.IntType(64).as_pointer())
        builder.store(args[2], pointer, align=1)
        return context.get_dummy_value()

    return numba.types.void(out, index, value), codegen


@numba.njit(nogil=True)
def copy_bytes(source: np.ndarray, start: int, end: int, out: np.ndarray, pos: int) -> int:
    """source[start:end] to out[pos:], eight bytes a step (numba compiles a slice assignment to a byte loop);
    returns where the copy ends in out."""
    i = start
    while i + 8 <= end:
        store_u64(out, pos, unaligned_u64(source, i))
        i += 8
        pos += 8
    while i < end:
        out[pos] = source[i]
        i += 1
        pos += 1
    return pos


@numba.njit(inline="always")
def find_byte(data: np.ndarray, i: int, end: int, value: int) -> int:
    """The index of the first byte equal to value (ASCII) in data[i:end], or end."""
    while i < end:
        i = skip_to(data, i, end, value, value)
        stop = min(i + 8, end)
        while i < stop:
            if data[i] == value:
                return i
            i += 1
    return end
