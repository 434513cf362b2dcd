"""Semantic checks of `model.decoders`: per-step output decoders and the shapes they pass on.

A decoder chain reads the top layer's output (or the attentional state) at every step and
ends in the readout. Dense decoders map vectors to vectors; a dense decoder given `shape`
instead of `size` hands its output on as an image, which `deconv` (transposed convolution)
and `upsample` (nearest upsampling, then a convolution) decoders enlarge. A chain that ends in
an image writes the target itself: its pixels, channel-major, are the prediction and the
readout is the identity (a further linear map, or a 1x1 convolution, after a layer that
already has its own kernel and bias would add parameters and no expressiveness).
"""

from __future__ import annotations

import math

from seqgraph.errors import SpecError
from seqgraph.spec.types import DecoderSpec, IOSpec


def build_decoders(items: list, n_in: int, target: IOSpec, path: str = "model.decoders"):
    """The checked decoders for a top output of `n_in` features; returns them and the size of
    the last one's output (`n_in` when there are none)."""
    out: list[DecoderSpec] = []
    size, shape = n_in, ()
    for i, raw in enumerate(items):
        here = f"{path}[{i}]"
        if raw["type"] == "dense":
            decoder = _dense(raw, here)
        else:
            decoder = _image(raw, shape, here)
        out.append(decoder)
        size, shape = decoder.size, decoder.shape
        if shape:
            size = math.prod(shape)
    if out and out[-1].image and out[-1].type != "dense":
        _check_writes_target(out[-1], target, f"{path}[{len(out) - 1}]")
    return tuple(out), size


def _dense(raw: dict, here: str) -> DecoderSpec:
    if ("size" in raw) == ("shape" in raw):
        raise SpecError(
            here,
            "a dense decoder needs `size` (a vector) or `shape: [channels, height, width]` "
            "(an image for the deconv/upsample decoders after it), one of the two",
        )
    for key in ("channels", "kernel"):
        if key in raw:
            raise SpecError(f"{here}.{key}", f"`{key}` belongs to deconv and upsample decoders")
    shape = tuple(raw.get("shape", ()))
    size = math.prod(shape) if shape else raw["size"]
    return DecoderSpec("dense", size, raw.get("activation", "identity"), shape)


def _image(raw: dict, shape: tuple, here: str) -> DecoderSpec:
    """A deconv or upsample decoder on an image of `shape` (() when its input is a vector)."""
    kind = raw["type"]
    if not shape:
        raise SpecError(
            f"{here}.type",
            f"a {kind} decoder reads an image: give the dense decoder before it "
            "`shape: [channels, height, width]` instead of `size`",
        )
    if "channels" not in raw or "size" in raw or "shape" in raw:
        raise SpecError(here, f"a {kind} decoder takes `channels` (its output channels)")
    stride = raw.get("stride", 2)
    if kind == "deconv":
        # padding (kernel - stride) / 2 makes the output exactly stride times larger
        kernel = raw.get("kernel", stride + 2)
        if kernel < stride or (kernel - stride) % 2:
            raise SpecError(
                f"{here}.kernel",
                f"a deconv decoder's kernel must be at least its stride ({stride}) and differ "
                f"from it by an even number, so that it enlarges exactly {stride} times: "
                f"e.g. kernel: {stride + 2}",
            )
    else:
        kernel = raw.get("kernel", 3)
        if kernel % 2 == 0:
            raise SpecError(
                f"{here}.kernel",
                "an upsample decoder's convolution keeps the size, so its kernel must be odd",
            )
    _, height, width = shape
    out_shape = (raw["channels"], height * stride, width * stride)
    return DecoderSpec(
        kind, raw["channels"], raw.get("activation", "identity"), out_shape, kernel, stride
    )


def _check_writes_target(last: DecoderSpec, target: IOSpec, here: str) -> None:
    """An image that ends the chain is the prediction, so it must be the target's size."""
    pixels = math.prod(last.shape)
    if target.type != "vectors":
        raise SpecError(
            "model.target",
            f"decoders end in a {last.type} decoder, whose {'x'.join(map(str, last.shape))} "
            "image is the prediction: give the target as `{type: vectors, size: "
            f"{pixels}}}` (frames flattened channel-major, as bouncing_frames writes them)",
        )
    if pixels != target.size:
        raise SpecError(
            here,
            f"the last decoder writes the target, {target.size} values, but its output "
            f"{'x'.join(map(str, last.shape))} has {pixels}; change its channels or the shape "
            "of the dense decoder before it",
        )
