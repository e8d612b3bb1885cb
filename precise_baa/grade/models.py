"""Grader networks: a shared CNN encodes each ROI crop, tokens meet in self-attention, one head per ROI.

:class:`GraderNet` is the one model shape both registered graders use; only the encoder differs:

- :func:`densenet_encoder`: a timm DenseNet (DenseNet121 in the precise-BAA paper), 1-channel
  stem (ImageNet weights, when asked for, are summed over RGB by timm).
- :func:`resnet_shuffle_encoder`: a timm ResNet with :class:`ShuffleAttention` after every
  block's last norm and dual (average + max) global pooling.

Tokens: encoder features -> linear + LayerNorm -> + ROI identity embedding + sex embedding.
:class:`RoiSelfAttention` is plain scaled dot-product attention with Q, K, V projections whose
softmax is computed explicitly so the ``[B, 13, 13]`` map (averaged over heads; rows sum to 1)
can be returned. ROIs without a box get a learned "missing" token and are masked out as keys,
so nothing attends to them.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import nn

from ..errors import RecipeError
from ..rois import NUM_ROIS, ROI_KEYS, stage_counts
from .recipes import DenseNetAttentionRecipe, GradeRecipe, ResNetShuffleRecipe


class GraderOutput(NamedTuple):
    logits: list[torch.Tensor]  # 13 tensors [B, stages of that ROI], ROI_KEYS order
    attention: torch.Tensor | None  # [B, 13, 13] (last layer, mean over heads) or None


# --------------------------------------------------------------------------------------------
# Encoders
class ShuffleAttention(nn.Module):
    """Shuffle attention (Zhang & Yang, "SA-Net", ICASSP 2021).

    Channels are split into ``groups``; each group's halves get channel attention (global
    average -> per-channel affine -> sigmoid) and spatial attention (GroupNorm -> affine ->
    sigmoid); a channel shuffle then mixes the groups. Adds ``4 * channels / (2 * groups)``
    parameters.
    """

    def __init__(self, channels: int, groups: int = 64, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if channels % (2 * groups):
            raise ValueError(f"ShuffleAttention: {channels} channels do not divide by 2 x {groups} groups")
        self.groups = groups
        c = channels // (2 * groups)
        self.c_weight = nn.Parameter(torch.zeros(1, c, 1, 1, **dd))
        self.c_bias = nn.Parameter(torch.ones(1, c, 1, 1, **dd))
        self.s_weight = nn.Parameter(torch.zeros(1, c, 1, 1, **dd))
        self.s_bias = nn.Parameter(torch.ones(1, c, 1, 1, **dd))
        self.norm = nn.GroupNorm(c, c, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.reshape(b * self.groups, c // self.groups, h, w)
        xc, xs = x.chunk(2, dim=1)
        xc = xc * torch.sigmoid(self.c_weight * xc.mean(dim=(2, 3), keepdim=True) + self.c_bias)
        xs = xs * torch.sigmoid(self.s_weight * self.norm(xs) + self.s_bias)
        out = torch.cat([xc, xs], dim=1).reshape(b, c, h, w)
        # channel shuffle with 2 groups
        return out.reshape(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)


def densenet_encoder(recipe: DenseNetAttentionRecipe) -> tuple[nn.Module, int]:
    """A 1-channel timm DenseNet returning pooled features; (module, feature width)."""
    import timm

    overrides = {}
    if recipe.growth_rate is not None:
        overrides["growth_rate"] = recipe.growth_rate
    if recipe.block_config is not None:
        overrides["block_config"] = tuple(recipe.block_config)
    try:
        net = timm.create_model(recipe.backbone, pretrained=recipe.pretrained, in_chans=1,
                                num_classes=0, global_pool="avg",
                                memory_efficient=recipe.memory_efficient, **overrides)
    except RuntimeError as e:  # unknown model name
        raise RecipeError(f"backbone {recipe.backbone!r}: {e}") from None
    return net, int(net.num_features)


def resnet_shuffle_encoder(recipe: ResNetShuffleRecipe) -> tuple[nn.Module, int]:
    """A 1-channel timm ResNet with shuffle attention in every block; (module, feature width)."""
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet

    block, layers, channels = recipe.arch()
    net = ResNet(
        block=BasicBlock if block == "basic" else Bottleneck, layers=tuple(layers),
        channels=tuple(channels), in_chans=1, num_classes=0,
        global_pool="catavgmax" if recipe.dual_pooling else "avg",
        block_args={"attn_layer": functools.partial(ShuffleAttention, groups=recipe.shuffle_groups)},
    )
    if recipe.pretrained:
        import timm

        stock = timm.create_model(recipe.backbone, pretrained=True, in_chans=1, num_classes=0)
        res = net.load_state_dict(stock.state_dict(), strict=False)
        foreign = [k for k in res.missing_keys if ".se." not in k] + list(res.unexpected_keys)
        if foreign:
            raise RecipeError(f"ImageNet {recipe.backbone} weights do not fit: {foreign[:4]}")
    return net, int(net.num_features * net.global_pool.feat_mult())


def build_encoder(recipe: GradeRecipe) -> tuple[nn.Module, int]:
    if isinstance(recipe, DenseNetAttentionRecipe):
        return densenet_encoder(recipe)
    if isinstance(recipe, ResNetShuffleRecipe):
        return resnet_shuffle_encoder(recipe)
    raise RecipeError(f"no grader encoder for recipe type {type(recipe).__name__}")


# --------------------------------------------------------------------------------------------
# Attention across ROIs
class RoiSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention that also returns its weights.

    ``forward(x [B, N, D], key_mask [B, N] bool | None) -> (out [B, N, D], weights [B, N, N])``;
    ``weights`` is softmax(Q K^T / sqrt(d)) averaged over heads, so each row sums to 1; keys
    with ``key_mask == False`` get weight 0.
    """

    def __init__(self, dim: int, heads: int = 1, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} not divisible by {heads} heads")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)).float() * self.scale  # [B, H, N, N]
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        weights = scores.softmax(dim=-1)
        out = (self.attn_drop(weights).to(v.dtype) @ v).transpose(1, 2).reshape(b, n, d)
        return self.proj(out), weights.mean(dim=1)


class AttentionBlock(nn.Module):
    """Pre-norm transformer block over the 13 ROI tokens."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = RoiSelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None):
        a, w = self.attn(self.norm1(x), key_mask)
        x = x + self.drop(a)
        return x + self.drop(self.mlp(self.norm2(x))), w


# --------------------------------------------------------------------------------------------
class GraderNet(nn.Module):
    """13 ROI crops + sex -> per-ROI stage logits (+ the ROI attention map).

    ``forward(crops, sex, present=None)``: ``crops`` float ``[B, 13, S, S]`` in [0, 1] (the
    model normalises), ``sex`` long ``[B]`` (0 = F, 1 = M), ``present`` bool ``[B, 13]``
    (False: no box; that crop is not encoded). Returns :class:`GraderOutput`.
    """

    def __init__(self, recipe: GradeRecipe):
        super().__init__()
        self.mean, self.std = float(recipe.mean), float(recipe.std)
        self.encoder, feat = build_encoder(recipe)
        d = recipe.embed_dim
        self.embed = nn.Sequential(nn.Linear(feat, d), nn.LayerNorm(d))
        self.roi_embed = nn.Parameter(torch.zeros(NUM_ROIS, d))
        self.missing_token = nn.Parameter(torch.zeros(d))
        self.sex_embed = nn.Embedding(2, d) if recipe.sex_embedding else None
        self.blocks = nn.ModuleList(
            AttentionBlock(d, recipe.attention_heads, recipe.dropout)
            for _ in range(recipe.attention_layers if recipe.roi_attention else 0)
        )
        self.norm = nn.LayerNorm(d)
        self.head_drop = nn.Dropout(recipe.dropout)
        self.num_stages = stage_counts(recipe.standard)
        self.heads = nn.ModuleList(nn.Linear(d, self.num_stages[k]) for k in ROI_KEYS)
        nn.init.trunc_normal_(self.roi_embed, std=0.02)
        nn.init.trunc_normal_(self.missing_token, std=0.02)
        if self.sex_embed is not None:
            nn.init.trunc_normal_(self.sex_embed.weight, std=0.02)

    def forward(self, crops: torch.Tensor, sex: torch.Tensor,
                present: torch.Tensor | None = None) -> GraderOutput:
        if crops.ndim == 5:
            crops = crops.squeeze(2)
        b, n, h, w = crops.shape
        if n != NUM_ROIS:
            raise ValueError(f"expected {NUM_ROIS} crops per radiograph, got {n}")
        if present is None:
            present = torch.ones(b, n, dtype=torch.bool, device=crops.device)
        flat = present.reshape(-1)
        x = crops.reshape(b * n, 1, h, w)[flat]
        x = (x - self.mean) / self.std
        feats = self.embed(self.encoder(x))
        tokens = self.missing_token.to(feats.dtype).expand(b * n, -1).clone()
        tokens[flat] = feats
        tokens = tokens.reshape(b, n, -1) + self.roi_embed.to(feats.dtype)
        if self.sex_embed is not None:
            tokens = tokens + self.sex_embed(sex.long()).to(feats.dtype)[:, None, :]
        attention = None
        key_mask = None if bool(present.all()) else present
        for block in self.blocks:
            tokens, attention = block(tokens, key_mask)
        tokens = self.head_drop(self.norm(tokens))
        logits = [head(tokens[:, i]) for i, head in enumerate(self.heads)]
        return GraderOutput(logits, attention)


def build_model(recipe: GradeRecipe) -> GraderNet:
    return GraderNet(recipe)
