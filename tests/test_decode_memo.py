"""The verify-on-write decode takes the entropy parameters its encode derived (``decode_memo.py``) only
where what it decodes equals what was coded: the same pixels as a decode on a fresh codec, whatever the
memo holds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coldpress.codec import container, get_codec
from coldpress.codec.decode_memo import CodedLatent
from coldpress.codec.models import default_model_available
from synthetic_images import natural_image

pytestmark = pytest.mark.skipif(
    not default_model_available(), reason="no learned model is bundled (coldpress/codec/weights/MODELS.json)"
)


@pytest.fixture(scope="module")
def coded():
    """(codec, the fresh decode of a bitstream it coded, the bitstream, its payload)."""
    codec = get_codec("learned", device="cpu", scale_search=False)
    assert codec.loaded.has_context and not codec.loaded.has_slices  # the shipped default's coding
    data = codec.encode(natural_image(160, 224, "RGB", seed=21), 0.1).bitstream
    fresh = get_codec("learned", device="cpu").decode(data)
    return codec, fresh, data, container.unpack(data).payload


def _counting(monkeypatch, loaded, name: str) -> list:
    calls = []
    original = getattr(loaded, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(loaded, name, counted)
    return calls


def test_the_verify_decode_skips_the_hyper_and_context_stacks_and_gives_the_fresh_pixels(coded, monkeypatch):
    codec, fresh, data, _ = coded
    codec.encode(natural_image(160, 224, "RGB", seed=21), 0.1)  # kept for the decode that follows
    calls = _counting(monkeypatch, codec.loaded, "hyper_parameters")
    context = _counting(monkeypatch, codec.loaded, "context_parameters")
    assert np.array_equal(codec.decode(data), fresh)
    assert calls == [] and context == []
    # Taken once: a second decode (a restore) runs every stack again, to the same pixels.
    assert np.array_equal(codec.decode(data), fresh)
    assert calls == ["hyper_parameters"] and context == ["context_parameters"]


def test_an_entry_whose_hyper_latent_differs_from_the_decoded_one_is_not_used(coded):
    codec, fresh, data, payload = coded
    codec.forget_decodes()
    codec.encode(natural_image(160, 224, "RGB", seed=21), 0.1)
    entry = codec._decode_memo.take_latent(payload)
    assert entry is not None
    wrong = CodedLatent(entry.z_hat + 1, entry.means + 0.37, torch.clamp(entry.indexes + 3, max=int(entry.indexes.max())),
                        entry.anchors)  # parameters that would decode other values
    codec._decode_memo.keep_latent(payload, wrong)
    assert np.array_equal(codec.decode(data), fresh)


def test_an_entry_whose_anchors_differ_from_the_decoded_ones_gives_way_to_the_context(coded, monkeypatch):
    """The anchors are decoded with the kept hyperprior parameters (their hyper-latent matched); the
    second pass's parameters are then the context's own, from the decoded anchors."""
    codec, fresh, data, payload = coded
    codec.forget_decodes()
    codec.encode(natural_image(160, 224, "RGB", seed=21), 0.1)
    entry = codec._decode_memo.take_latent(payload)
    codec._decode_memo.keep_latent(payload, CodedLatent(entry.z_hat, entry.means, entry.indexes, entry.anchors + 1))
    context = _counting(monkeypatch, codec.loaded, "context_parameters")
    assert np.array_equal(codec.decode(data), fresh)
    assert context == ["context_parameters"]


def test_a_matching_entry_is_what_the_decode_uses(coded):
    """The converse, so that the test above can fail: parameters kept with matching inputs are used."""
    codec, fresh, data, payload = coded
    codec.forget_decodes()
    codec.encode(natural_image(160, 224, "RGB", seed=21), 0.1)
    entry = codec._decode_memo.take_latent(payload)
    codec._decode_memo.keep_latent(payload, CodedLatent(entry.z_hat, entry.means + 0.37, entry.indexes, entry.anchors))
    assert not np.array_equal(codec.decode(data), fresh)


def test_forget_decodes_drops_the_coded_latents(coded):
    codec, _, data, payload = coded
    codec.encode(natural_image(160, 224, "RGB", seed=21), 0.1)
    assert codec._decode_memo.take_latent(payload, keep=True) is not None
    codec.forget_decodes()
    assert codec._decode_memo.take_latent(payload) is None


def test_entries_belong_to_the_encoding_thread_and_go_with_its_next_encode(coded, monkeypatch):
    """A decode on another thread derives everything itself (same pixels); the thread's next encode drops
    what the previous one kept."""
    from concurrent.futures import ThreadPoolExecutor

    codec, fresh, data, payload = coded
    codec.forget_decodes()
    with ThreadPoolExecutor(1) as pool:
        pool.submit(codec.encode, natural_image(160, 224, "RGB", seed=21), 0.1).result()
    calls = _counting(monkeypatch, codec.loaded, "hyper_parameters")
    assert np.array_equal(codec.decode(data), fresh) and calls == ["hyper_parameters"]
    codec.encode(natural_image(160, 224, "RGB", seed=21), 0.1)
    assert codec._decode_memo.take_latent(payload, keep=True) is not None
    codec.encode(natural_image(96, 128, "RGB", seed=3), 0.1)
    assert codec._decode_memo.take_latent(payload) is None
