"""Backbones and heads for dcm-ref: the networks that produce the features v,
and train.py's classifier heads (FC, DFC, KAN, DKAN) by name (make_head), with Net = both.

DCM (Zhang et al., arXiv 2508.09697) only touches the classifier head, so the
backbones here are ordinary ``nn.Module``s that map images to features
``v: (B, d)``; the DCM heads are layers.py's modules (DCMLinear, DKANLinear), the
same code as the drop-in, over dcm_ref.py's and kan.py's functions. Protocols follow docs/design.md §7 (APL/ANL CIFAR-10 8-layer CNN,
CIFAR-style ResNets; the ImageNet ResNet-50 for Clothing1M/WebVision, with
load_pretrained reading torchvision-layout weights from a user file).

    net = make_backbone("cnn8", in_shape=(3, 32, 32))
    v = net(torch.randn(4, 3, 32, 32))         # (4, 256)
    net.feature_dim, net.last_layer            # 256, the layer Fig. 3 probes
"""

import torch
from torch import nn
import torch.nn.functional as F

import layers

BACKBONES = ("mlp", "cnn8", "preact-resnet18", "resnet34", "resnet50")


def _alias(module, name, layer):
    """module.<name> = layer without registering layer a second time: it is a submodule under
    its own name already, so state_dict keeps one key per tensor (torchvision's exact key
    layout for --pretrained, no duplicate tensor in checkpoints). `.last_layer` is the
    layer whose parameters the Fig. 3 gradient-error probe reads."""
    object.__setattr__(module, name, layer)


class MLP(nn.Module):
    """Two hidden layers (Linear+BN+ReLU), x: (B, C, H, W) -> v: (B, 256)."""

    def __init__(self, in_shape, width=256):
        super().__init__()
        d_in = in_shape[0] * in_shape[1] * in_shape[2]
        self.fc1, self.bn1 = nn.Linear(d_in, width), nn.BatchNorm1d(width)
        self.fc2, self.bn2 = nn.Linear(width, width), nn.BatchNorm1d(width)
        self.feature_dim = width
        _alias(self, "last_layer", self.fc2)

    def forward(self, x):
        h = F.relu(self.bn1(self.fc1(x.flatten(1))))
        return F.relu(self.bn2(self.fc2(h)))


def _conv_bn(c_in, c_out):
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class CNN8(nn.Module):
    """The 8-layer CNN of APL/ANL (docs/design.md §7): 64,64,pool,128,128,pool,196,196,pool,
    FC -> 256 + BN + ReLU. The FC input size follows the input (3136 on 32x32).
    x: (B, C, H, W) -> v: (B, 256)."""

    def __init__(self, in_shape, width=256):
        super().__init__()
        c, h, w = in_shape
        convs, c_prev = [], c
        for c_out, pool in ((64, False), (64, True), (128, False), (128, True), (196, False), (196, True)):
            convs += _conv_bn(c_prev, c_out)
            if pool and min(h, w) >= 2:  # tiny inputs (8x8 digits) stop pooling at 1x1
                convs.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c_prev = c_out
        self.features = nn.Sequential(*convs)
        self.fc, self.bn = nn.Linear(196 * h * w, width), nn.BatchNorm1d(width)
        self.feature_dim = width
        _alias(self, "last_layer", self.fc)

    def forward(self, x):
        return F.relu(self.bn(self.fc(self.features(x).flatten(1))))


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016, identity mappings)."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class BasicBlock(nn.Module):
    """Post-activation basic block of the original ResNet."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (3x3 stem, no max-pool, stages 64-128-256-512).
    x: (B, C, H, W) -> v: (B, 512). ``last_layer`` is the last conv of the net."""

    def __init__(self, in_shape, block, depths, preact):
        super().__init__()
        self.preact = preact
        self.stem = nn.Conv2d(in_shape[0], 64, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(64) if not preact else nn.Identity()
        stages, c_prev = [], 64
        for i, (c_out, n) in enumerate(zip((64, 128, 256, 512), depths)):
            for j in range(n):
                stages.append(block(c_prev, c_out, 2 if (i > 0 and j == 0) else 1))
                c_prev = c_out
        self.stages = nn.Sequential(*stages)
        self.final_bn = nn.BatchNorm2d(512) if preact else nn.Identity()
        self.feature_dim = 512
        _alias(self, "last_layer", stages[-1].conv2)

    def forward(self, x):
        out = self.stem(x)
        out = out if self.preact else F.relu(self.stem_bn(out))
        out = self.stages(out)
        if self.preact:
            out = F.relu(self.final_bn(out))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck (1x1, 3x3 with the stride, 1x1 to 4x width), torchvision's
    attribute names so an ImageNet state dict loads as is."""

    def __init__(self, c_in, width, stride):
        super().__init__()
        c_out = 4 * width
        self.conv1, self.bn1 = nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(self.bn3(self.conv3(out)) + skip)


class ResNet50(nn.Module):
    """ImageNet ResNet-50 (He et al. 2016; stride in the 3x3 as torchvision's v1.5):
    7x7/2 stem + 3x3/2 max-pool, bottleneck stages [3, 4, 6, 3] of widths 64..512.
    x: (B, C, H, W) -> v: (B, 2048). Parameter names follow torchvision (conv1,
    bn1, layer1..layer4) without its fc: the DCM head replaces it (docs/design.md §7, Clothing1M)."""

    def __init__(self, in_shape):
        super().__init__()
        self.conv1 = nn.Conv2d(in_shape[0], 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        c_prev = 64
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(c_prev, width, 2 if (i > 0 and j == 0) else 1))
                c_prev = 4 * width
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.feature_dim = 2048
        _alias(self, "last_layer", self.layer4[-1].conv3)

    def forward(self, x):
        out = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


def load_pretrained(backbone, path):
    """Copy an ImageNet state dict (torchvision key layout) from the file `path` into
    `backbone` and return it. The classifier (fc.*) is ignored, a "module." prefix
    (DataParallel) stripped, and a {"state_dict": ...} wrapper unwrapped; BN's
    num_batches_tracked may be absent (old torchvision files). Raises ValueError
    (one line) naming missing, unexpected or mis-shaped keys. Mutates `backbone`
    in place: an nn.Module is the one stateful object here, as for load_state_dict."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)  # tensors only: no code runs
    except Exception as e:   # any damage or foreign pickle (UnpicklingError, KeyError, ...): one line
        raise ValueError(f"--pretrained {path}: cannot read it as tensors ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:160]}); expected a torch.save'd state dict, "
                         f"not a whole model or another format") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"--pretrained {path}: holds a {type(sd).__name__}, expected a state dict")
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items() if not k.startswith(("fc.", "module.fc."))}
    not_tensors = sorted(str(k) for k, v in sd.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        more = f" (and {len(not_tensors) - 1} more keys)" if len(not_tensors) > 1 else ""
        raise ValueError(f"--pretrained {path}: the value of {not_tensors[0]!r}{more} is not a tensor; "
                         f"expected a state dict of tensors")
    own = backbone.state_dict()
    optional = {k for k in own if k.endswith("num_batches_tracked")}
    missing = sorted(set(own) - set(sd) - optional)
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(k for k in set(sd) & set(own) if tuple(sd[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        def few(keys):
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "") if keys else "none"
        raise ValueError(f"--pretrained {path} does not fit the backbone: missing {few(missing)}; "
                         f"unexpected {few(unexpected)}; shape mismatch {few(shapes)}")
    backbone.load_state_dict(sd, strict=False)
    return backbone


def make_backbone(name, in_shape):
    """Build a backbone by name for inputs of shape ``in_shape = (C, H, W)``.

    Returns an nn.Module with ``.feature_dim`` (d) and ``.last_layer`` (the
    layer whose parameters the gradient-error diagnostic of Fig. 3 probes)."""
    if name == "mlp":
        return MLP(in_shape)
    if name == "cnn8":
        return CNN8(in_shape)
    if name == "preact-resnet18":
        return ResNet(in_shape, PreActBlock, (2, 2, 2, 2), preact=True)
    if name == "resnet34":
        return ResNet(in_shape, BasicBlock, (3, 4, 6, 3), preact=False)
    if name == "resnet50":
        return ResNet50(in_shape)
    raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")


# ----------------------------------------------------------------------------- Heads
# The head is a module of layers.py (the same code as the drop-in): its training forward runs
# the DCM step (Fig. 2, Eq. 2) on its own batch, its eval forward the full head.

HEADS = ("fc", "dfc", "kan", "dkan")   # the --head names
DCM_HEADS = ("dfc", "dkan")            # the heads DCM masks


def make_head(name, d, num_classes, kan_grid=5, kan_order=3, **dcm):
    """The classifier head (d -> num_classes) of --head `name`: fc nn.Linear, dfc layers.DCMLinear,
    kan layers.KANLinear (layer norm first, as DKAN), dkan layers.DKANLinear. dcm: the DCM
    heads' keyword arguments (keep, scope, interval, warmup, stats, eval_mask, score, seed); the plain heads
    have none (train_cli warns about typed --dcm-* flags there)."""
    if name == "fc":
        return nn.Linear(d, num_classes)   # PyTorch's default init, as DCMLinear's
    if name == "dfc":
        return layers.DCMLinear(d, num_classes, **dcm)
    if name == "kan":
        return layers.KANLinear(d, num_classes, kan_grid, kan_order, layer_norm=True)
    if name == "dkan":
        return layers.DKANLinear(d, num_classes, kan_grid, kan_order, **dcm)
    raise ValueError(f"unknown head {name!r}; expected one of {', '.join(HEADS)}")


class Net(nn.Module):
    """Backbone + head: x (B, ...) -> logits (B, C) in float32. compile_backbone() makes the
    forward use a torch.compile'd backbone (not a submodule: the state dict is unchanged).
    head_dropout p: standard dropout on the head's input in training (--head-dropout, the
    regulariser the paper contrasts DCM with, Fig. 1); a DCM head then scores the dropped features."""

    def __init__(self, backbone, head, head_dropout=0.0):
        super().__init__()
        if not 0.0 <= head_dropout < 1.0:
            raise ValueError(f"head_dropout: expected a probability in [0, 1), got {head_dropout!r}")
        self.backbone, self.head, self.head_dropout = backbone, head, head_dropout
        object.__setattr__(self, "compiled", None)

    def compile_backbone(self):
        object.__setattr__(self, "compiled", torch.compile(self.backbone))
        return self

    def forward(self, x):
        v = (self.compiled if self.compiled is not None else self.backbone)(x)
        if self.head_dropout and self.training:   # p = 0 draws no random number: runs without it are unchanged
            v = F.dropout(v, self.head_dropout, training=True)
        return self.head(v).float()
