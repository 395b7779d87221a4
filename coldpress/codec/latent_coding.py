"""Entropy coding of the latent of a model without a channel context: hyperprior only, or the checkerboard.

A hyperprior-only model codes the whole latent in one string with compressai's GaussianConditional at
the hyperprior's means and scale indexes. A checkerboard model codes two strings, ``varint(len(anchors))
anchors others``: the anchors at the hyperprior's parameters, then the other positions at parameters
the checkerboard context refines from the decoded anchors. Every parameter comes from the model's
fixed-point stacks (``LoadedModel``), so the decoder rebuilds the scale indexes bit for bit on every
device. Models with a channel context code their latent in ``slice_coding.py``.

``encode`` also returns what it derived (``CodedLatent``: the hyper-latent, final means and indexes, the
coded anchors), which a decode of the same payload may take instead of deriving it again once the
decoded inputs those derive from are checked equal (``decode_memo.py``); every bit is still decoded.
"""

from __future__ import annotations

import torch

from coldpress.codec.container import read_varint, varint
from coldpress.codec.decode_memo import CodedLatent
from coldpress.codec.models import LoadedModel
from coldpress.codec.networks import anchor_mask
from coldpress.errors import BitstreamError


def parameters(loaded: LoadedModel, y: torch.Tensor, means: torch.Tensor, scales: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Means and scales of every position of the gain-scaled latent ``y`` exactly as the decoder derives
    them from the hyperprior's: refined on the non-anchors from the anchors rounded around the hyper
    means when the model has a checkerboard context."""
    return _parameters(loaded, y, means, scales)[:2]


def _parameters(loaded: LoadedModel, y: torch.Tensor, means: torch.Tensor, scales: torch.Tensor):
    """``parameters`` and the anchors as coded (rounded around their means; zero elsewhere), or None."""
    if not loaded.has_context:
        return means, scales, None
    anchor = anchor_mask(*y.shape[-2:])
    # The anchors as the decoder holds them when it derives the second pass (zero elsewhere).
    anchors_hat = torch.where(anchor, torch.round(y - means) + means, torch.zeros_like(y))
    c_means, c_scales = loaded.context_parameters(anchors_hat, means, scales)
    return torch.where(anchor, means, c_means), torch.where(anchor, scales, c_scales), anchors_hat


@torch.no_grad()
def encode(loaded: LoadedModel, y: torch.Tensor, z_hat: torch.Tensor) -> tuple[bytes, CodedLatent]:
    """(the strings of the gain-scaled latent ``y`` (float64, CPU), what the coding derived), given the
    decoded hyper-latent ``z_hat``."""
    means, scales, anchors_hat = _parameters(loaded, y, *loaded.hyper_parameters(z_hat))
    indexes = loaded.scale_indexes(scales)
    gc = loaded.net.gaussian_conditional
    if not loaded.has_context:
        with loaded.coder_lock:
            stream = gc.compress(y, indexes, means=means)[0]
        return stream, CodedLatent(z_hat.cpu(), means, indexes, None)
    anchor = anchor_mask(*y.shape[-2:])
    with loaded.coder_lock:
        anchors, others = (gc.compress(y[..., m], indexes[..., m], means=means[..., m])[0] for m in (anchor, ~anchor))
    return varint(len(anchors)) + anchors + others, CodedLatent(z_hat.cpu(), means, indexes, anchors_hat[..., anchor])


@torch.no_grad()
def decode(loaded: LoadedModel, stream: bytes, z_hat: torch.Tensor, coded: CodedLatent | None = None
           ) -> torch.Tensor:
    """The gain-scaled latent y_hat (float64, CPU) of strings ``encode`` wrote. ``coded``: what the
    coding of these strings derived, if known; its parameters are used only where the decoded values
    they derive from equal its own (the hyper-latent, then the anchors)."""
    if coded is not None and not (coded.z_hat.shape == z_hat.shape and torch.equal(coded.z_hat, z_hat.cpu())):
        coded = None
    if coded is None:
        means, scales = loaded.hyper_parameters(z_hat)
        indexes = loaded.scale_indexes(scales)
    else:
        means, indexes = coded.means, coded.indexes
    if not loaded.has_context:
        return loaded.range_decode(stream, indexes, means)
    n_a, pos = read_varint(stream, 0, "learned payload")
    if pos + n_a > len(stream):
        raise BitstreamError("learned payload is truncated (anchor latents longer than the payload)")
    anchor = anchor_mask(*means.shape[-2:])
    other = ~anchor
    y_hat = torch.zeros_like(means)
    y_hat[..., anchor] = loaded.range_decode(stream[pos : pos + n_a], indexes[..., anchor], means[..., anchor])
    if coded is None or not torch.equal(y_hat[..., anchor], coded.anchors):
        if coded is not None:  # the anchors differ from those coded: the context's own parameters
            means, scales = loaded.hyper_parameters(z_hat)
        means, scales = loaded.context_parameters(y_hat, means, scales)
        indexes = loaded.scale_indexes(scales)
    y_hat[..., other] = loaded.range_decode(stream[pos + n_a :], indexes[..., other], means[..., other])
    return y_hat
