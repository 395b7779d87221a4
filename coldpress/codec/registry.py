"""Codecs by name.

Codec modules register a factory under a name; ``get_codec(name)`` returns one shared instance per
name and options (learned codecs load their weights once). ``decode_bitstream`` reads the codec name
from a container and decodes with the codec that made it.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any, Callable

import numpy as np

from coldpress.codec import container
from coldpress.codec.base import Codec
from coldpress.errors import ModelMismatchError

_FACTORIES: dict[str, Callable[..., Codec]] = {}
_INSTANCES: dict[tuple, Codec] = {}
_LOCK = threading.Lock()
# Modules whose import registers codecs; imported lazily so that `import coldpress` stays light.
_CODEC_MODULES = ("coldpress.codec.reference", "coldpress.codec.learned")


def register(name: str) -> Callable[[Callable[..., Codec]], Callable[..., Codec]]:
    """Decorator: register a codec class or factory under ``name``."""

    def deco(factory: Callable[..., Codec]) -> Callable[..., Codec]:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise ValueError(f"codec name {name!r} is registered twice")
        _FACTORIES[name] = factory
        return factory

    return deco


def _load_codec_modules(name: str | None = None) -> None:
    """Import the codec modules, in order, until ``name`` is registered (all of them without a name):
    a jpeg or avif job never imports the learned codec's module, hence never torch (about 850 MB)."""
    for module in _CODEC_MODULES:
        if name is not None and name in _FACTORIES:
            return
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def codec_names() -> list[str]:
    """Names of every registered codec."""
    _load_codec_modules()
    return sorted(_FACTORIES)


def rebuildable(codec: Codec) -> bool:
    """Whether ``get_codec(codec.name, **codec.options())`` rebuilds ``codec`` (its class is the one
    registered under its name): how engines hand a codec to workers without pickling its model."""
    _load_codec_modules(codec.name)
    return _FACTORIES.get(codec.name) is type(codec)


def get_codec(name: str, **options: Any) -> Codec:
    """The shared instance of codec ``name`` built with ``options``."""
    _load_codec_modules(name)
    if name not in _FACTORIES:
        raise ValueError(f"unknown codec {name!r}; choose one of: {', '.join(sorted(_FACTORIES))}")
    key = (name, tuple(sorted(options.items())))
    with _LOCK:
        codec = _INSTANCES.get(key)
        if codec is None:
            codec = _FACTORIES[name](**options)
            _INSTANCES[key] = codec
    return codec


def codec_for_bitstream(data: bytes, **options: Any) -> Codec:
    """The codec that can decode ``data``, or ModelMismatchError naming the codec/model it needs.

    For codecs with several models (``Codec.known_models``), the model recorded in the bitstream is loaded
    when it is a shipped one, so archives made with an older default model still restore.
    """
    b = container.unpack(data)
    _load_codec_modules(b.codec)
    if b.codec not in _FACTORIES:
        raise ModelMismatchError(
            f"this bitstream was made by codec {b.codec!r}, which this installation does not have "
            f"(it has: {', '.join(sorted(_FACTORIES))}); install the coldpress version or plugin "
            "that provides it"
        )
    codec = get_codec(b.codec, **options)
    if b.model_id != codec.model_id and "model" not in options and b.model_id in codec.known_models():
        # Made by another shipped model (an older default, say): load that one, so old archives restore.
        codec = get_codec(b.codec, model=b.model_id, **options)
    codec.check_compatible(b)
    return codec


def decode_bitstream(data: bytes, decoder: Any = None, window: tuple[int, int, int, int] | None = None,
                     **options: Any) -> np.ndarray:
    """Decode container bytes with whichever registered codec made them.

    ``decoder``: a ``coldpress.codec.diffusion.DecoderChoice`` (or a mapping of its fields, or
    "diffusion"); None or "coarse" is the codec's own decoder. ``window`` (col, row, width, height):
    only that part of the image, exactly as in the whole decode (the codec's own decoder computes only
    what the window needs, ``Codec.decode_window``; the diffusion decoder refines the whole image)."""
    codec = codec_for_bitstream(data, **options)
    if decoder is None or decoder == "coarse":
        return codec.decode(data) if window is None else codec.decode_window(data, window)
    if window is not None:
        from coldpress.codec.base import checked_window

        b = container.unpack(data)
        col, row, w, h = checked_window(window, b.width, b.height)
        return decode_bitstream(data, decoder, **options)[row:row + h, col:col + w]
    from coldpress.codec.diffusion import DecoderChoice, refiner

    choice = DecoderChoice.of(decoder)
    b = container.unpack(data)
    return codec.decode(data, refine=refiner(choice, data, b.width, b.height))
