"""Per-device random streams, seeded for a whole round at once.

A simulated device draws its randomness (whether it drops out, the order it visits its
rows) from ``np.random.default_rng(SeedSequence([seed, purpose, round, device]))``, so a
device's draws do not depend on which other devices share its round or on the engine.
Building that generator costs about 11 us, nearly all of it SeedSequence's Python-level
entropy handling; with 1,000 devices a round and a few microseconds of arithmetic per
device, seeding was half of a round. This module computes the same SeedSequence
(O'Neill's seed_seq_fe hash, as numpy implements it) for every device of a round in a
few vectorised uint32 passes, then the PCG64 state numpy's seeding derives from it, so
each device's generator is the one ``default_rng`` would have made, bit for bit
(`tests/fleet/test_streams.py` compares them over thousands of entropies).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# numpy/random/bit_generator.pyx (SeedSequence) constants.
_POOL_SIZE = 4
_INIT_A = 0x43B0D7E5
_MULT_A = 0x931E8875
_INIT_B = 0x8B51F9DD
_MULT_B = 0x58F38DED
_MIX_MULT_L = np.uint32(0xCA01F9DD)
_MIX_MULT_R = np.uint32(0x4973F715)
_XSHIFT = np.uint32(16)
_MASK32 = 0xFFFFFFFF
# numpy/random/src/pcg64 (PCG64: 128-bit LCG, XSL-RR output).
_PCG_MULT = 0x2360ED051FC65DA44385DF649FCCF645
_MASK64 = (1 << 64) - 1
_MASK128 = (1 << 128) - 1


def _words(value: int) -> list[int]:
    """An int as SeedSequence reads it: 32-bit words, least significant first."""
    if value < 0:
        raise ValueError(f"seed entropy must be non-negative, got {value}")
    words = [value & _MASK32]
    value >>= 32
    while value:
        words.append(value & _MASK32)
        value >>= 32
    return words


def _entropy_words(prefix: Sequence[int], last: np.ndarray) -> np.ndarray:
    """``(n, words)`` uint32: the entropy ``[*prefix, last[i]]`` of each row."""
    last = np.asarray(last, np.int64)
    if last.size and (last.min() < 0 or last.max() > _MASK32):
        raise ValueError("the per-device entropy must lie in 0..2**32-1")
    fixed = [w for value in prefix for w in _words(int(value))]
    words = np.empty((len(last), len(fixed) + 1), np.uint32)
    words[:, :len(fixed)] = np.array(fixed, np.uint32)
    words[:, -1] = last.astype(np.uint32)
    return words


def _pools(words: np.ndarray) -> list[np.ndarray]:
    """SeedSequence.mix_entropy for each row of ``words``: four uint32 columns."""
    hash_const = _INIT_A

    def hashmix(value: np.ndarray) -> np.ndarray:
        nonlocal hash_const
        value = value ^ np.uint32(hash_const)
        hash_const = (hash_const * _MULT_A) & _MASK32
        value = value * np.uint32(hash_const)
        return value ^ (value >> _XSHIFT)

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        result = _MIX_MULT_L * x - _MIX_MULT_R * y
        return result ^ (result >> _XSHIFT)

    rows, count = words.shape
    zero = np.zeros(rows, np.uint32)
    pool = [hashmix(words[:, i] if i < count else zero) for i in range(_POOL_SIZE)]
    for src in range(_POOL_SIZE):
        for dst in range(_POOL_SIZE):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for src in range(_POOL_SIZE, count):
        for dst in range(_POOL_SIZE):
            pool[dst] = mix(pool[dst], hashmix(words[:, src]))
    return pool


def _state_words(pool: list[np.ndarray], n_words32: int) -> np.ndarray:
    """SeedSequence.generate_state as ``(rows, n_words32)`` uint32."""
    hash_const = _INIT_B
    out = np.empty((len(pool[0]), n_words32), np.uint32)
    for i in range(n_words32):
        value = pool[i % _POOL_SIZE] ^ np.uint32(hash_const)
        hash_const = (hash_const * _MULT_B) & _MASK32
        value = value * np.uint32(hash_const)
        out[:, i] = value ^ (value >> _XSHIFT)
    return out


def pcg64_states(prefix: Sequence[int], last: np.ndarray | Sequence[int]
                 ) -> list[tuple[int, int]]:
    """``(state, inc)`` of ``default_rng(SeedSequence([*prefix, v])).bit_generator`` for
    each ``v`` of ``last``, as numpy's PCG64 holds them right after seeding."""
    with np.errstate(over="ignore"):
        words = _state_words(_pools(_entropy_words(prefix, np.asarray(last))), 8)
    # generate_state(4, uint64) reads the uint32 words little-endian, in pairs.
    u64 = words.astype("<u4").view("<u8").astype(np.uint64).tolist()
    states = []
    for s0, s1, i0, i1 in u64:
        inc = ((((i0 << 64) | i1) << 1) | 1) & _MASK128
        state = (inc + ((s0 << 64) | s1)) & _MASK128  # state 0 stepped once, plus seed
        states.append(((state * _PCG_MULT + inc) & _MASK128, inc))
    return states


def first_uniforms(prefix: Sequence[int], last: np.ndarray | Sequence[int]) -> np.ndarray:
    """The first ``Generator.random()`` of each of those generators (float64)."""
    out = np.empty(len(last))
    for i, (state, inc) in enumerate(pcg64_states(prefix, last)):
        state = (state * _PCG_MULT + inc) & _MASK128
        folded = ((state >> 64) ^ state) & _MASK64
        rotation = state >> 122
        value = ((folded >> rotation) | (folded << (-rotation & 63))) & _MASK64
        out[i] = (value >> 11) * (1.0 / 9007199254740992.0)
    return out


class StreamSource:
    """Generators over one reusable PCG64, set to a precomputed state on demand."""

    def __init__(self) -> None:
        self._bits = np.random.PCG64(0)
        self._generator = np.random.Generator(self._bits)

    def generator(self, state: tuple[int, int]) -> np.random.Generator:
        """The generator at ``state`` (one of `pcg64_states`). It is shared: use it
        before asking for the next one."""
        self._bits.state = {"bit_generator": "PCG64",
                            "state": {"state": state[0], "inc": state[1]},
                            "has_uint32": 0, "uinteger": 0}
        return self._generator

