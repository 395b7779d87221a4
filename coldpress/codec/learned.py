"""The learned extreme codec (codec name ``learned``): shallow encoder, hyperprior, coarse decoder.

Encoding: optional downscaling (arbitrary scale, for the lowest rates), padding to the latent grid,
the shallow encoder (tiled with a halo for large images, so memory follows the tile), gain vectors
at a continuous rate knob ``q``, the hyper-analysis, real range coding of the hyper-latent with
compressai's EntropyBottleneck, fixed-point hyper-synthesis (bit-exact entropy parameters on every
device), and range coding of the latent with compressai's GaussianConditional. Models with a
checkerboard context code the latent in two passes (anchors, then the rest with parameters refined
from the decoded anchors, also in fixed point).

Payload: varint(len(z)) z, then the latent: y for hyperprior-only models, varint(len(y_anchors))
y_anchors y_others for checkerboard models (``latent_coding.py``), y_passes for models with a channel context
(every pass in one rANS stream, ``slice_coding.py``). The model id in the container says which.

Rate control: for each candidate scale (largest first), the highest knob ``q`` whose real bitstream
fits the byte budget, searched on the model's float32 size estimate (``rate_estimate.py``) calibrated by
the real codings made so far, and verified on real bitstreams (``rate_control.py``: 1 or 2 codings where the
search on codings alone took 3 to 6 and a bisection 7 or 8); the payload kept is always a real coding
within the budget. With ``scale_search`` (the default) the scale is chosen by the bits per pixel the
budget gives it (ASSR-EIC's point: at the lowest rates a downscaled image coded with more bits per pixel
often wins): scales whose next smaller one would still code at few bits per pixel are passed over, and
where the next smaller scale is neither clearly better nor clearly worse (and, at effort 0, the knob
landed low) it is fitted too (its first coding at the knob predicted from the larger scale's) and kept
when its reconstruction is clearly better.
At ``effort`` 1 and 2 the chosen scale's latent is then refined for rate plus distortion (``refine.py``)
and the knob searched again on the refined latent; the bitstream format is the same.

Decoding runs the synthesis in the model's recorded precision (float64 for v1 and v2, float32 for
newer models: about 7x faster on CPU, the same pixels across processes and thread counts), tiled on
large images as the model's recorded ``DecodeTiling`` says (never the ``tile`` option, which is the
encoder's: pixels near tile seams depend on the tiling when its halo is narrower than the receptive
field, as for the v1 and v2 models, so the tiling is part of the model). The fixed-point hyper path
makes the entropy decoding itself exact on every device.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from coldpress.codec import latent_coding, precision_check, preview, rate_control, slice_coding
from coldpress.codec.base import Codec
from coldpress.codec.container import read_varint, varint
from coldpress.codec.decode_memo import DecodeMemo
from coldpress.codec.models import LEGACY_DECODE_TILING, LoadedModel, load_model
from coldpress.codec.rate_control import LOG_SIZE_SLOPE
from coldpress.codec.refine import EFFORTS, REFINE_MAX_PIXELS, Refiner, check_effort
from coldpress.codec.registry import register
from coldpress.errors import BitstreamError, RateUnreachableError

#: Candidate downscaling factors, in eighths (8 = full size).
SCALES_EIGHTHS = (8, 6, 4, 3, 2)
Q_STEPS = 16  # the rate knob is stored in 1/16ths
TILE = 1024  # pixels; the encoder's analysis runs tile by tile on images larger than this on a side
HALO = 64  # pixels of context on each side of an analysis tile (the shallow encoder sees 16 px)
#: Scale search by the payload's bits per pixel at a scale (the budget over the pixels that scale codes):
#: a scale that would code at fewer than SCALE_SMALLER_WINS_BPP beats the next larger one without
#: comparing, one that would code at more than SCALE_LARGER_WINS_BPP loses to it; between the two the
#: encoder fits both and compares their reconstructions. Measured (results/scale-choice/) on BSDS500
#: test, SUN and underwater scenes: the smaller scale won 34/36, 24/28 and 48/48 times at 0.027-0.052 (and
#: 13/13 at 0.043-0.044 where 6/8 met 4/8 or 4/8 met 3/8, BSDS500), 47/63 (BSDS500) and 12/22 (underwater)
#: at 0.060-0.064, 76/141 times at 0.079-0.088, and lost 15/15 times at 0.097 (3/8 against 2/8) and 28/39
#: at 0.0997 (BSDS500), and 96/110, 2/2 and 19/20 times at 0.104-0.117.
SCALE_SMALLER_WINS_BPP, SCALE_LARGER_WINS_BPP = 0.058, 0.095
#: Where they are compared, a smaller scale replaces the larger one only when it is better by this much (PSNR).
SCALE_SEARCH_MARGIN_DB = 0.02
#: ... and at ``effort`` 0 it is tried only when the larger scale's knob is this low (in 1/16ths), since a
#: comparison costs a second fit and two reconstructions: at 0.05 bpp the smaller scale won 2/30 times on
#: SUN scenes and 34/59 on BSDS500, but 22/30 on underwater scenes, whose knobs land above the limit
#: (effort 0 leaves a mean 0.15 dB there at 0.05 bpp, 0.17 at 0.04; efforts 1 and 2 compare whatever the knob).
SCALE_SEARCH_MAX_Q16 = 2 * Q_STEPS
#: Decodes whose recorded tiling covers the synthesis' receptive field run its back stage (the last two
#: upsamplings and the tail) in tiles of this many output pixels a side, inside outer tiles of this
#: many times the recorded tile (``_staged_synthesis``); neither changes a pixel.
BACK_TILE, OUTER_TILE_FACTOR = 768, 2


def _scaled_size(w: int, h: int, eighths: int) -> tuple[int, int]:
    return max(1, math.ceil(w * eighths / 8)), max(1, math.ceil(h * eighths / 8))


def _cuts(n: int, parts: int) -> list[int]:
    """Starts of ``parts`` near-equal pieces of ``range(n)`` (and n)."""
    return [n * i // parts for i in range(parts + 1)]


def _spans(n: int, cuts: list[int], halo: int) -> list[int]:
    """Lengths of the pieces between ``cuts`` of ``range(n)``, each with its halo (clipped to the edges)."""
    return [min(n, b + halo) - max(0, a - halo) for a, b in zip(cuts, cuts[1:])]


def balanced_grid(h: int, w: int, tile: int, halo: int) -> tuple[list[int], list[int]]:
    """Row and column cuts of the fewest-work grid whose tiles, halo included, are no larger in area than
    a ``tile`` x ``tile`` tile with its halo on every side: the working set of a square tiling, without
    its per-pixel overhead on sizes just past a tile (1152x864 decodes untiled, not as 2 tiles). The
    square grid's counts are among those tried, so a grid always fits."""
    budget = (tile + 2 * halo) ** 2
    row_options = [(_spans(h, c, halo), c) for c in (_cuts(h, n) for n in range(1, 2 * math.ceil(h / tile) + 1))]
    col_options = [(_spans(w, c, halo), c) for c in (_cuts(w, n) for n in range(1, 2 * math.ceil(w / tile) + 1))]
    # Least work first, then fewest tiles (with no halo, splitting costs nothing but calls).
    *_, rows, cols = min((sum(rs) * sum(cs), len(rs) * len(cs), r, c) for rs, r in row_options
                         for cs, c in col_options if max(rs) * max(cs) <= budget)
    return rows, cols


def _tiled(fn, x: torch.Tensor, factor: float, tile: int, halo: int, align: int, balanced: bool = False) -> torch.Tensor:
    """Apply a fully convolutional ``fn`` tile by tile with a halo; output size = input * factor.

    ``align`` is the input granularity (tile origins and sizes are multiples of it), so the tiles'
    outputs line up exactly. ``balanced``: the grid of ``balanced_grid`` (align 1 only), for a halo that
    covers ``fn``'s receptive field, where the grid does not change the output; else square tiles
    from the top left corner.
    """
    _, _, h, w = x.shape
    if balanced and align == 1:
        rows, cols = balanced_grid(h, w, tile, halo)
    else:
        rows, cols = list(range(0, h, tile)) + [h], list(range(0, w, tile)) + [w]
    if len(rows) == 2 and len(cols) == 2:
        return fn(x)
    out = None
    for top, bottom in zip(rows, rows[1:]):
        for left, right in zip(cols, cols[1:]):
            t0, l0 = max(0, top - halo), max(0, left - halo)
            t1, l1 = min(h, bottom + halo), min(w, right + halo)
            y = fn(x[:, :, t0:t1, l0:l1])
            if out is None:
                out = y.new_empty(y.shape[0], y.shape[1], int(h * factor), int(w * factor))
            oy, ox = int((top - t0) * factor), int((left - l0) * factor)
            th, tw = int((bottom - top) * factor), int((right - left) * factor)
            out[:, :, int(top * factor) : int(top * factor) + th, int(left * factor) : int(left * factor) + tw] = y[
                :, :, oy : oy + th, ox : ox + tw
            ]
    return out


@register("learned")
class LearnedCodec(Codec):
    """The learned extreme codec; ``model`` picks a shipped or local model (default: the bundled one)."""

    name = "learned"

    def __init__(self, model: str | None = None, device: str | None = None, tile: int = TILE,
                 scale_search: bool = True, effort: int = 0):
        """``model``: a shipped model id or a weights file; ``tile``: the encoder's analysis tile
        (pixels; decoding always uses the model's recorded tiling); ``scale_search``: see the module;
        ``effort``: 0 (fast), 1 or 2 (encoder-side latent refinement, ``refine.py``; same format)."""
        self.effort = check_effort(effort)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.loaded: LoadedModel = load_model(model, self.device)
        # What rebuilds this codec in another process: a model file by its absolute path, a shipped one by id.
        model_ref = str(self.loaded.path.resolve()) if model is not None and model not in self.known_models() else model
        self._options = {k: v for k, v in (("model", model_ref), ("device", device)) if v is not None}
        if tile != TILE:
            self._options["tile"] = tile
        if not scale_search:
            self._options["scale_search"] = False
        if effort:
            self._options["effort"] = effort
        self.model_id = self.loaded.model_id
        self.weights_hash = bytes.fromhex(self.loaded.sha256[:16])
        self.device_class = self.device.type
        self.tile = tile
        self.scale_search = scale_search
        # compressai's coders belong to the (cached, shared) model and are not re-entrant across
        # threads: every codec instance of one model takes the model's lock.
        self._lock = self.loaded.coder_lock
        #: Latent codings made by rate control so far (a counter for benchmarks).
        self.codings = 0
        #: What encodes computed for the verify decodes that follow them (``decode_memo.py``).
        self._decode_memo = DecodeMemo()
        #: Syntheses (full decodes), counted for tests and benchmarks.
        self.syntheses = 0

    @classmethod
    def known_models(cls) -> list[str]:
        """Shipped models, then models given as files in the folders of $COLDPRESS_MODELS."""
        from coldpress.codec.models import model_files, registry

        shipped = list(registry()["models"])
        return shipped + [m for m in model_files() if m not in shipped]

    # -- network stages ------------------------------------------------------------------------
    @property
    def net(self):
        return self.loaded.net

    def _to_tensor(self, rgb: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)[None].float().div_(255.0)

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        stride = self.net.cfg.total_stride
        h, w = x.shape[-2:]
        return F.pad(x, (0, (-w) % stride, 0, (-h) % stride), mode="replicate")

    def _analysis_input(self, rgb: np.ndarray, eighths: int) -> torch.Tensor:
        """The padded image tensor the encoder sees at eighths/8 of the size (on the codec's device)."""
        h, w = rgb.shape[:2]
        if eighths != 8:
            sw, sh = _scaled_size(w, h, eighths)
            rgb = np.asarray(Image.fromarray(rgb).resize((sw, sh), Image.Resampling.LANCZOS))
        return self._padded(self._to_tensor(rgb)).to(self.device)

    @torch.no_grad()
    def _analysis_of(self, x: torch.Tensor) -> torch.Tensor:
        s = self.net.cfg.latent_stride
        analysis = self.loaded.analysis_channels_last

        def tile(t: torch.Tensor) -> torch.Tensor:
            return analysis(t.contiguous(memory_format=torch.channels_last)).contiguous()

        return _tiled(tile, x, 1 / s, self.tile, HALO, s)

    @torch.no_grad()
    def analysis(self, rgb: np.ndarray, eighths: int) -> torch.Tensor:
        """Unscaled latent y (before gains) of an RGB image downscaled to eighths/8."""
        return self._analysis_of(self._analysis_input(rgb, eighths))

    @torch.no_grad()
    def _hyper(self, y: torch.Tensor, q16: int):
        """The gain-scaled latent (float64, on CPU) and its hyper-latent z, at rate knob q16."""
        net = self.net
        gain, _ = net.gains(torch.tensor([q16 / Q_STEPS], device=y.device))
        y = y * gain
        z = net.h_a(y)
        return y.double().cpu(), z

    def _latent_parameters(self, y: torch.Tensor, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Means and scales of every latent position, exactly as the decoder will derive them."""
        loaded = self.loaded
        means, scales = loaded.hyper_parameters(z_hat)
        if loaded.has_slices:
            return slice_coding.parameters(loaded, y, means, scales)
        return latent_coding.parameters(loaded, y, means, scales)

    @torch.no_grad()
    def _code_latent(self, y: torch.Tensor, q16: int) -> bytes:
        net, loaded = self.net, self.loaded
        y, z = self._hyper(y, q16)
        with self._lock:
            z_strings = net.entropy_bottleneck.compress(z)
            z_hat = net.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
        head = varint(len(z_strings[0])) + z_strings[0]
        if loaded.has_slices:
            means, scales = loaded.hyper_parameters(z_hat)
            return head + slice_coding.encode(loaded, y, means, scales)
        stream, coded = latent_coding.encode(loaded, y, z_hat)
        self._decode_memo.keep_latent(head + stream, coded)
        return head + stream

    @torch.no_grad()
    def estimate_bits(self, rgb: np.ndarray, q16: int, eighths: int = 8) -> float:
        """The model's own rate estimate (from its likelihoods) for the bitstream ``_code_latent`` makes."""
        net, loaded = self.net, self.loaded
        y, z = self._hyper(self.analysis(rgb, eighths), q16)
        z_hat, z_lik = net.entropy_bottleneck(z, training=False)
        means, scales = self._latent_parameters(y, z_hat)
        scales = net.gaussian_conditional.scale_table.double()[loaded.scale_indexes(scales).long()]
        y_hat = torch.round(y - means) + means
        y_lik = net.gaussian_conditional._likelihood(y_hat, scales, means=means).clamp_min(1e-9)
        return float(-torch.log2(z_lik.double()).sum() - torch.log2(y_lik).sum())

    def _decode_latent(self, payload: bytes, z_shape: tuple[int, int], preview: bool = False) -> torch.Tensor:
        """The gain-scaled latent y_hat (float64, CPU) of a payload. Every bit is range-decoded; where
        this codec has just coded the payload, its entropy parameters are taken from that coding
        (``decode_memo.py``) once the decoded inputs they derive from are checked equal."""
        net, loaded = self.net, self.loaded
        n_z, pos = read_varint(payload, 0, "learned payload")
        if pos + n_z > len(payload):
            raise BitstreamError("learned payload is truncated (hyper-latent longer than the payload)")
        z_string, pos = payload[pos : pos + n_z], pos + n_z
        with self._lock:
            z_hat = net.entropy_bottleneck.decompress([z_string], z_shape).to(self.device)
        if loaded.has_slices:  # (its codings are not kept)
            return slice_coding.decode(loaded, payload[pos:], *loaded.hyper_parameters(z_hat))
        # A checked decode (precision_check) runs every stack, as it runs the synthesis.
        coded = self._decode_memo.take_latent(payload, keep=preview) if precision_check.active() is None else None
        return latent_coding.decode(loaded, payload[pos:], z_hat, coded)

    # -- the Codec contract --------------------------------------------------------------------
    def _params_probe(self) -> dict[str, Any]:
        return {"q": 80, "s": 8}

    def _fit(self, rgb: np.ndarray, eighths: int, budget: int, start: int = 0) -> tuple[bytes | None, int]:
        """(payload at the highest knob that fits ``budget`` at this scale, or None; smallest payload size);
        ``start``: the knob coded first (a prediction)."""
        return self._fit_latent(self.analysis(rgb, eighths), budget, start)

    def _fit_latent(self, y: torch.Tensor, budget: int, start: int = 0) -> tuple[bytes | None, int]:
        """(payload of latent ``y`` at the highest knob that fits ``budget``, or None; that knob, or the
        smallest payload size when none fits): ``rate_control.fit_on_estimates`` on the model's size
        estimate, one or two real codings on most images."""
        estimator = self.loaded.rate_estimator
        if estimator is None:
            return self._fit_latent_by_codings(y, budget, start)
        return rate_control.fit_on_estimates(self._coder(y), lambda knob: estimator.estimate(y, knob, Q_STEPS),
                                             budget, self._q_max, start)

    def _fit_latent_by_codings(self, y: torch.Tensor, budget: int, start: int = 0) -> tuple[bytes | None, int]:
        """``_fit_latent`` measuring every probe on a real coding (models without a rate estimator)."""
        return rate_control.fit_on_codings(self._coder(y), budget, self._q_max, start)

    @property
    def _q_max(self) -> int:
        return (self.net.cfg.rate_points - 1) * Q_STEPS

    def _coder(self, y: torch.Tensor):
        """Real codings of latent ``y`` by knob, counted in ``codings``."""
        def code(knob: int) -> bytes:
            self.codings += 1
            return self._code_latent(y, knob)
        return code

    def _encode_rgb(self, rgb: np.ndarray, max_payload_bytes: int) -> tuple[bytes, dict[str, Any]]:
        """Rate control (``_search``), then, at ``effort`` 1 or 2, refinement of the chosen scale's latent."""
        self._decode_memo.begin()
        payload, params = self._search(rgb, max_payload_bytes)
        plan = EFFORTS[self.effort]
        if plan is None:
            return payload, params
        return self._refined(rgb, max_payload_bytes, payload, params, plan)

    def _search(self, rgb: np.ndarray, max_payload_bytes: int) -> tuple[bytes, dict[str, Any]]:
        """The highest knob that fits at the largest scale that fits; with ``scale_search``, the scale is
        chosen by the bits per pixel it would code at (``_scale_choice``): scales whose next smaller one
        would still code at few bits per pixel are passed over (never coded: the smaller one wins), and
        where the next smaller scale is neither clearly better nor clearly worse, it is fitted too and kept
        when it reconstructs better."""
        h, w = rgb.shape[:2]
        scales = list(SCALES_EIGHTHS)
        while self.scale_search and len(scales) > 1 and self._scale_choice(scales[1], w, h, max_payload_bytes) == "smaller":
            scales.pop(0)
        fits: list[tuple[bytes, dict[str, Any]]] = []
        lowest = None
        for i, eighths in enumerate(scales):
            start = 0
            if fits:  # the same bytes on (e/8)^2 of the pixels: the knob rises by about log(area ratio) / slope
                q_prev, e_prev = fits[-1][1]["q"], fits[-1][1]["s"]
                start = q_prev + int(2 * math.log(e_prev / eighths) / LOG_SIZE_SLOPE)
            payload, q16 = self._fit(rgb, eighths, max_payload_bytes, start)
            if payload is None:
                lowest = q16 if lowest is None else min(lowest, q16)
                continue
            fits.append((payload, {"q": q16, "s": eighths}))
            if len(fits) == 2 or not self.scale_search or i + 1 == len(scales) or (q16 > SCALE_SEARCH_MAX_Q16 and not self.effort):
                break
            if self._scale_choice(scales[i + 1], w, h, max_payload_bytes) == "larger":
                break
        if not fits:
            raise RateUnreachableError(
                f"learned codec cannot fit this {w}x{h} image into {max_payload_bytes} payload bytes "
                f"(its lowest rate needs about {lowest} bytes, {8 * lowest / (w * h):.4f} bpp); raise --bpp"
            )
        if len(fits) == 1:
            return fits[0]
        # Compare the reconstructions (float32 preview decoder) at full size; the smaller scale must win
        # clearly (SCALE_SEARCH_MARGIN_DB) so that a near-tie never depends on float rounding.
        if preview.windowed(self, w, h):  # large images: the smaller scale whole, the larger on windows
            mse = list(preview.compare(self, rgb, fits[0], fits[1]))
        else:
            mse = [self._preview_mse(rgb, p, prm) for p, prm in fits]
        if 10 * math.log10(mse[0] / max(mse[1], 1e-12)) > SCALE_SEARCH_MARGIN_DB:
            return fits[1]
        return fits[0]

    @staticmethod
    def _scale_choice(eighths: int, width: int, height: int, max_payload_bytes: int) -> str:
        """How scale ``eighths`` fares against the next larger one, judged by the payload bits per pixel
        it would code at: "smaller" (it wins, below ``SCALE_SMALLER_WINS_BPP``), "larger" (it loses,
        above ``SCALE_LARGER_WINS_BPP``) or "compare" (reconstruct both)."""
        sw, sh = _scaled_size(width, height, eighths)
        coded_bpp = 8 * max_payload_bytes / (sw * sh)
        if coded_bpp < SCALE_SMALLER_WINS_BPP:
            return "smaller"
        return "larger" if coded_bpp > SCALE_LARGER_WINS_BPP else "compare"

    def _preview_mse(self, rgb: np.ndarray, payload: bytes, params: dict[str, Any]) -> float:
        h, w = rgb.shape[:2]
        recon = self._reconstruct(payload, params, w, h, preview=True).astype(np.float64)
        return float(np.mean((recon - rgb.astype(np.float64)) ** 2))

    def _refined(self, rgb: np.ndarray, budget: int, payload: bytes, params: dict[str, Any], plan) -> tuple[bytes, dict[str, Any]]:
        """Refine the latent at the chosen scale and knob (``refine.py``), search the knob again on the
        refined latent (it codes smaller), ``plan.rounds`` times; keep whichever candidate, the
        unrefined one included, reconstructs best (float32 preview), every one within the budget."""
        eighths, q16 = int(params["s"]), int(params["q"])
        h, w = rgb.shape[:2]
        sw, sh = _scaled_size(w, h, eighths)
        if sw * sh > REFINE_MAX_PIXELS:
            return payload, params  # the untiled refinement would need too much memory: effort 0's result
        x = self._analysis_input(rgb, eighths)
        y = self._analysis_of(x)
        refiner = Refiner(self)
        candidates = [(payload, params)]
        for _ in range(plan.rounds):
            with torch.enable_grad():
                y = refiner.refine(x, y, q16, sw, sh, plan)
            p, q = self._fit_latent(y, budget, start=q16)
            if p is None:
                break
            candidates.append((p, {"q": q, "s": eighths}))
            q16 = q
        mse = [self._preview_mse(rgb, p, prm) for p, prm in candidates]
        best = min(range(len(candidates)), key=lambda i: (mse[i], i))
        return candidates[best]

    @torch.no_grad()
    def _decode_rgb(self, payload: bytes, params: dict[str, Any], width: int, height: int) -> np.ndarray:
        known = self._decode_memo.take_pixels(payload, params, width, height)
        if known is not None and precision_check.active() is None:  # a checked decode is always run
            return known
        return self._reconstruct(payload, params, width, height)

    @torch.no_grad()
    def _reconstruct(self, payload: bytes, params: dict[str, Any], width: int, height: int,
                     preview: bool = False) -> np.ndarray:
        """Pixels of a payload: the decode in the model's precision, or a float32 ``preview`` for rate
        control. For float32 models the preview is the decode itself (same networks, precision and
        tiling, from the payload's bytes), so the scale search's reconstructions are kept
        (``decode_memo.py``) and the verify-on-write decode of the chosen bitstream, which follows,
        returns them instead of running the synthesis again."""
        pixels = self._synthesize(payload, params, width, height, preview)
        if preview and self._float32_decode():
            self._decode_memo.keep_pixels(payload, params, width, height, pixels)
        return pixels

    def forget_decodes(self) -> None:
        """Drop what encodes kept for the verify decodes that follow them (``decode_memo.py``)."""
        self._decode_memo.clear()

    def _rate_params(self, params: dict[str, Any]) -> tuple[int, int]:
        """(knob in 1/16ths, scale in eighths) of a payload's rate parameters, checked."""
        try:
            q16, eighths = int(params["q"]), int(params["s"])
        except (KeyError, TypeError, ValueError):
            raise BitstreamError(f"learned bitstream has invalid rate parameters {params}; it is corrupted") from None
        if eighths not in SCALES_EIGHTHS or not 0 <= q16 <= self._q_max:
            raise BitstreamError(f"learned bitstream has out-of-range rate parameters {params}; it is corrupted")
        return q16, eighths

    def coded_geometry(self, params: dict[str, Any], width: int, height: int) -> tuple[int, tuple[int, int]]:
        """(knob in 1/16ths, (width, height) of the image as coded) of a payload's rate parameters."""
        q16, eighths = self._rate_params(params)
        return q16, _scaled_size(width, height, eighths)

    def windows_preview_ok(self) -> bool:
        """Whether previews of windows are this model's decode there, up to a halo (``preview.py``): a
        recorded tiling that covers the receptive field, float32 decodes."""
        return self.loaded.decode_tiling != LEGACY_DECODE_TILING and self._float32_decode()

    def _latent_of(self, payload: bytes, q16: int, sw: int, sh: int, preview: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(y_hat, inverse gain) of a payload coded at knob ``q16`` on a ``sw`` x ``sh`` image."""
        stride = self.net.cfg.total_stride
        ph, pw = math.ceil(sh / stride) * stride, math.ceil(sw / stride) * stride
        y_hat = self._decode_latent(payload, (ph // stride, pw // stride), preview)
        _, inv_gain = self.net.gains(torch.tensor([q16 / Q_STEPS], device=self.device))
        return y_hat, inv_gain

    def _synthesis_for(self, preview: bool):
        """(dtype, synthesis network, memory layout) of a decode (``preview``: rate control's)."""
        if self._float32_decode():
            return torch.float32, self.loaded.synthesis32, torch.channels_last
        if preview:
            return torch.float32, self.net.g_s, torch.contiguous_format
        return torch.float64, self.loaded.synthesis64, torch.contiguous_format

    @torch.no_grad()
    def _decode_rgb_window(self, payload: bytes, params: dict[str, Any], width: int, height: int,
                           window: tuple[int, int, int, int]) -> np.ndarray:
        """Only the latents whose synthesis reaches the window, with the recorded tiling's halo (which
        covers the receptive field) on every side, are synthesised: the same pixels as the whole decode
        (tests/test_learned_codec.py). Payloads coded downscaled (their Lanczos upscaling is of the whole
        image) and models whose tiling changes pixels (v1, v2) decode whole, then crop; so does a GPU, where
        cuDNN may choose another algorithm for another shape (the exactness is tested on CPU)."""
        q16, eighths = self._rate_params(params)
        tiling = self.loaded.decode_tiling
        if eighths != 8 or tiling == LEGACY_DECODE_TILING or self.device.type != "cpu":
            return super()._decode_rgb_window(payload, params, width, height, window)
        self.syntheses += 1
        col, row, w, h = window
        y_hat, inv_gain = self._latent_of(payload, q16, width, height)
        return self._region_pixels(y_hat, inv_gain, (col, row, col + w, row + h), tiling.halo, preview=False)

    def _region_pixels(self, y_hat: torch.Tensor, inv_gain: torch.Tensor, region: tuple[int, int, int, int],
                       halo: int, preview: bool) -> np.ndarray:
        """Pixels (x0, y0) to (x1, y1) of the coded image, synthesised from the latents that reach them
        and ``halo`` pixels more on every side (the recorded tiling's halo: exactly the whole decode's)."""
        x0, y0, x1, y1 = region
        s = self.net.cfg.latent_stride
        ly0, lx0 = max(0, (y0 - halo) // s), max(0, (x0 - halo) // s)
        ly1 = min(y_hat.shape[-2], (y1 - 1 + halo) // s + 1)
        lx1 = min(y_hat.shape[-1], (x1 - 1 + halo) // s + 1)
        dtype, synthesis, layout = self._synthesis_for(preview)
        part = self._pixels(synthesis, y_hat[..., ly0:ly1, lx0:lx1], inv_gain, dtype, layout,
                            (lx1 - lx0) * s, (ly1 - ly0) * s)
        return np.ascontiguousarray(part[y0 - ly0 * s:y1 - ly0 * s, x0 - lx0 * s:x1 - lx0 * s])

    def _synthesize(self, payload: bytes, params: dict[str, Any], width: int, height: int,
                    preview: bool) -> np.ndarray:
        self.syntheses += 1
        q16, eighths = self._rate_params(params)
        sw, sh = _scaled_size(width, height, eighths)
        y_hat, inv_gain = self._latent_of(payload, q16, sw, sh, preview)
        dtype, synthesis, layout = self._synthesis_for(preview)
        x_hat = self._pixels(synthesis, y_hat, inv_gain, dtype, layout, sw, sh)
        check = precision_check.active()
        if check is not None and not preview and self._float32_decode():
            reference = self._pixels(self.loaded.synthesis64, y_hat, inv_gain, torch.float64, torch.contiguous_format,
                                     sw, sh)
            precision_check.record(check, x_hat, reference, self.decode_device_kind())
        if (sw, sh) != (width, height):
            x_hat = np.asarray(Image.fromarray(x_hat).resize((width, height), Image.Resampling.LANCZOS))
        return np.ascontiguousarray(x_hat)

    def _pixels(self, synthesis, y_hat: torch.Tensor, inv_gain: torch.Tensor, dtype: torch.dtype, layout,
                sw: int, sh: int) -> np.ndarray:
        """The synthesis of the gain-scaled latent in ``dtype``, as uint8 pixels at the coded size."""
        y_hat = (y_hat.to(self.device, dtype) * inv_gain.to(dtype)).contiguous(memory_format=layout)
        s = self.net.cfg.latent_stride
        tiling = self.loaded.decode_tiling
        # A tiling whose halo covers the synthesis' receptive field gives the untiled decode's pixels
        # whatever the grid, so the staged grid (less work, less memory) is used for it. Every recorded
        # tiling is one: export records decode_tiling_for's, whose halo is the measured radius rounded up
        # (8 s to measure, so not re-measured here; tests/test_learned_codec.py checks the shipped
        # model's); models without one (v1/v2) decode on LEGACY_DECODE_TILING's square grid, as they
        # always have.
        if tiling == LEGACY_DECODE_TILING:
            x_hat = _tiled(synthesis, y_hat, s, max(1, tiling.tile // s), tiling.halo // s, 1)
        else:
            x_hat = self._staged_synthesis(synthesis, y_hat)
        return x_hat[0, :, :sh, :sw].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()

    def _staged_synthesis(self, synthesis, y_hat: torch.Tensor) -> torch.Tensor:
        """The synthesis of a model whose recorded tiling covers the receptive field, where the grid
        changes no pixel: outer tiles of ``OUTER_TILE_FACTOR`` times the recorded tile (balanced grid,
        with the recorded halo), in each the front stage at once and the back stage (``Synthesis.stages``:
        the last two upsamplings and the tail, most of the work and of the memory) in ``BACK_TILE``
        tiles with the few pixels of halo its own receptive field needs. The same pixels as one grid of
        recorded tiles, in less time (4 megapixels: 7.0 -> 5.0 s, no halo recomputed across the whole
        network) and less memory (the full-resolution activations exist one back tile at a time)."""
        s = self.net.cfg.latent_stride
        tiling = self.loaded.decode_tiling
        front, back = synthesis.stages()
        factor, halo = self.loaded.back_stage

        def outer(y: torch.Tensor) -> torch.Tensor:
            return _tiled(back, front(y), factor, max(1, BACK_TILE // factor), halo, 1, balanced=True)

        return _tiled(outer, y_hat, s, max(1, OUTER_TILE_FACTOR * tiling.tile // s), tiling.halo // s, 1,
                      balanced=True)

    def options(self) -> dict[str, Any]:
        return dict(self._options)

    def _float32_decode(self) -> bool:
        """Whether the synthesis runs in float32: when the model was published so (new exports), and on
        CUDA only with TF32 off (TF32 convolutions would round differently from every CPU); a float32
        model decodes in float64 otherwise, which gives the same pixels within one level, slower."""
        if self.loaded.decode_precision != "float32":
            return False
        return self.device.type != "cuda" or not torch.backends.cudnn.allow_tf32

    def decode_device_kind(self) -> str | None:
        """The kind of this codec's device when it decodes in float32 (``precision_check.device_kind``);
        None for float64 decodes, whose pixels are the same on every device."""
        return precision_check.device_kind(self.device) if self._float32_decode() else None

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(self.loaded.card_summary())
        return d
