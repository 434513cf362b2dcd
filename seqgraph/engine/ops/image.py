"""Image ops of the op table (registered into `ops.OPS`): 2-D convolution and max pooling, and
for output decoders their transposes: transposed convolution and nearest upsampling.

All are written with slices over the kernel's offsets and one matrix product, never a Python
loop over pixels, and only with array API calls. Layout is (N, C, H, W) as in PyTorch.
"""

from __future__ import annotations

from seqgraph.engine import xp_extra
from seqgraph.engine.ops.arrays import pad_range
from seqgraph.engine.ops.table import op


def _pad2d(xp, x, padding: int):
    """Zero-pad the two last axes by `padding` on each side."""
    if not padding:
        return x
    x = pad_range(xp, x, padding, x.shape[-2] + 2 * padding, -2)
    return pad_range(xp, x, padding, x.shape[-1] + 2 * padding, -1)


def _columns(xp, x, kh: int, kw: int):
    """(N, Ho, Wo, kh*kw*C): each output pixel's receptive field, offset-major."""
    n, c, h, w = x.shape
    ho, wo = h - kh + 1, w - kw + 1
    patches = [
        xp.permute_dims(x[:, :, i : i + ho, j : j + wo], (0, 2, 3, 1))
        for i in range(kh)
        for j in range(kw)
    ]
    return xp.concat(patches, axis=-1)


def _kernel_matrix(xp, W):
    """(K, C, kh, kw) -> (kh*kw*C, K), ordered like `_columns`."""
    k, c, kh, kw = W.shape
    return xp.reshape(xp.permute_dims(W, (2, 3, 1, 0)), (kh * kw * c, k))


@op("conv2d", 2, ("padding",))
def _conv2d(xp, x, W, padding=0):
    """out[n,k,i,j] = sum_{c,a,b} xpad[n,c,i+a,j+b] W[k,c,a,b] (stride 1, zero padding).

    dW = columns^T @ g (summed over n, i, j); dx = each kernel offset's g @ W^T placed back
    at its offset, summed, with the padding cropped.
    """
    cols = _columns(xp, _pad2d(xp, x, padding), W.shape[2], W.shape[3])
    out = xp.matmul(cols, _kernel_matrix(xp, W))
    return xp.permute_dims(out, (0, 3, 1, 2))


@_conv2d.vjp
def _conv2d_vjp(xp, g, out, x, W, padding=0):
    k, c, kh, kw = W.shape
    padded = _pad2d(xp, x, padding)
    cols = _columns(xp, padded, kh, kw)
    gp = xp.permute_dims(g, (0, 2, 3, 1))  # (N, Ho, Wo, K)
    depth = cols.shape[-1]
    gW = xp.matmul(xp.matrix_transpose(xp.reshape(cols, (-1, depth))), xp.reshape(gp, (-1, k)))
    gW = xp.permute_dims(xp.reshape(gW, (kh, kw, c, k)), (3, 2, 0, 1))
    gcols = xp.matmul(gp, xp.matrix_transpose(_kernel_matrix(xp, W)))  # (N, Ho, Wo, D)
    hp, wp = padded.shape[2], padded.shape[3]
    gx = None
    for offset in range(kh * kw):
        i, j = divmod(offset, kw)
        part = xp.permute_dims(gcols[..., offset * c : (offset + 1) * c], (0, 3, 1, 2))
        part = pad_range(xp, pad_range(xp, part, i, hp, -2), j, wp, -1)
        gx = part if gx is None else gx + part
    if padding:
        gx = gx[:, :, padding : hp - padding, padding : wp - padding]
    return gx, gW


@op("maxpool2d", 1, ("size",))
def _maxpool2d(xp, x, size=2):
    """out = max over non-overlapping size x size windows (H and W divisible by size).

    dx = g routed to each window's maximum (split evenly between tied maxima).
    """
    n, c, h, w = x.shape
    windows = xp.reshape(x, (n, c, h // size, size, w // size, size))
    return xp.max(windows, axis=(3, 5))


@_maxpool2d.vjp
def _maxpool2d_vjp(xp, g, out, x, size=2):
    n, c, h, w = x.shape
    windows = xp.reshape(x, (n, c, h // size, size, w // size, size))
    top = xp.reshape(out, (n, c, h // size, 1, w // size, 1))
    hits = xp.astype(windows == top, x.dtype)
    share = hits / xp.sum(hits, axis=(3, 5), keepdims=True)
    grad = xp.reshape(g, (n, c, h // size, 1, w // size, 1)) * share
    return (xp.reshape(grad, x.shape),)


@op("conv_transpose2d", 2, ("stride", "padding"))
def _conv_transpose2d(xp, x, W, stride=1, padding=0):
    """out[n,o,i*s+a-p, j*s+b-p] += sum_c x[n,c,i,j] W[c,o,a,b]: the transposed convolution
    (PyTorch's conv_transpose2d, W as (C_in, C_out, kh, kw)); out is (H-1)s - 2p + kh high.

    With gfull = g zero-padded by p and its stride-s samples at each kernel offset (a, b),
    gx[n,c,i,j] = sum_{o,a,b} gfull[n,o,i*s+a,j*s+b] W[c,o,a,b] (a strided convolution) and
    gW[c,o,a,b] = sum_{n,i,j} x[n,c,i,j] gfull[n,o,i*s+a,j*s+b].
    """
    n, c, h, w = x.shape
    _, o, kh, kw = W.shape
    # every input pixel times every kernel tap at once: (N, H, W, O, kh*kw)
    taps = xp.matmul(xp.permute_dims(x, (0, 2, 3, 1)), xp.reshape(W, (c, o * kh * kw)))
    taps = xp.reshape(taps, (n, h, w, o, kh * kw))
    taps = xp.permute_dims(taps, (0, 3, 4, 1, 2))  # (N, O, kh*kw, H, W)
    full_h, full_w = (h - 1) * stride + kh, (w - 1) * stride + kw
    # a fresh array this op alone holds: each offset's taps are added in place at its stride-s
    # grid, kh*kw slice updates instead of a zero-filled copy per offset
    full = xp.zeros((n, o, full_h, full_w), dtype=x.dtype, device=xp_extra.device_of(x))
    for offset in range(kh * kw):
        a, b = divmod(offset, kw)
        grid = (
            ...,
            slice(a, a + (h - 1) * stride + 1, stride),
            slice(b, b + (w - 1) * stride + 1, stride),
        )
        full[grid] = full[grid] + taps[:, :, offset, ...]
    return full[:, :, padding : full_h - padding, padding : full_w - padding]


@_conv_transpose2d.vjp
def _conv_transpose2d_vjp(xp, g, out, x, W, stride=1, padding=0):
    n, c, h, w = x.shape
    _, o, kh, kw = W.shape
    full = _pad2d(xp, g, padding)
    samples = [
        xp.permute_dims(
            full[
                :, :, a : a + (h - 1) * stride + 1 : stride, b : b + (w - 1) * stride + 1 : stride
            ],
            (0, 2, 3, 1),
        )
        for a in range(kh)
        for b in range(kw)
    ]  # each (N, H, W, O), offset-major
    gcols = xp.reshape(xp.stack(samples, axis=-1), (n, h, w, o * kh * kw))
    matrix = xp.reshape(W, (c, o * kh * kw))
    gx = xp.permute_dims(xp.matmul(gcols, xp.matrix_transpose(matrix)), (0, 3, 1, 2))
    rows = xp.reshape(xp.permute_dims(x, (0, 2, 3, 1)), (-1, c))
    gW = xp.matmul(xp.matrix_transpose(rows), xp.reshape(gcols, (-1, o * kh * kw)))
    return gx, xp.reshape(gW, W.shape)


@op("upsample2d", 1, ("size",))
def _upsample2d(xp, x, size=2):
    """out[n,c,i,j] = x[n,c,i//size,j//size]: nearest-neighbour upsampling by `size`.

    dx[n,c,i,j] = sum of g over the size x size block that copies x[n,c,i,j].
    """
    n, c, h, w = x.shape
    blocks = xp.broadcast_to(xp.reshape(x, (n, c, h, 1, w, 1)), (n, c, h, size, w, size))
    return xp.reshape(blocks, (n, c, h * size, w * size))


@_upsample2d.vjp
def _upsample2d_vjp(xp, g, out, x, size=2):
    n, c, h, w = x.shape
    return (xp.sum(xp.reshape(g, (n, c, h, size, w, size)), axis=(3, 5)),)
