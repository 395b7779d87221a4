"""Entropy coding of the latent of a model with a channel context (ELIC's slices on the checkerboard).

The latent is coded in the passes of ``networks.latent_passes`` (the anchors of every slice, then the
other positions of every slice), each with parameters computed from what the passes before it decoded,
all into one rANS stream: compressai's ``BufferedRansEncoder`` collects the symbols of every pass and
writes them at once, and ``RansDecoder.decode_stream`` reads them back pass by pass. One stream costs
one flush (a few bytes) however many passes there are, where a string per pass would cost a flush and a
length each: at 0.03 bpp a Kodak image has about 1.4 kB, and ten passes would add 3 %.

Symbols of a pass are taken channel by channel, each channel's positions in raster order (the pass's
positions only); the decoder uses the same order. The parameters are the model's exact fixed-point
ones, so the decoder rebuilds every pass's scale indexes bit for bit.
"""

from __future__ import annotations

import torch
from compressai.ans import BufferedRansEncoder, RansDecoder

from coldpress.codec.models import LoadedModel
from coldpress.codec.networks import anchor_mask, rounding_code, slice_bounds


def _pass_mask(which: str, h: int, w: int) -> torch.Tensor:
    anchor = anchor_mask(h, w)
    return anchor if which == "anchor" else ~anchor


@torch.no_grad()
def encode(loaded: LoadedModel, y: torch.Tensor, means: torch.Tensor, scales: torch.Tensor) -> bytes:
    """The rANS stream of the gain-scaled latent ``y`` (float64, CPU), given the hyperprior's parameters."""
    cdfs, lengths, offsets = loaded.rans_tables
    order = loaded.channel_order
    y_p = y[:, order]
    bounds = slice_bounds(loaded.net.cfg.slices)
    symbols_all, indexes_all = [], []

    def code(which, k, m, s):
        mask = _pass_mask(which, *m.shape[-2:])
        symbols = torch.round(y_p[:, bounds[k]:bounds[k + 1]] - m)
        symbols_all.append(symbols[..., mask].int().reshape(-1))
        indexes_all.append(loaded.scale_indexes(s)[..., mask].reshape(-1))
        return symbols + m

    loaded.sliced_passes(means, scales, code)
    # The buffered coder takes symbols in coding order: one call for every pass gives the stream that a
    # call per pass would (and converts the CDF tables once instead of once per pass).
    encoder = BufferedRansEncoder()
    encoder.encode_with_indexes(torch.cat(symbols_all).tolist(), torch.cat(indexes_all).tolist(), cdfs, lengths,
                                offsets)
    return encoder.flush()


@torch.no_grad()
def decode(loaded: LoadedModel, stream: bytes, means: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The gain-scaled latent y_hat (float64, CPU) of a stream ``encode`` wrote."""
    cdfs, lengths, offsets = loaded.rans_tables
    decoder = RansDecoder()
    decoder.set_stream(stream)

    def code(which, k, m, s):
        mask = _pass_mask(which, *m.shape[-2:])
        indexes = loaded.scale_indexes(s)[..., mask]
        values = decoder.decode_stream(indexes.reshape(-1).tolist(), cdfs, lengths, offsets)
        out = torch.zeros_like(m)
        out[..., mask] = torch.tensor(values, dtype=torch.float64).reshape(indexes.shape) + m[..., mask]
        return out

    y_hat, _, _ = loaded.sliced_passes(means, scales, code)
    return y_hat


@torch.no_grad()
def parameters(loaded: LoadedModel, y: torch.Tensor, means: torch.Tensor, scales: torch.Tensor):
    """(means, scales) of every latent position exactly as ``encode`` codes ``y`` with them."""
    _, means, scales = loaded.sliced_passes(means, scales, rounding_code(y, loaded.channel_order, loaded.net.cfg.slices))
    return means, scales
