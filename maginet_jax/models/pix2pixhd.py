"""Pix2PixHD (Wang et al. 2018) in Flax NNX, NHWC, behaving like NVIDIA's pix2pixHD `models/networks.py`.

Same constructors, options and semantics: reflect padding, instance norm without affine parameters or running
statistics, ResNet blocks without an activation after the add, k3/s2/p1/output_padding-1 transposed convs,
the LocalEnhancer's AvgPool(3, 2, 1, count_include_pad=False) input pyramid and additive skip, the 4×4/pad-2
NLayerDiscriminator (and its quirk: with getIntermFeat, use_sigmoid is silently ignored), and the multiscale
discriminator whose full-resolution input goes to the last-built scale. `import_torch_state_dict` loads the
original checkpoints by their key names.

One addition: `upsample="resize"` replaces each transposed conv by a ×2 resize and a 3×3 conv (`ResizeConv`), the
standard cure for checkerboard artefacts; in the PyTorch layout (`torch_layers`, benchmarks/torch_twin) that level
is [Upsample, ReflectionPad2d(1), Conv2d, norm, ReLU]. The default, "transpose", is the original.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maginet_jax.errors import UserError
from maginet_jax.models.layers import Conv, SubpixelConvTranspose, apply, block, resize_to
from maginet_jax.torch_interop import to_numpy

_INIT = nnx.initializers.normal(0.02)  # the original's weights_init for convs


def _check_norm(norm: str) -> None:
    if norm != "instance":
        raise ValueError(f"norm={norm!r}: only 'instance' (pix2pixHD's default, no running statistics) is "
                         f"supported")


def instance_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """torch InstanceNorm2d(affine=False): per-example, per-channel over H and W, biased variance; computed in
    float32, returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=(1, 2), keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def reflect_pad(x: jax.Array, p: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")


def _real_texels(n: int) -> np.ndarray:
    """How many of the 3 taps of each output position of AvgPool(3, 2, 1) along a side of n land inside it."""
    starts = np.arange(0, n, 2) - 1  # ceil(n / 2) windows, the first starting in the padding
    return np.minimum(starts + 3, n) - np.maximum(starts, 0)


def avg_pool_3s2(x: jax.Array) -> jax.Array:
    """AvgPool2d(3, stride=2, padding=1, count_include_pad=False): borders average only real texels. The
    counts are a numpy constant (XLA took seconds to constant-fold them from a reduce_window at 1024²)."""
    window, strides, pad = (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
    count = np.outer(_real_texels(x.shape[1]), _real_texels(x.shape[2]))[None, :, :, None]
    return total / count.astype(x.dtype)


def _conv_norm_relu(conv, x):
    return jax.nn.relu(instance_norm(conv(x)))


def _head(conv, x):
    """The 7×7 input layer of a generator or enhancer level."""
    return jax.nn.relu(instance_norm(conv(reflect_pad(x, 3))))


def _conv(cin, cout, k, stride=1, pad=0, *, dtype, rngs):
    return Conv(cin, cout, (k, k), strides=stride, padding=((pad, pad), (pad, pad)), kernel_init=_INIT,
                dtype=dtype, rngs=rngs)


UPSAMPLES = ("transpose", "resize")
RESIZE_METHODS = ("nearest", "bilinear")


class ResizeConv(Conv):
    """×2 resize (nearest or bilinear), reflect-pad 1, 3×3 conv: an upsampling whose every output pixel sees the
    same number of kernel taps, so it cannot print the transposed convolution's checkerboard (Odena et al. 2016).
    Bilinear is torch's `Upsample(scale_factor=2, align_corners=False)` (half-pixel centres)."""

    def __init__(self, cin: int, cout: int, method: str, *, dtype, rngs: nnx.Rngs):
        super().__init__(cin, cout, (3, 3), padding="VALID", kernel_init=_INIT, dtype=dtype, rngs=rngs)
        self.method = method

    def __call__(self, x):
        if self.method == "nearest":
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        else:
            x = resize_to(x, 2 * x.shape[1], 2 * x.shape[2])
        return super().__call__(reflect_pad(x, 1))


def _upsample(cin, cout, upsample: str, resize_method: str, *, dtype, rngs):
    if upsample == "resize":
        return ResizeConv(cin, cout, resize_method, dtype=dtype, rngs=rngs)
    return SubpixelConvTranspose(cin, cout, kernel_init=_INIT, dtype=dtype, rngs=rngs)


def _up_layout(upsample: str) -> tuple[int, int]:
    """(Sequential entries per upsampling level, index of its conv among them) in the PyTorch layout: the original
    [ConvTranspose, norm, ReLU], or [Upsample, ReflectionPad, Conv, norm, ReLU] for resize."""
    return (5, 2) if upsample == "resize" else (3, 0)


class ResnetBlock(nnx.Module):
    """x + [reflect-pad 1, conv3, IN, ReLU, reflect-pad 1, conv3, IN](x)."""

    def __init__(self, dim: int, norm: str = "instance", *, dtype=jnp.float32, rngs: nnx.Rngs):
        _check_norm(norm)
        self.conv1 = _conv(dim, dim, 3, dtype=dtype, rngs=rngs)
        self.conv2 = _conv(dim, dim, 3, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(instance_norm(self.conv1(reflect_pad(x, 1))))
        return x + instance_norm(self.conv2(reflect_pad(h, 1)))

    def torch_layers(self, prefix: str = "") -> dict:
        """{original key prefix: layer}, for `import_torch_state_dict`."""
        return {f"{prefix}conv_block.1": self.conv1, f"{prefix}conv_block.5": self.conv2}


class GlobalGenerator(nnx.Module):
    """pix2pixHD's global generator: 7×7 head, strided downsampling, ResNet blocks, transposed upsampling, tanh."""

    def __init__(self, input_nc: int, output_nc: int, ngf: int = 64, n_downsampling: int = 3, n_blocks: int = 9,
                 norm: str = "instance", *, upsample: str = "transpose", resize_method: str = "nearest",
                 dtype=jnp.float32, remat: str = "none", rngs: nnx.Rngs, _with_tail: bool = True):
        _check_norm(norm)
        kw = dict(dtype=dtype, rngs=rngs)
        self.n_downsampling, self.n_blocks, self.remat, self.upsample = n_downsampling, n_blocks, remat, upsample
        self.head = _conv(input_nc, ngf, 7, **kw)
        self.down = nnx.List([_conv(ngf * 2**i, ngf * 2 ** (i + 1), 3, 2, 1, **kw) for i in range(n_downsampling)])
        self.blocks = nnx.List([ResnetBlock(ngf * 2**n_downsampling, **kw) for _ in range(n_blocks)])
        self.up = nnx.List([_upsample(ngf * 2 ** (n_downsampling - i), ngf * 2 ** (n_downsampling - i) // 2,
                                      upsample, resize_method, **kw) for i in range(n_downsampling)])
        self.tail = _conv(ngf, output_nc, 7, **kw) if _with_tail else None

    def features(self, x):
        """Everything before the final reflect-pad, 7×7 conv and tanh (what LocalEnhancer keeps)."""
        x = block(_head, self.head, x, self.remat)
        for conv in self.down:
            x = block(_conv_norm_relu, conv, x, self.remat)
        for resnet in self.blocks:
            x = block(apply, resnet, x, self.remat)
        for conv in self.up:
            x = block(_conv_norm_relu, conv, x, self.remat)
        return x

    def __call__(self, x):
        return jnp.tanh(self.tail(reflect_pad(self.features(x), 3)).astype(jnp.float32))

    def torch_layers(self, prefix: str = "model.") -> dict:
        """{original key prefix: layer}, for `import_torch_state_dict`."""
        n, layers = self.n_downsampling, {f"{prefix}1": self.head}
        layers.update({f"{prefix}{4 + 3 * i}": conv for i, conv in enumerate(self.down)})
        first_block = 4 + 3 * n
        for j, resnet in enumerate(self.blocks):
            layers.update(resnet.torch_layers(f"{prefix}{first_block + j}."))
        first_up, (step, at) = first_block + self.n_blocks, _up_layout(self.upsample)
        layers.update({f"{prefix}{first_up + step * i + at}": conv for i, conv in enumerate(self.up)})
        if self.tail is not None:
            layers[f"{prefix}{first_up + step * n + 1}"] = self.tail
        return layers


class LocalEnhancer(nnx.Module):
    """Global generator at 1/2^N resolution, refined by N local enhancer levels (additive skip per level)."""

    def __init__(self, input_nc: int, output_nc: int, ngf: int = 32, n_downsample_global: int = 3,
                 n_blocks_global: int = 9, n_local_enhancers: int = 1, n_blocks_local: int = 3,
                 norm: str = "instance", *, upsample: str = "transpose", resize_method: str = "nearest",
                 dtype=jnp.float32, remat: str = "none", rngs: nnx.Rngs):
        _check_norm(norm)
        kw = dict(dtype=dtype, rngs=rngs)
        self.n_local_enhancers, self.n_blocks_local, self.remat = n_local_enhancers, n_blocks_local, remat
        self.upsample = upsample
        self.global_net = GlobalGenerator(input_nc, output_nc, ngf * 2**n_local_enhancers, n_downsample_global,
                                          n_blocks_global, upsample=upsample, resize_method=resize_method,
                                          _with_tail=False, remat=remat, **kw)
        widths = [ngf * 2 ** (n_local_enhancers - n) for n in range(1, n_local_enhancers + 1)]
        self.down_head = nnx.List([_conv(input_nc, w, 7, **kw) for w in widths])
        self.down_conv = nnx.List([_conv(w, 2 * w, 3, 2, 1, **kw) for w in widths])
        self.blocks = nnx.List([nnx.List([ResnetBlock(2 * w, **kw) for _ in range(n_blocks_local)]) for w in widths])
        self.up = nnx.List([_upsample(2 * w, w, upsample, resize_method, **kw) for w in widths])
        self.tail = _conv(ngf, output_nc, 7, **kw)

    def __call__(self, x):
        pyramid = [x]
        for _ in range(self.n_local_enhancers):
            pyramid.append(avg_pool_3s2(pyramid[-1]))
        out = self.global_net.features(pyramid[-1])
        for n in range(self.n_local_enhancers):
            h = block(_head, self.down_head[n], pyramid[self.n_local_enhancers - 1 - n], self.remat)
            h = block(_conv_norm_relu, self.down_conv[n], h, self.remat) + out
            for resnet in self.blocks[n]:
                h = block(apply, resnet, h, self.remat)
            out = block(_conv_norm_relu, self.up[n], h, self.remat)
        return jnp.tanh(self.tail(reflect_pad(out, 3)).astype(jnp.float32))

    def torch_layers(self) -> dict:
        """{original key prefix: layer}, for `import_torch_state_dict`."""
        layers = self.global_net.torch_layers("model.")
        nb, (step, at) = self.n_blocks_local, _up_layout(self.upsample)
        for n in range(self.n_local_enhancers):
            level = n + 1
            layers[f"model{level}_1.1"] = self.down_head[n]
            layers[f"model{level}_1.4"] = self.down_conv[n]
            for j, resnet in enumerate(self.blocks[n]):
                layers.update(resnet.torch_layers(f"model{level}_2.{j}."))
            layers[f"model{level}_2.{nb + at}"] = self.up[n]
        layers[f"model{self.n_local_enhancers}_2.{nb + step + 1}"] = self.tail
        return layers


def _conv_lrelu(conv, x):
    return jax.nn.leaky_relu(conv(x), 0.2)


def _conv_norm_lrelu(conv, x):
    return jax.nn.leaky_relu(instance_norm(conv(x)), 0.2)


def zero_pad(x: jax.Array, p: int) -> jax.Array:
    """`p` zeros on each side of an NHWC batch's H and W (a conv's own padding, as a separate op)."""
    return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))


class NLayerDiscriminator(nnx.Module):
    """PatchGAN: 4×4 convs with padding 2 (s2 maps n → n/2+1, s1 maps n → n+1), LeakyReLU 0.2.

    The padding is a pad before a VALID convolution, not the convolution's own: the same function, but XLA runs the
    kernel gradient of a stride-1 4×4 convolution padded by 2 as a forward convolution over an image-sized window,
    which on XLA:CPU took 615 ms against 31 (256 → 512 channels at 16², float32; `python benchmarks/conv_forms.py
    --cases=disc --scale=8 --dtype=float32`). On an H100 that gradient took 3 ms a layer in the passes profile; the
    VALID form is untimed there.
    """

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3, norm: str = "instance",
                 use_sigmoid: bool = False, getIntermFeat: bool = False, *, dtype=jnp.float32,
                 remat: str = "none", rngs: nnx.Rngs):
        _check_norm(norm)
        widths = [input_nc] + [min(ndf * 2**i, 512) for i in range(n_layers + 1)] + [1]
        strides = [2] * n_layers + [1, 1]
        self.convs = nnx.List([_conv(widths[i], widths[i + 1], 4, strides[i], dtype=dtype, rngs=rngs)
                               for i in range(n_layers + 2)])
        self.n_layers, self.use_sigmoid, self.getIntermFeat = n_layers, use_sigmoid, getIntermFeat
        self.remat = remat

    def layer_outputs(self, x) -> list[jax.Array]:
        """The output of every layer group (what getIntermFeat returns), in float32 (for the losses)."""
        outs = []
        for i, conv in enumerate(self.convs):
            layer = _conv_lrelu if i == 0 else _conv_norm_lrelu if i <= self.n_layers else apply
            x = block(layer, conv, zero_pad(x, 2), self.remat)
            outs.append(x.astype(jnp.float32))
        return outs

    def __call__(self, x):
        outs = self.layer_outputs(x)
        if self.getIntermFeat:
            return outs  # the original never applies the sigmoid in this mode
        return jax.nn.sigmoid(outs[-1]) if self.use_sigmoid else outs[-1]

    def torch_layers(self, prefix: str = "") -> dict:
        """{original key prefix: layer}, for `import_torch_state_dict`."""
        if self.getIntermFeat:
            return {f"{prefix}model{n}.0": conv for n, conv in enumerate(self.convs)}
        flat = [0] + [2 + 3 * (n - 1) for n in range(1, self.n_layers + 2)]  # conv indices in the flat Sequential
        return {f"{prefix}model.{i}": conv for i, conv in zip(flat, self.convs)}


class MultiscaleDiscriminator(nnx.Module):
    """num_D PatchGANs on an AvgPool pyramid; returns [per scale, full resolution first][per layer]."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3, norm: str = "instance",
                 use_sigmoid: bool = False, num_D: int = 3, getIntermFeat: bool = False, *, dtype=jnp.float32,
                 remat: str = "none", rngs: nnx.Rngs):
        self.scales = nnx.List([NLayerDiscriminator(input_nc, ndf, n_layers, norm, use_sigmoid, getIntermFeat,
                                                    dtype=dtype, remat=remat, rngs=rngs) for _ in range(num_D)])
        self.num_D, self.getIntermFeat = num_D, getIntermFeat

    def __call__(self, x) -> list[list[jax.Array]]:
        result = []
        for i in range(self.num_D):
            out = self.scales[self.num_D - 1 - i](x)  # as in the original: full resolution → last-built scale
            result.append(out if self.getIntermFeat else [out])
            if i != self.num_D - 1:
                x = avg_pool_3s2(x)
        return result

    def torch_layers(self) -> dict:
        """{original key prefix: layer}, for `import_torch_state_dict`."""
        layers = {}
        for i, d in enumerate(self.scales):
            if self.getIntermFeat:
                layers.update({f"scale{i}_layer{n}.0": conv for n, conv in enumerate(d.convs)})
            else:
                layers.update({k.replace("model.", f"layer{i}.", 1): v for k, v in d.torch_layers().items()})
        return layers


def import_torch_state_dict(module: nnx.Module, state_dict) -> None:
    """Fills `module` (any model of this file, concrete or from `nnx.eval_shape`) in place from a PyTorch state
    dict with the original key names.

    Torch OIHW conv weights become HWIO, ConvTranspose2d's (in, out, kh, kw) becomes (kh, kw, out, in) for the
    transpose_kernel convolution. Missing keys, unexpected keys and mismatched shapes are all reported in one
    UserError, and nothing is changed unless everything fits.
    """
    layers = module.torch_layers()
    expected = {f"{p}.{n}" for p in layers for n in ("weight", "bias")}
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    updates, mismatched = [], []
    for prefix, layer in layers.items():
        for name, var in ((f"{prefix}.weight", layer.kernel), (f"{prefix}.bias", layer.bias)):
            if name not in state_dict:
                continue
            value = to_numpy(state_dict[name])
            ours = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
            if ours.shape != var.shape:
                want = tuple(var.shape[i] for i in (3, 2, 0, 1)) if len(var.shape) == 4 else tuple(var.shape)
                mismatched.append(f"{name}: {tuple(value.shape)}, expected {want}")
            else:
                updates.append((var, ours))
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if mismatched:
        problems.append(f"mismatched shapes [{'; '.join(mismatched)}]")
    if problems:
        raise UserError(f"state dict does not fit {type(module).__name__}: " + "; ".join(problems))
    for var, value in updates:
        var.set_value(jnp.asarray(value, var.dtype))  # also fills a module built abstractly (nnx.eval_shape)


GENERATORS = ("global", "local")


def build_generator(model_config, input_nc: int, output_nc: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """pix2pixHD's `define_G` from `config.model` (netG, ngf, n_downsample_global, ...; configs/passes.py)."""
    c = model_config
    # Runs saved before `upsample` existed used transposed convs.
    kw = dict(upsample=c.get("upsample", "transpose"), resize_method=c.get("resize_method", "nearest"),
              dtype=jnp.dtype(c.dtype), remat=c.get("remat", "none"), rngs=rngs)
    if c.netG == "global":
        return GlobalGenerator(input_nc, output_nc, c.ngf, c.n_downsample_global, c.n_blocks_global, **kw)
    if c.netG == "local":
        return LocalEnhancer(input_nc, output_nc, c.ngf, c.n_downsample_global, c.n_blocks_global,
                             c.n_local_enhancers, c.n_blocks_local, **kw)
    raise ValueError(f"unknown netG {c.netG!r}; expected one of {GENERATORS}")


def build_discriminator(model_config, input_nc: int, *, rngs: nnx.Rngs) -> MultiscaleDiscriminator:
    """pix2pixHD's `define_D` from `config.model` (ndf, n_layers_D, num_D, getIntermFeat)."""
    c = model_config
    return MultiscaleDiscriminator(input_nc, c.ndf, c.n_layers_D, use_sigmoid=False, num_D=c.num_D,
                                   getIntermFeat=c.getIntermFeat, dtype=jnp.dtype(c.dtype),
                                   remat=c.get("remat", "none"), rngs=rngs)


def generator_multiple(model_config) -> int:
    """Image sides must be multiples of this: every stride-2 level must halve evenly and upsample back."""
    c = model_config
    return 2 ** (c.n_downsample_global + (c.n_local_enhancers if c.netG == "local" else 0))
