"""The model registry: shipped learned-codec weights by id, verified by sha256, loaded pickle-free.

``coldpress/codec/weights/MODELS.json`` lists the shipped models (id -> file, sha256) and the default.
A weights file is a safetensors file whose metadata holds the architecture config and the model id;
its tensors are the float networks (encoder, decoder, hyper-analysis, gains), the entropy models'
tables and the fixed-point networks that compute entropy parameters (the hyper-synthesis and, when
the model has one, the checkerboard context). Loading checks the sha256 and the exact key set: a
missing or unexpected tensor is an error, never silently dropped.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from compressai.ans import RansDecoder

from coldpress.codec.fixedpoint import FixedPointStack
from coldpress.codec.rate_estimate import RateEstimator
from coldpress.codec.networks import (
    ExtremeCodecNet,
    NetConfig,
    anchor_mask,
    latent_passes,
    refined_non_anchors,
    scale_table,
    synthesis_receptive_radius,
)
from coldpress.errors import ColdpressError

WEIGHTS_DIR = Path(__file__).parent / "weights"
REGISTRY_FILE = WEIGHTS_DIR / "MODELS.json"
FIXED_PREFIX = "hs_fixed."
CONTEXT_PREFIX = "ctx_fixed."  # the context convolution of a checkerboard model
PARAMS_PREFIX = "ep_fixed."  # its parameter network
CHANNEL_PREFIX = "ch_fixed."  # the channel context's networks: ch_fixed.anchor.<k>. and ch_fixed.other.<k>.
ORDER_KEY = "ch_order"  # the channel context's coding order of the latent's channels
_FIXED_PREFIXES = (FIXED_PREFIX, CONTEXT_PREFIX, PARAMS_PREFIX, CHANNEL_PREFIX)
_CACHE: dict[tuple[str, str], "LoadedModel"] = {}
#: Folders (separated by os.pathsep) holding exported models that are not shipped, one weights file
#: ``<model id>.safetensors`` each: how bitstreams of a model given as a file find it at restore time.
MODELS_PATH_ENV = "COLDPRESS_MODELS"
#: Metadata key (weights file) and registry key holding a model's decode tiling.
TILING_KEY = "decode_tiling"
#: Metadata/registry key of a model's decode precision: "float64" (v1, v2 and any model that records
#: none) or "float32" (new exports: 7x faster on CPU; identical pixels across processes and threads).
PRECISION_KEY = "decode_precision"
DECODE_PRECISIONS = ("float64", "float32")
#: Decoder tile size for new exports, in pixels.
DEFAULT_DECODE_TILE = 1024
_LOCK = threading.Lock()


def registry() -> dict:
    if not REGISTRY_FILE.exists():
        return {"default": None, "models": {}}
    return json.loads(REGISTRY_FILE.read_text())


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class DecodeTiling:
    """How the synthesis of a model is run on images larger than ``tile`` pixels a side: tiles of
    ``tile`` pixels, each computed with ``halo`` pixels of context on every side.

    Part of a model's definition, like its weights: when ``halo`` is narrower than the synthesis'
    receptive field (the shipped v1 and v2 models: 64 px against about 107), pixels near tile seams
    depend on it, so it is recorded with the model (registry entry or weights metadata) and never
    taken from a tuning option. New exports get a halo that covers the receptive field, so their
    decode is the same as an untiled one.
    """

    tile: int
    halo: int

    @classmethod
    def from_record(cls, record: object) -> "DecodeTiling":
        if isinstance(record, str):
            record = json.loads(record)
        if not isinstance(record, dict):
            raise ColdpressError(f"decode tiling {record!r} is not a {{'tile': N, 'halo': N}} record; re-export the model")
        tile, halo = record.get("tile"), record.get("halo")
        if not (isinstance(tile, int) and isinstance(halo, int) and tile > 0 and halo >= 0):
            raise ColdpressError(f"decode tiling {record!r} is invalid (tile > 0 and halo >= 0 pixels); re-export the model")
        return cls(tile, halo)

    def to_record(self) -> dict:
        return {"tile": self.tile, "halo": self.halo}


#: The tiling every model exported before tilings were recorded was decoded with (v1, v2).
LEGACY_DECODE_TILING = DecodeTiling(1024, 64)


def decode_tiling_for(synthesis: nn.Module, cfg: NetConfig, tile: int = DEFAULT_DECODE_TILE) -> DecodeTiling:
    """The tiling of a new export: ``tile`` pixels with a halo covering the synthesis' receptive field,
    rounded up to whole latent positions (tiles are cut on the latent grid)."""
    radius = synthesis_receptive_radius(synthesis, cfg.latent_channels)
    s = cfg.latent_stride
    return DecodeTiling(tile, s * math.ceil(radius / s))


@dataclass
class LoadedModel:
    model_id: str
    sha256: str
    path: Path
    net: ExtremeCodecNet  # float32 parts used for encoding (h_s replaced by the fixed-point module)
    hs_fixed: FixedPointStack
    synthesis64: nn.Module  # float64 copy of the decoder
    metadata: dict
    ctx_fixed: FixedPointStack | None = None  # checkerboard context (None: hyperprior only)
    ep_fixed: FixedPointStack | None = None
    decode_tiling: DecodeTiling = LEGACY_DECODE_TILING
    decode_precision: str = "float64"
    #: The channel context (models with channel slices): fixed-point networks by stack name
    #: ("anchor.<k>", "other.<k>") and the coding order of the channels; None otherwise.
    channel_fixed: dict[str, FixedPointStack] | None = None
    channel_order: torch.Tensor | None = None
    #: Guards the entropy coders of ``net`` (compressai's are not re-entrant), shared by every codec
    #: instance of this model.
    coder_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def has_context(self) -> bool:
        return self.ctx_fixed is not None

    @torch.no_grad()
    def hyper_parameters(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(means, scales) of the latent from the hyperprior: float64 on CPU, bit-identical everywhere."""
        means, scales = self.hs_fixed(z_hat.to(self.hs_fixed.w0.device)).chunk(2, dim=1)
        return means.cpu(), scales.cpu()

    def scale_indexes(self, scales: torch.Tensor) -> torch.Tensor:
        """Indexes (int32) into the Gaussian conditional's scale table; exact comparisons in float64."""
        table = self.net.gaussian_conditional.scale_table.double().cpu()
        scales = scales.double().clamp_min(float(table[0]))
        return torch.searchsorted(table[:-1].contiguous(), scales.contiguous(), right=False).to(torch.int32)

    @torch.no_grad()
    def context_parameters(self, anchors_hat: torch.Tensor, means: torch.Tensor, scales: torch.Tensor):
        """(means, scales) of the non-anchor latents given the decoded anchors (float64, on CPU); on
        the anchors, where nothing reads them, the hyperprior's ``means`` and ``scales`` unchanged.

        ``anchors_hat``: the decoded latent on the anchors (anything elsewhere is never read: the
        context convolution reads the anchors only, as one half-resolution convolution of their phases,
        ``fixedpoint.checkerboard_conv``, and the parameter network, 1x1, runs on the non-anchors only:
        the values of the full computation there, in about a third of its time). Every step is exact fixed point or a single float64 addition, so
        the result is bit-identical on every device.
        """
        dev = self.ctx_fixed.w0.device
        rows, cols = (~anchor_mask(*anchors_hat.shape[-2:])).nonzero(as_tuple=True)
        ctx = self.ctx_fixed(anchors_hat.double().to(dev), at=(rows.to(dev), cols.to(dev)))  # (n, c, 1, positions)
        return refined_non_anchors(means, scales, rows, cols, ctx, self.ep_fixed)

    @functools.cached_property
    def back_stage(self) -> tuple[int, int]:
        """(upsampling factor, halo in its input pixels that covers its receptive field) of the synthesis'
        back stage (``Synthesis.stages``), measured once with a float64 gradient probe (a fraction of a
        second; the same for every copy of the synthesis)."""
        _, back = self.net.g_s.stages()
        with torch.enable_grad():  # decodes run under no_grad
            radius = synthesis_receptive_radius(back, back[0].conv.in_channels)
        factor = 2 ** (len(back) - 1)
        return factor, math.ceil(radius / factor)

    @functools.cached_property
    def rate_estimator(self):
        """The float32 size estimate that steers rate control (``rate_estimate.py``; None for models with
        channel slices)."""
        return RateEstimator.for_model(self)

    @functools.cached_property
    def synthesis32(self) -> nn.Module:
        """The float32 synthesis that float32 models decode with: a channels-last copy (oneDNN's faster
        layout on CPU, about 25 % on a Kodak-size decode); part of what such a model's decode is."""
        return copy.deepcopy(self.net.g_s).to(memory_format=torch.channels_last).eval()

    @functools.cached_property
    def analysis_channels_last(self) -> nn.Module:
        """The encoder's analysis (float32) as a channels-last copy: oneDNN's faster layout on CPU (a
        1152 x 1152 tile: 0.76 -> 0.47 s on 2 Zen 3 cores); the latent it computes differs from the
        contiguous layout's by float rounding only, and encodes never need the same bytes as another
        layout's (decodes need the same pixels, and get them)."""
        return copy.deepcopy(self.net.g_a).to(memory_format=torch.channels_last).eval()

    @functools.cached_property
    def rans_tables(self) -> tuple[list, list, list]:
        """The Gaussian conditional's CDF tables (CDFs, lengths, offsets) as compressai's rANS coder takes them."""
        gc = self.net.gaussian_conditional
        return (gc._quantized_cdf.tolist(), gc._cdf_length.reshape(-1).int().tolist(),
                gc._offset.reshape(-1).int().tolist())

    def range_decode(self, string: bytes, indexes: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        """The latent values (float64) that the Gaussian conditional range-coded in ``string`` with these
        scale indexes about these means: its ``decompress`` of one string, on a coder of its own (no lock:
        nothing shared), with the decoded symbols converted through numpy (a Python list straight into
        ``torch.tensor`` costs three times as much: 0.2 s at 4 megapixels)."""
        cdfs, lengths, offsets = self.rans_tables
        values = RansDecoder().decode_with_indexes(string, indexes.reshape(-1).tolist(), cdfs, lengths, offsets)
        symbols = torch.from_numpy(np.asarray(values, dtype=np.int32)).reshape(indexes.shape)
        return symbols.to(torch.float64) + means

    @property
    def has_slices(self) -> bool:
        return self.channel_fixed is not None

    @torch.no_grad()
    def channel_parameters(self, which: str, k: int, earlier: torch.Tensor, means: torch.Tensor,
                           scales: torch.Tensor):
        """(means, scales) of slice k in pass ``which`` ("anchor" or "other") corrected from the earlier
        slices' y_hat (float64, on CPU; exact fixed point plus one float64 addition, as the others)."""
        stack = self.channel_fixed[f"{which}.{k}"]
        dev = stack.w0.device
        d_means, d_scales = stack(torch.cat([earlier, means, scales], dim=1).to(dev)).chunk(2, dim=1)
        return means + d_means.cpu(), scales + d_scales.cpu()

    def sliced_passes(self, means: torch.Tensor, scales: torch.Tensor, code):
        """``networks.latent_passes`` with this model's exact networks (see there for ``code``)."""
        return latent_passes(means, scales, self.net.cfg.slices, self.channel_order, self.context_parameters,
                             self.channel_parameters, code)

    def card_summary(self) -> dict:
        summary = {"model_sha256": self.sha256, "latent_stride": self.net.cfg.latent_stride,
                   "context": self.net.cfg.context}
        if self.has_slices:
            summary["channel_slices"] = list(self.net.cfg.slices)
        return summary


def model_files() -> dict[str, Path]:
    """Weights files in the folders of ``$COLDPRESS_MODELS``, by model id (the file's stem; the first
    folder that has one wins)."""
    found: dict[str, Path] = {}
    for folder in filter(None, os.environ.get(MODELS_PATH_ENV, "").split(os.pathsep)):
        for path in sorted(Path(folder).glob("*.safetensors")):
            found.setdefault(path.stem, path)
    return found


def _resolve(model: str | None) -> tuple[str, Path, str | None, dict]:
    """(model id, weights path, expected sha256 or None, registry entry) for a registry id or a file path."""
    reg = registry()
    if model is None:
        model = reg.get("default")
        if not model:
            raise ColdpressError(
                "no learned model is bundled with this coldpress installation; train one with "
                "`coldpress train` and export it, or pass --codec avif-half"
            )
    if model in reg["models"]:
        entry = reg["models"][model]
        return model, WEIGHTS_DIR / entry["file"], entry["sha256"], entry
    path = Path(model)
    if path.suffix == ".safetensors" and path.exists():
        return "", path, None, {}
    if model in model_files():
        return "", model_files()[model], None, {}
    raise ColdpressError(
        f"unknown learned model {model!r}; shipped models: {', '.join(reg['models']) or 'none'}; "
        f"pass the path of an exported .safetensors file, or name a folder holding {model}.safetensors "
        f"in ${MODELS_PATH_ENV} (or --models DIR)"
    )


def load_weights(path: Path, expected_sha256: str | None = None) -> tuple[dict[str, torch.Tensor], dict, str]:
    """Tensors, metadata and sha256 of a weights file (safetensors: no pickle)."""
    from safetensors import safe_open

    if not path.exists():
        raise ColdpressError(f"weights file {path} is missing; reinstall coldpress or re-export the model")
    digest = file_sha256(path)
    if expected_sha256 and digest != expected_sha256:
        raise ColdpressError(
            f"weights file {path} has sha256 {digest}, the registry expects {expected_sha256}: the file is "
            "corrupted or was replaced; reinstall coldpress"
        )
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, meta, digest


def _fixed_like(float_module: nn.Module) -> FixedPointStack:
    layout = FixedPointStack.layout_of(float_module)
    return FixedPointStack(layout, layout.count("conv"))


def build(tensors: dict[str, torch.Tensor], meta: dict, device: torch.device):
    """(net, fixed-point stacks by prefix, float64 decoder) from exported tensors; key sets must match exactly."""
    cfg = NetConfig.from_dict(json.loads(meta["config"]))
    net = ExtremeCodecNet(cfg)
    fixed = {FIXED_PREFIX: _fixed_like(net.h_s)}
    net.h_s = nn.Identity()  # replaced by the fixed-point module
    if cfg.context == "checkerboard":
        fixed[CONTEXT_PREFIX] = _fixed_like(net.context.context)
        fixed[PARAMS_PREFIX] = _fixed_like(net.context.params)
        net.context = nn.Identity()
    if cfg.slices:
        for which in ("anchor", "other"):
            for k, module in enumerate(getattr(net.channel_context, which), start=1):
                fixed[f"{CHANNEL_PREFIX}{which}.{k}."] = _fixed_like(module)
        net.channel_context = nn.Identity()
    net_sd = {k: v for k, v in tensors.items() if not k.startswith(_FIXED_PREFIXES) and k != ORDER_KEY}
    expected = set(net.state_dict()) | ({ORDER_KEY} if cfg.slices else set())
    for prefix, module in fixed.items():
        expected |= {prefix + k for k in module.state_dict()}
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ColdpressError(
            f"weights do not match the architecture (missing {missing[:5]}, unexpected {extra[:5]}); "
            "the file was exported by another coldpress version: use the matching version or re-export"
        )
    net_sd = {k: (v.float() if v.is_floating_point() and net.state_dict()[k].is_floating_point() else v) for k, v in net_sd.items()}
    net.load_state_dict(net_sd, strict=True)
    for prefix, module in fixed.items():
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
        module.to(device)
    synthesis64 = copy.deepcopy(net.g_s).double()
    net.eval()
    synthesis64.eval()
    return net.to(device), fixed, synthesis64.to(device)


def _channel_order(tensors: dict[str, torch.Tensor], cfg: NetConfig) -> torch.Tensor | None:
    """The channel context's coding order (None without one); a damaged order is refused."""
    if not cfg.slices:
        return None
    order = tensors[ORDER_KEY].long()
    if sorted(order.tolist()) != list(range(cfg.latent_channels)):
        raise ColdpressError("the weights' channel order is not a permutation of the latent's channels: the file "
                             "is damaged; reinstall coldpress or re-export the model")
    return order


def _recorded_tiling(entry: dict, meta: dict) -> DecodeTiling:
    """The decode tiling a model was published with: its registry entry's, else its weights', else the
    legacy one (what every model exported before tilings were recorded used)."""
    record = entry.get(TILING_KEY) or meta.get(TILING_KEY)
    return DecodeTiling.from_record(record) if record else LEGACY_DECODE_TILING


def _recorded_precision(entry: dict, meta: dict) -> str:
    """The synthesis precision a model was published with (float64 when it records none)."""
    precision = entry.get(PRECISION_KEY) or meta.get(PRECISION_KEY) or "float64"
    if precision not in DECODE_PRECISIONS:
        raise ColdpressError(f"decode precision {precision!r} is not one of {', '.join(DECODE_PRECISIONS)}; "
                             "the model was exported by a newer coldpress: upgrade coldpress")
    return precision


def load_model(model: str | None = None, device: torch.device | str = "cpu") -> LoadedModel:
    """Load (once per process and device) a shipped model by id, the default, or a weights file."""
    model_id, path, expected, entry = _resolve(model)
    device = torch.device(device)
    key = (str(path.resolve()), str(device))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        tensors, meta, digest = load_weights(path, expected)
        net, fixed, synthesis64 = build(tensors, meta, device)
        loaded = LoadedModel(
            model_id=model_id or meta.get("model_id", path.stem), sha256=digest, path=path, net=net,
            hs_fixed=fixed[FIXED_PREFIX], synthesis64=synthesis64, metadata=meta,
            ctx_fixed=fixed.get(CONTEXT_PREFIX), ep_fixed=fixed.get(PARAMS_PREFIX),
            channel_fixed={k[len(CHANNEL_PREFIX):-1]: v for k, v in fixed.items() if k.startswith(CHANNEL_PREFIX)}
            or None, channel_order=_channel_order(tensors, net.cfg),
            decode_tiling=_recorded_tiling(entry, meta), decode_precision=_recorded_precision(entry, meta),
        )
        _CACHE[key] = loaded
        return loaded


@functools.lru_cache(maxsize=1)
def default_model_available() -> bool:
    try:
        _, path, _, _ = _resolve(None)
    except ColdpressError:
        return False
    return path.exists()


__all__ = ["LoadedModel", "load_model", "registry", "scale_table", "default_model_available"]
