"""ADM UNet (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis").

One implementation serves two public checkpoint families, with state-dict keys identical to
theirs:

* guided-diffusion / DPS (``ffhq_10m.pt``): a raw ``UNetModel`` state dict, built through
  :func:`create_adm_model` from DPS's ``create_model`` keyword arguments;
* latent-diffusion's unconditional ``openaimodel.UNetModel`` (``model.diffusion_model.*`` in the
  LDM checkpoints), which is the same network with the same keyword arguments.

The network predicts epsilon (and, with ``learn_sigma``, a variance interpolation value in the
second half of the output channels) from ``x_t`` and the *raw* DDPM timestep index (0..999).
Adapting it to diffinv's ``denoise(x, sigma)`` convention is done elsewhere
(``diffinv.diffusion``).

Key layout (what a checkpoint must contain)::

    time_embed.{0,2}                 Linear(mc, 4mc), SiLU, Linear(4mc, 4mc)
    input_blocks.{i}.{j}             i = 0: the stem conv; then ResBlock [+ AttentionBlock] per
                                     block, and one down-sampler per level but the last
    middle_block.{0,1,2}             ResBlock, AttentionBlock, ResBlock
    output_blocks.{i}.{j}            ResBlock [+ AttentionBlock] [+ up-sampler]
    out.{0,2}                        GroupNorm, SiLU, conv3x3
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _grad_checkpoint

# DPS / guided-diffusion: class-conditional models are ImageNet models.
NUM_CLASSES = 1000


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups and eps 1e-5, always evaluated in float32.

    Both guided-diffusion and latent-diffusion cast to float32 before normalising and cast the
    result back, so half-precision activations are normalised in full precision.
    """

    def __init__(self, channels: int):
        super().__init__(num_groups=32, num_channels=channels, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep embedding of the ADM UNet, ``[B] -> [B, dim]``.

    ``freqs_i = exp(-ln(max_period) * i / half)`` for ``i < half = dim // 2`` (note: divided by
    ``half``, not ``half - 1``), and the embedding is ``[cos(t * freqs), sin(t * freqs)]`` with
    the cosines first (Vaswani et al. 2017, Sec. 3.5, in the ordering of guided-diffusion).
    An odd ``dim`` gets one zero column appended.
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise a layer (output convolutions of residual branches, as in the reference)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class TimestepBlock(nn.Module):
    """Marker base class: a block whose ``forward`` takes ``(x, emb)``."""


class EmbedSequential(nn.Sequential):
    """``nn.Sequential`` that hands the timestep embedding to the blocks that take one."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Downsample(nn.Module):
    """Factor-2 down-sampler: conv3x3 with stride 2 and symmetric padding 1 (key ``op``), or 2x2
    average pooling when ``use_conv`` is False."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            if out_channels != channels:
                raise ValueError(f"average-pool down-sampling cannot change channels {channels} -> {out_channels}")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Factor-2 nearest-neighbour up-sampler, optionally followed by a conv3x3 (key ``conv``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding.

    ``h = in_layers(x)`` (GroupNorm, SiLU, conv3x3); then either the embedding is added
    (``h + emb_out``) or, with ``use_scale_shift_norm`` (the "AdaGN" of Dhariwal & Nichol,
    Sec. 3), ``h = norm(h) * (1 + scale) + shift`` with ``scale`` the *first* half of
    ``emb_out``; then SiLU, dropout and a zero-initialised conv3x3 (``out_layers.3``).
    An up/down block resamples both branches between the in-layers' SiLU and their conv.
    """

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_conv: bool = False, use_scale_shift_norm: bool = False, use_checkpoint: bool = False,
                 up: bool = False, down: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        # Parameter-free resampling of an up/down block (nearest x2 or 2x2 average pooling).
        self.resample = "up" if up else "down" if down else None
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = nn.Conv2d(channels, out_channels, 3, padding=1)
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return _grad_checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.resample is not None:
            h = self.in_layers[1](self.in_layers[0](x))
            h, x = self._resample(h), self._resample(x)
            h = self.in_layers[2](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            for layer in self.out_layers[1:]:
                h = layer(h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the pixels, with a residual connection.

    ``qkv`` is a 1x1 ``Conv1d`` (weight ``[3C, C, 1]``) on the flattened ``[B, C, H*W]`` features.
    Channel layout of its output, with ``ch = C // heads``:

    * legacy order (``use_new_attention_order=False``, every public checkpoint): heads outermost,
      each head holding ``[q(ch) | k(ch) | v(ch)]``;
    * new order: ``[q(all heads) | k(all heads) | v(all heads)]``.

    Attention is ``softmax(q^T k / sqrt(ch)) v`` (the reference scales q and k by ``ch**-1/4``
    each, the same product), followed by a zero-initialised ``proj_out`` Conv1d.
    """

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_checkpoint: bool = False, use_new_attention_order: bool = False):
        super().__init__()
        if num_head_channels == -1:
            heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"attention channels {channels} are not divisible by "
                                 f"num_head_channels={num_head_channels}")
            heads = channels // num_head_channels
        if heads < 1 or channels % heads:
            raise ValueError(f"invalid number of attention heads {heads} for {channels} channels; "
                             "set num_heads or num_head_channels so that they divide the channels")
        self.num_heads = heads
        self.use_new_attention_order = use_new_attention_order
        self.use_checkpoint = use_checkpoint
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return _grad_checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))                        # [B, 3C, T]
        heads, ch, t = self.num_heads, c // self.num_heads, x.shape[-1]
        if self.use_new_attention_order:
            q, k, v = (z.reshape(b * heads, ch, t) for z in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(b * heads, 3 * ch, t).split(ch, dim=1)
        # scaled_dot_product_attention wants [batch, tokens, features]; default scale 1/sqrt(ch).
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        a = a.transpose(1, 2).reshape(b, c, t)
        return (x + self.proj_out(a)).reshape(b, c, *spatial)


class UNetModel(nn.Module):
    """The ADM UNet, keyword-compatible with guided-diffusion's and latent-diffusion's ``UNetModel``.

    ``attention_resolutions`` are *downsampling factors* (attention runs where the feature map is
    ``image_size / factor`` pixels wide). ``num_head_channels != -1`` fixes the channels per head
    and overrides ``num_heads`` (and ``num_heads_upsample``). ``legacy`` is latent-diffusion's
    flag: with ``legacy=False`` and ``num_head_channels=-1`` its decoder attention uses
    ``num_heads`` instead of ``num_heads_upsample``.

    Only the unconditional / class-conditional 2-D model in float32 is implemented; the
    cross-attention options of latent-diffusion (``use_spatial_transformer``, ``context_dim``) and
    its codebook head (``n_embed``) raise a ``ValueError``.
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Iterable[int], dropout: float = 0.0,
                 channel_mult: Sequence[float] = (1, 2, 4, 8), conv_resample: bool = True, dims: int = 2,
                 num_classes: int | None = None, use_checkpoint: bool = False, use_fp16: bool = False,
                 num_heads: int = 1, num_head_channels: int = -1, num_heads_upsample: int = -1,
                 use_scale_shift_norm: bool = False, resblock_updown: bool = False,
                 use_new_attention_order: bool = False, legacy: bool = True,
                 use_spatial_transformer: bool = False, transformer_depth: int = 1,
                 context_dim: int | None = None, n_embed: int | None = None):
        super().__init__()
        if dims != 2:
            raise ValueError(f"dims={dims}: only 2-D UNets are implemented (dims=2)")
        if use_fp16:
            raise ValueError("use_fp16=True is not supported; keep float32 weights and use torch.autocast instead")
        if use_spatial_transformer or context_dim is not None or n_embed is not None:
            raise ValueError("cross-attention (use_spatial_transformer/context_dim) and n_embed heads of latent-"
                             "diffusion are not implemented; diffinv uses the unconditional LDM UNet only")
        if num_heads == -1 and num_head_channels == -1:
            raise ValueError("set num_heads or num_head_channels (both are -1)")
        if num_heads_upsample == -1 or (not legacy and num_head_channels == -1):
            num_heads_upsample = num_heads

        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_classes = num_classes
        attention_resolutions = set(int(a) for a in attention_resolutions)
        emb_ch = 4 * model_channels

        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_ch)

        def res(cin, cout, **kw):
            return ResBlock(cin, emb_ch, dropout, out_channels=cout, use_scale_shift_norm=use_scale_shift_norm,
                            use_checkpoint=use_checkpoint, **kw)

        def attn(c, heads):
            return AttentionBlock(c, num_heads=heads, num_head_channels=num_head_channels,
                                  use_checkpoint=use_checkpoint, use_new_attention_order=use_new_attention_order)

        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_chans, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample)
                self.input_blocks.append(EmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = EmbedSequential(res(ch, ch), attn(ch, num_heads), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(attn(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), _zero(nn.Conv2d(ch, out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | float, y: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, C, H, W]``, ``timesteps`` raw DDPM indices (``[B]`` or a scalar), ``y`` class labels."""
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("pass class labels y exactly when the model is class-conditional "
                             f"(num_classes={self.num_classes}, y given: {y is not None})")
        t = torch.as_tensor(timesteps, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        if y is not None:
            emb = emb + self.label_emb(y)
        skips, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


_DEFAULT_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}


def create_adm_model(image_size: int, num_channels: int, num_res_blocks: int, channel_mult: str | Sequence = "",
                     learn_sigma: bool = False, class_cond: bool = False, use_checkpoint: bool = False,
                     attention_resolutions: str | int | Sequence[int] = "16", num_heads: int = 1,
                     num_head_channels: int = -1, num_heads_upsample: int = -1, use_scale_shift_norm: bool = False,
                     dropout: float = 0.0, resblock_updown: bool = False, use_fp16: bool = False,
                     use_new_attention_order: bool = False, model_path: str = "") -> UNetModel:
    """Build a :class:`UNetModel` from the ``create_model`` keyword arguments of DPS / guided-diffusion.

    * ``channel_mult=""`` picks the guided-diffusion default for ``image_size`` (256 ->
      ``(1,1,2,2,4,4)``); otherwise a comma-separated string or a sequence.
    * ``attention_resolutions`` are *resolutions* here ("16" or "32,16,8"), converted to
      downsampling factors ``image_size // res``.
    * ``learn_sigma`` doubles the output channels (epsilon, then the variance value).
    * ``model_path``, if given, is loaded strictly with :func:`diffinv.checkpoints.load_state_dict_into`
      (unlike DPS, a failed load raises instead of keeping random weights).
    """
    if isinstance(channel_mult, str):
        if channel_mult == "":
            if image_size not in _DEFAULT_CHANNEL_MULT:
                raise ValueError(f"no default channel_mult for image_size={image_size}; "
                                 f"pass channel_mult explicitly (defaults exist for {sorted(_DEFAULT_CHANNEL_MULT)})")
            mult = _DEFAULT_CHANNEL_MULT[image_size]
        else:
            mult = tuple(int(m) for m in channel_mult.split(","))
    else:
        mult = tuple(channel_mult)
    if isinstance(attention_resolutions, str):
        resolutions = [int(r) for r in attention_resolutions.split(",") if r.strip()]
    elif isinstance(attention_resolutions, int):
        resolutions = [attention_resolutions]
    else:
        resolutions = [int(r) for r in attention_resolutions]
    model = UNetModel(
        image_size=image_size, in_channels=3, model_channels=num_channels, out_channels=6 if learn_sigma else 3,
        num_res_blocks=num_res_blocks, attention_resolutions=tuple(image_size // r for r in resolutions),
        dropout=dropout, channel_mult=mult, num_classes=NUM_CLASSES if class_cond else None,
        use_checkpoint=use_checkpoint, use_fp16=use_fp16, num_heads=num_heads, num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample, use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown, use_new_attention_order=use_new_attention_order)
    if model_path:
        from diffinv.checkpoints import load_state_dict_into  # local import: checkpoints knows no networks

        load_state_dict_into(model, model_path, expected_config={"image_size": image_size, "num_channels": num_channels,
                                                                 "num_res_blocks": num_res_blocks, "channel_mult": mult,
                                                                 "learn_sigma": learn_sigma})
    return model
