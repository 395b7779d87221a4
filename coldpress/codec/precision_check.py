"""How far a float32 decode is from the float64 reference, and what kind of device made it.

Models exported with a float32 synthesis (cp-extreme-s16-v3 and later) decode to the same pixels across
processes and thread counts on one kind of device, but not across kinds: oneDNN picks its convolution
kernels by instruction set and cache sizes, cuDNN by GPU, and a different summation order moves a
sample that lies near a rounding boundary by one level. The reproducibility contract allows that one
level (DEVELOPERS.md); what it does not allow is more. The float64 synthesis of the same model is the
reference: its rounding error is about 2**-40 of a level, so its pixels are the same on every device.

``checked_against_reference()`` makes every float32 decode inside it also run the float64 synthesis on
the same latent and record the largest difference in levels (at the coded scale, before any resize),
with the sha256 of the reference pixels: ``verify`` uses it when a row's pixels differ from those its
writer recorded, and the golden tests to pin the decoder on any kind of CPU.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

if TYPE_CHECKING:  # torch is imported where a device is named: a jpeg job's verify never loads it
    import torch

#: Largest difference between a float32 decode and the float64 reference that the contract allows.
CONTRACT_LEVELS = 1


@dataclass
class ReferenceCheck:
    """What the float32 decodes inside ``checked_against_reference`` measured."""

    decodes: int = 0  # float32 decodes checked (one per learned payload)
    max_levels: int = 0  # largest |float32 - float64| over every sample of every one, in levels
    reference_sha256: list[str] = field(default_factory=list)  # of each reference decode (uint8, C order)
    device_kinds: set[str] = field(default_factory=set)  # ``device_kind`` of the devices the decodes ran on

    @property
    def within_contract(self) -> bool:
        """Whether some float32 decode was checked and every one is within ``CONTRACT_LEVELS``."""
        return self.decodes > 0 and self.max_levels <= CONTRACT_LEVELS


_ACTIVE: contextvars.ContextVar[ReferenceCheck | None] = contextvars.ContextVar("coldpress_reference_check",
                                                                                default=None)


@contextlib.contextmanager
def checked_against_reference() -> Iterator[ReferenceCheck]:
    """Within this block (this thread or task), float32 decodes also run the float64 reference
    synthesis (about 7x the synthesis' time) and record their difference in the yielded check."""
    check = ReferenceCheck()
    token = _ACTIVE.set(check)
    try:
        yield check
    finally:
        _ACTIVE.reset(token)


def active() -> ReferenceCheck | None:
    """The check of the enclosing ``checked_against_reference`` block, or None."""
    return _ACTIVE.get()


def record(check: ReferenceCheck, decoded: np.ndarray, reference: np.ndarray, kind: str) -> None:
    """Count one float32 decode, made on a device of ``kind``, against its reference (uint8 arrays of one shape)."""
    levels = int(np.abs(decoded.astype(np.int16) - reference.astype(np.int16)).max()) if decoded.size else 0
    check.decodes += 1
    check.max_levels = max(check.max_levels, levels)
    check.reference_sha256.append(hashlib.sha256(np.ascontiguousarray(reference).tobytes()).hexdigest())
    check.device_kinds.add(kind)


@functools.lru_cache(maxsize=None)  # read once per device
def device_kind(device: torch.device | str = "cpu") -> str:
    """The kind of device a float32 decode ran on, as far as it decides the pixels: for a CPU its vendor,
    family and model and the instruction set torch dispatches to; for a GPU its name and compute
    capability. Decodes on two devices of one kind give identical pixels."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda:{torch.cuda.get_device_name(device)}:sm{major}{minor}"
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("vendor_id", "cpu family", "model", "model name") and key not in fields:
                fields[key] = value.strip()
            if not line.strip() and fields:
                break
    except OSError:  # not Linux: the platform module's description
        import platform

        fields["model name"] = platform.processor() or platform.machine()
    described = ":".join(fields.get(k, "?") for k in ("vendor_id", "cpu family", "model", "model name"))
    return f"cpu:{described}:{torch.backends.cpu.get_cpu_capability()}"
