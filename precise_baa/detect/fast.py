"""The inference form of a DetectoRS detector: the same function, less work per image.

A trained DetectoRS model recomputes at every forward what only changes when its weights do,
and does some of its per-pixel work on more channels than it needs:

- **Weight standardisation** (mmcv's ``ConvAWS2d``, and ``SAConv2d`` built on it) normalises
  every convolution's weight per output channel on each call; here it is done once.
- **BatchNorm** in eval mode is an affine map per channel; where it directly follows a plain
  convolution (the ResNet stem, ``conv1``/``conv3`` of each bottleneck, the downsample
  branches) it is folded into that convolution's weight and bias.
- **RoIAlign** runs torchvision's kernel, which mmcv's ``RoIAlign`` offers itself
  (``use_torchvision``): the same average-pooled bilinear samples, about 3 x faster on CPU.
- **SAC's switch** is a 1 x 1 convolution to one channel of a 5 x 5 average (reflect-padded)
  of the input. Both are linear and the padding is per pixel, so the average is taken after
  the 1 x 1 convolution: over 1 channel instead of all of them. (Not with SAC's deformable
  offsets, which read the averaged input themselves.)

:func:`inference_copy` returns a copy with these changes that shares every tensor it does not
replace with the original (so the original keeps training and saving exactly as before, and
memory grows by the replaced convolution weights only). Outputs equal the original's within
float rounding (``tests/test_detect_fast.py`` compares them on phantoms).
"""

from __future__ import annotations

import copy
import itertools

import torch
import torch.nn.functional as F
from torch import nn


def inference_copy(model: nn.Module, *, channels_last: bool = False) -> nn.Module:
    """An eval-mode copy of ``model`` in its inference form (see the module docstring).

    ``channels_last``: the backbone and neck run on NHWC tensors (oneDNN's own layout, about
    a sixth faster on CPU); the neck's outputs go back to NCHW, because mmcv's RoIAlign reads
    its input as contiguous NCHW memory.
    """
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    fast = copy.deepcopy(model, memo)
    fast.eval()
    with torch.no_grad():
        _replace_convs(fast)
        _fold_batchnorms(fast)
        _torchvision_roi_align(fast)
        if channels_last:
            _channels_last(fast)
    return fast


def tensor_versions(model: nn.Module) -> int:
    """A number that changes whenever any parameter or buffer of ``model`` is written in place
    (loading weights, an optimiser step): when it changes, an inference copy is stale."""
    # inference tensors (made under torch.inference_mode) keep no version counter: skipped
    return sum(t._version for t in itertools.chain(model.parameters(), model.buffers())
               if not t.is_inference())


# ---------------------------------------------------------------------- weight standardisation
class FrozenSAC(nn.Module):
    """mmcv's ``SAConv2d`` (switchable atrous convolution) with its weights standardised once."""

    def __init__(self, sac: nn.Module):
        super().__init__()
        w = sac._get_weight(sac.weight).detach()
        self.register_buffer("weight_s", w.clone())
        self.register_buffer("weight_l", (w + sac.weight_diff).detach().clone())
        self.stride, self.padding = sac.stride, sac.padding
        self.dilation, self.groups = sac.dilation, sac.groups
        self.padding_l = tuple(3 * p for p in sac.padding)
        self.dilation_l = tuple(3 * d for d in sac.dilation)
        self.use_deform = bool(sac.use_deform)
        self.switch, self.pre_context, self.post_context = sac.switch, sac.pre_context, sac.post_context
        if self.use_deform:
            self.offset_s, self.offset_l = sac.offset_s, sac.offset_l

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + _context(self.pre_context, x)
        if self.use_deform:
            from mmcv.ops.deform_conv import deform_conv2d

            x = x.contiguous()  # mmcv's op takes NCHW memory only
            avg_x = F.avg_pool2d(F.pad(x, pad=(2, 2, 2, 2), mode="reflect"), kernel_size=5, stride=1)
            switch = self.switch(avg_x)
            out_s = deform_conv2d(x, self.offset_s(avg_x).contiguous(), self.weight_s, self.stride,
                                  self.padding, self.dilation, self.groups, 1)
            out_l = deform_conv2d(x, self.offset_l(avg_x).contiguous(), self.weight_l, self.stride,
                                  self.padding_l, self.dilation_l, self.groups, 1)
        else:
            # switch = conv1x1_stride(avg5(pad(x))) = avg5_stride(pad(conv1x1(x))) + bias
            s = F.conv2d(x, self.switch.weight)
            switch = F.avg_pool2d(F.pad(s, pad=(2, 2, 2, 2), mode="reflect"), kernel_size=5,
                                  stride=self.switch.stride)
            if self.switch.bias is not None:
                switch = switch + self.switch.bias.view(1, -1, 1, 1)
            out_s = F.conv2d(x, self.weight_s, None, self.stride, self.padding, self.dilation,
                             self.groups)
            out_l = F.conv2d(x, self.weight_l, None, self.stride, self.padding_l,
                             self.dilation_l, self.groups)
        out = out_l + switch * (out_s - out_l)
        return out + _context(self.post_context, out)


def _context(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(adaptive_avg_pool2d(x, 1))`` for a 1 x 1 ``conv``, as the matrix product it is
    (a convolution call on a 1 x 1 map costs more than the product)."""
    w = conv.weight.reshape(conv.out_channels, conv.in_channels)
    return F.linear(x.mean(dim=(2, 3)), w, conv.bias)[:, :, None, None]


def _plain_conv(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                    bias=bias is not None, padding_mode=conv.padding_mode,
                    device=weight.device, dtype=weight.dtype)
    out.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
    if bias is not None:
        out.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    return out


def _replace_convs(module: nn.Module) -> None:
    from mmcv.cnn import ConvAWS2d
    from mmcv.ops.saconv import SAConv2d

    for name, child in list(module.named_children()):
        if type(child) is SAConv2d:
            setattr(module, name, FrozenSAC(child))
        elif type(child) is ConvAWS2d:
            setattr(module, name, _plain_conv(child, child._get_weight(child.weight), child.bias))
        else:
            _replace_convs(child)


# ---------------------------------------------------------------------- RoIAlign
def _torchvision_roi_align(model: nn.Module) -> None:
    from mmcv.ops import RoIAlign

    for m in model.modules():
        if isinstance(m, RoIAlign) and m.pool_mode == "avg":
            m.use_torchvision = True  # a copied module: the original keeps mmcv's kernel


# ---------------------------------------------------------------------- memory layout
def _channels_last(model: nn.Module) -> None:
    backbone, neck = getattr(model, "backbone", None), getattr(model, "neck", None)
    if backbone is None or neck is None:
        return
    cl = torch.channels_last
    for m in itertools.chain(backbone.modules(), neck.modules()):
        # new tensors, never in place: the copy shares the tensors it did not replace
        if type(m) is nn.Conv2d:
            m.weight = nn.Parameter(m.weight.detach().contiguous(memory_format=cl), requires_grad=False)
        elif isinstance(m, FrozenSAC) and not m.use_deform:
            m.weight_s = m.weight_s.contiguous(memory_format=cl)
            m.weight_l = m.weight_l.contiguous(memory_format=cl)
    backbone.register_forward_pre_hook(
        lambda _m, args: (args[0].contiguous(memory_format=cl), *args[1:]))
    neck.register_forward_hook(
        lambda _m, _args, out: type(out)(o.contiguous() for o in out)
        if isinstance(out, (tuple, list)) else out.contiguous())


# ---------------------------------------------------------------------- BatchNorm folding
def _fold(conv: nn.Module, bn: nn.Module) -> nn.Conv2d | None:
    """``bn(conv(x))`` as one convolution, or None when ``conv`` is not a plain Conv2d."""
    if type(conv) is not nn.Conv2d or not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        return None
    if bn.training or bn.running_mean is None or bn.running_var is None:
        return None
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = -bn.running_mean * scale
    if bn.bias is not None:
        bias = bias + bn.bias
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return _plain_conv(conv, conv.weight * scale.view(-1, 1, 1, 1), bias)


def _fold_pair(module: nn.Module, conv_name: str, bn_name: str) -> None:
    conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
    if conv is None or bn is None:
        return
    fused = _fold(conv, bn)
    if fused is not None:
        setattr(module, conv_name, fused)
        setattr(module, bn_name, nn.Identity())


def _fold_batchnorms(model: nn.Module) -> None:
    """Fold each BatchNorm into the convolution whose output it directly normalises, in the
    modules whose forward is known to be ``norm(conv(x))`` (mmdet's ResNet stem and
    bottlenecks, and the conv + norm downsample branches); nothing else is touched."""
    from mmdet.models.backbones.resnet import BasicBlock, Bottleneck, ResNet

    for module in model.modules():
        if isinstance(module, ResNet) and not module.deep_stem:
            _fold_pair(module, "conv1", module.norm1_name)
        elif isinstance(module, Bottleneck) and not getattr(module, "with_plugins", False) \
                and not getattr(module, "with_dcn", False):
            _fold_pair(module, "conv1", module.norm1_name)
            _fold_pair(module, "conv2", module.norm2_name)
            _fold_pair(module, "conv3", module.norm3_name)
        elif isinstance(module, BasicBlock) and not getattr(module, "with_plugins", False):
            _fold_pair(module, "conv1", module.norm1_name)
            _fold_pair(module, "conv2", module.norm2_name)
        elif type(module) is nn.Sequential:
            names = list(module._modules)
            for a, b in zip(names, names[1:]):
                if type(module._modules[a]) is nn.Conv2d and isinstance(
                        module._modules[b], nn.modules.batchnorm._BatchNorm):
                    _fold_pair(module, a, b)
