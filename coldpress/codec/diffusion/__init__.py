"""The diffusion decoder (issue 10): relay residual diffusion that refines the coarse reconstruction of any
bitstream in 1-5 steps, chosen at restore time (``DecoderChoice``), with a detail knob.

Modules: ``denoiser`` (the diffusers UNet on folded pixels, conditioned on the coarse image and the rate),
``relay`` (the relay-residual forward process and the sampler on a diffusers DDPMScheduler), ``weights``
(decoder weights by id and sha256), ``decoder`` (tiled, seeded refinement of a coarse decode), ``backbone``
(an optional Stable Diffusion UNet and VAE from a local diffusers folder with a ControlNet branch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

DECODERS = ("coarse", "diffusion")


@dataclass(frozen=True)
class DecoderChoice:
    """Which decoder restores a bitstream: the coarse one (the default, what ``verify`` checks) or the
    diffusion decoder with its weights (``model``: id or file; None = the shipped default), steps and detail.
    With ``backbone`` (a local diffusers folder of a Stable Diffusion checkpoint), ``model`` is the control
    branch trained on it (``coldpress train --stage diffusion --decoder-backbone``)."""

    decoder: str = "coarse"
    steps: int | None = None
    detail: float | None = None
    model: str | None = None
    device: str | None = None
    backbone: str | None = None

    def __post_init__(self) -> None:
        from coldpress.errors import ColdpressError

        if self.decoder not in DECODERS:
            raise ColdpressError(f"unknown decoder {self.decoder!r}; choose one of: {', '.join(DECODERS)}")
        if self.decoder == "coarse" and (self.steps is not None or self.detail is not None or self.model
                                         or self.backbone):
            raise ColdpressError("--steps, --detail, --decoder-model and --decoder-backbone apply to the diffusion "
                                 "decoder; add --decoder diffusion")
        if self.backbone and not self.model:
            raise ColdpressError("--decoder-backbone needs the control branch trained on it: add --decoder-model "
                                 "PATH (the .safetensors that `coldpress train --stage diffusion --decoder-backbone` "
                                 "exported)")
        if self.decoder == "diffusion":
            from coldpress.codec.diffusion.decoder import check_knobs

            check_knobs(self.steps, self.detail, 1)

    @property
    def is_coarse(self) -> bool:
        return self.decoder == "coarse"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def of(cls, value: "DecoderChoice | Mapping[str, Any] | str | None") -> "DecoderChoice":
        """A choice from itself, a mapping of its fields (what engines ship to workers), a name, or None."""
        if value is None:
            return cls()
        if isinstance(value, DecoderChoice):
            return value
        if isinstance(value, str):
            return cls(decoder=value)
        return cls(**dict(value))


def refiner(choice: DecoderChoice, bitstream: bytes, width: int, height: int):
    """The ``refine`` callable of ``Codec.decode`` for ``choice`` (None for the coarse decoder)."""
    if choice.is_coarse:
        return None
    from coldpress.codec.diffusion.decoder import bitstream_bpp, seed_of

    decoder = _decoder(choice)
    bpp, seed = bitstream_bpp(bitstream, width, height), seed_of(bitstream)
    return lambda rgb: decoder.refine(rgb, bpp, seed, choice.steps, choice.detail)


def provenance(choice: DecoderChoice) -> dict[str, Any]:
    """What a restored file records about the decoder that made it."""
    if choice.is_coarse:
        return {"decoder": "coarse"}
    return _decoder(choice).describe(choice.steps, choice.detail)


def _decoder(choice: DecoderChoice):
    """The loaded decoder of a diffusion choice: the pixel decoder, or a control branch on a backbone."""
    if choice.backbone:
        from coldpress.codec.diffusion.backbone import get_backbone_decoder

        return get_backbone_decoder(choice.model, choice.backbone, choice.device)
    from coldpress.codec.diffusion.decoder import get_decoder

    return get_decoder(choice.model, choice.device)


__all__ = ["DECODERS", "DecoderChoice", "provenance", "refiner"]
