"""Helpers shared by the Triton kernels: input checks, block sizes, interpreter and autotune handling.

Nothing here launches a kernel. Triton is imported lazily by the kernel modules, so importing this file
works without Triton installed.
"""

from __future__ import annotations

import functools
import os

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# The FOLD argument of the kernels that start from segment states (_tl_helpers.load_segment_state): the
# state buffer was scanned (FOLD_NONE), or holds per-segment sums the kernel adds up itself, those before its
# segment (FOLD_PREFIX), after it (FOLD_SUFFIX) or from it on (FOLD_SUFFIX_INCLUSIVE).
FOLD_NONE, FOLD_PREFIX, FOLD_SUFFIX, FOLD_SUFFIX_INCLUSIVE = 0, 1, 2, 3


def is_interpreter() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``, set by tests/conftest.py)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotune_configs(*configs):
    """The interpreter cannot time candidates (two configs fail with "0 active drivers"): give it one."""
    return list(configs[:1]) if is_interpreter() else list(configs)


@functools.lru_cache(maxsize=256)
def block(n: int, minimum: int = 16) -> int:
    """Power-of-two tile size covering ``n`` (tl.dot needs every dim >= 16 on the GPU). Cached: the launchers
    call it for every dim of every launch, and the uncached form (an import and triton.next_power_of_2)
    took 6 us a call on the CPU machine, about 100 us per hybrid forward+backward."""
    n = int(n)
    return max(minimum, 1 << (n - 1).bit_length() if n > 1 else 1)


@functools.lru_cache(maxsize=16)
def multiprocessors(device: torch.device, interpreter_sms: int = 4) -> int:
    """The device's SM count (cached: torch.cuda.get_device_properties on every launch is host time); on the
    CPU interpreter, which has none, ``interpreter_sms`` (any small count exercises the tiling)."""
    if device.type != "cuda":
        return interpreter_sms
    return torch.cuda.get_device_properties(device).multi_processor_count


@functools.lru_cache(maxsize=256)  # host time: once per shape; launchers call it on every launch
def tile_runs(T: int, bt: int, rows: int, device: torch.device, programs_per_sm: int,
              interpreter_sms: int = 4) -> tuple[tuple[int, int], int]:  # fmt: skip
    """Launch plan for kernels whose program walks TPP consecutive tiles of ``bt`` tokens of one row (a (batch,
    head) pair): about ``programs_per_sm`` programs per multiprocessor over ``rows`` rows, at least one tile
    each. Returns (grid, TPP) with grid = (programs per row, rows)."""
    n_tiles = -(-T // bt)
    per_row = max(1, min(n_tiles, -(-programs_per_sm * multiprocessors(device, interpreter_sms) // rows)))
    tpp = -(-n_tiles // per_row)
    return (-(-n_tiles // tpp), rows), tpp


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision for dots with fp32 operands. On the GPU "tf32x3" (each operand split into a
    TF32 high and low part, three tensor-core dots: close to fp32, ~1e-6 relative): plain "tf32" rounds to
    10 mantissa bits (~5e-4 relative), which the fp32 model tests (1e-5) measured as failures on an H100,
    and exact "ieee" dots compile to scalar FMA loops that at head dim 128 compiled for minutes there.
    Exact fp32 in the CPU interpreter. fp16/bf16 inputs take half-precision operands for most dots (the
    kernels' LOWP); their few fp32-operand dots (dn . v, see linear_attn.py) use one TF32 dot, which the
    bf16 tolerances (5e-3 outputs, 1e-2 gradients) were measured to allow."""
    if dtype == torch.float32:
        return "ieee" if is_interpreter() else "tf32x3"
    return "tf32"


# signatures of calls whose argument checks passed (check_once): below 8k tokens the host sets the time of a
# forward+backward, and the checks of a hybrid call took ~60 us of it on the CPU machine (under cProfile)
_PASSED_CHECKS: set = set()


def check_once(check, op: str, *args) -> None:
    """Run ``check()`` (raises on bad input) unless a call of ``op`` with the same signature of ``args`` passed
    it. The signature is what the checks depend on: (type, shape, dtype, device) of each tensor, (type, value)
    of anything else, and whether the interpreter runs (which devices pass); exact types, so True is not
    taken for 1. Arguments that cannot be keyed (an unhashable one, a list say) are checked every time."""
    try:
        key = (op, is_interpreter(), *[(type(a), a.shape, a.dtype, a.device) if isinstance(a, torch.Tensor)
                                       else (type(a), a) for a in args])  # fmt: skip
        if key in _PASSED_CHECKS:  # hashes the key: TypeError when it cannot be
            return
    except TypeError:
        check()
        return
    check()
    if len(_PASSED_CHECKS) > 4096:  # e.g. many distinct sequence lengths: start over
        _PASSED_CHECKS.clear()
    _PASSED_CHECKS.add(key)


def check_device(name: str, x: torch.Tensor) -> None:
    """Kernels run on CUDA tensors, or on CPU tensors under the Triton interpreter."""
    if not (x.is_cuda or (x.device.type == "cpu" and is_interpreter())):
        raise ValueError(
            f"{name} is on {x.device}; the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for CPU "
            "tensors, slow, for tests). Use the PyTorch forms in lolcats_lab.attention on other devices"
        )


def check_tensor(name: str, x: torch.Tensor, ndim: int, shape_doc: str) -> None:
    """x: a floating tensor of ``ndim`` dims in a supported dtype, on a kernel-capable device."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape_doc}, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have shape {shape_doc} ({ndim} dims), got {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}; cast it first")
    check_device(name, x)


def check_same_dtype_device(**tensors: torch.Tensor) -> None:
    items = list(tensors.items())
    name0, x0 = items[0]
    for name, x in items[1:]:
        if x.dtype != x0.dtype:
            raise ValueError(f"{name} has dtype {x.dtype} but {name0} has {x0.dtype}; cast them to one dtype")
        if x.device != x0.device:
            raise ValueError(f"{name} is on {x.device} but {name0} is on {x0.device}; move them to one device")


def check_projection(name: str, w: torch.Tensor, x_name: str, x: torch.Tensor) -> None:
    """A per-head Hedgehog projection w [H, K, f] for inputs x [B, H, T, K]: shape and device."""
    check_tensor(name, w, 3, "[H, K, f]")
    H, K = x.shape[1], x.shape[3]
    if w.shape[:2] != (H, K):
        raise ValueError(f"{name} must have shape [H, K, f] with H={H}, K={K} (from {x_name}), got {tuple(w.shape)}")
    if w.device != x.device:
        raise ValueError(f"{name} is on {w.device} but {x_name} is on {x.device}; move them to one device")


def check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 16:
        raise ValueError(f"chunk_size must be an int >= 16 (a power of two; tl.dot needs 16), got {chunk_size!r}")
    if chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two (Triton tile size), got {chunk_size}")


def check_segment_chunks(segment_chunks) -> None:
    """segment_chunks: chunks per sequence segment (segments.py), a positive int, or None for automatic."""
    if segment_chunks is not None and (
        isinstance(segment_chunks, bool) or not isinstance(segment_chunks, int) or segment_chunks < 1
    ):
        raise ValueError(f"segment_chunks must be a positive int or None (automatic), got {segment_chunks!r}")
