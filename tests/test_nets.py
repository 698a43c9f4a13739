"""nets.py: the backbones build for every input shape and give (B, d) features; ResNet-50 has
torchvision's names and size so --pretrained loads torchvision weights; make_head builds the
four heads (layers.py modules), keep = 1 is the plain head, and the scores are Eq. 2's."""
import pytest
import torch
from torch import nn
from hypothesis import given, settings, strategies as st

import dcm_ref
import kan
import layers
import nets


# ---------------------------------------------------------------- backbones

@pytest.mark.parametrize("name", [b for b in nets.BACKBONES if b != "resnet50"])
@pytest.mark.parametrize("in_shape", [(1, 8, 8), (3, 32, 32)])
def test_every_backbone_maps_a_batch_to_feature_dim_features(name, in_shape):
    torch.manual_seed(0)
    net = nets.make_backbone(name, in_shape).eval()
    v = net(torch.randn(3, *in_shape))
    assert v.shape == (3, net.feature_dim) and bool(torch.isfinite(v).all())
    assert any(p.requires_grad for p in net.last_layer.parameters())


def test_unknown_backbone_is_a_value_error_naming_the_choices():
    with pytest.raises(ValueError, match="mlp, cnn8"):
        nets.make_backbone("vgg", (1, 8, 8))


def test_resnet50_has_torchvision_names_and_size():
    net = nets.make_backbone("resnet50", (3, 32, 32))
    keys = set(net.state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer4.2.conv3.weight"} <= keys
    assert sum(p.numel() for p in net.parameters()) == 23_508_032   # torchvision resnet50 without fc
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, net.feature_dim) == (2, 2048)


def torchvision_resnet50_keys():
    """The state-dict keys of torchvision's resnet50 without fc, spelled out by its layout."""
    def bn(p):
        return [f"{p}.{t}" for t in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    keys = ["conv1.weight", *bn("bn1")]
    for layer, blocks in zip((1, 2, 3, 4), (3, 4, 6, 3)):
        for b in range(blocks):
            p = f"layer{layer}.{b}"
            keys += [k for i in (1, 2, 3) for k in (f"{p}.conv{i}.weight", *bn(f"{p}.bn{i}"))]
            if b == 0:
                keys += [f"{p}.downsample.0.weight", *bn(f"{p}.downsample.1")]
    return set(keys)


def test_resnet50_state_dict_has_exactly_torchvision_keys():
    assert set(nets.make_backbone("resnet50", (3, 32, 32)).state_dict()) == torchvision_resnet50_keys()


@pytest.mark.parametrize("name", nets.BACKBONES)
def test_no_backbone_stores_a_tensor_twice(name):
    """The Fig. 3 alias .last_layer adds no state-dict key: one key per tensor."""
    sd = nets.make_backbone(name, (3, 32, 32)).state_dict()
    assert len({t.data_ptr() for t in sd.values() if t.numel() > 1}) == sum(t.numel() > 1 for t in sd.values())


def test_pretrained_round_trip_in_torchvision_layout(tmp_path):
    torch.manual_seed(0)
    src = nets.make_backbone("resnet50", (3, 32, 32))
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)  # ignored
    torch.save(sd, tmp_path / "r50.pth")
    torch.manual_seed(1)
    dst = nets.load_pretrained(nets.make_backbone("resnet50", (3, 32, 32)), str(tmp_path / "r50.pth"))
    for k, v in src.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, dst.state_dict()[k]), k


@pytest.mark.parametrize("content", ["garbage", "whole model", "list value"])
def test_an_unreadable_pretrained_file_is_one_line(tmp_path, content):
    path = tmp_path / "w.pth"
    if content == "garbage":
        path.write_bytes(bytes(range(256)) * 8)
    elif content == "whole model":
        torch.save(torch.nn.Linear(2, 2), path)        # a pickled module, not a state dict
    else:
        sd = nets.make_backbone("mlp", (1, 8, 8)).state_dict()
        sd["fc1.weight"] = [1, 2]
        torch.save(sd, path)
    with pytest.raises(ValueError, match="--pretrained") as e:
        nets.load_pretrained(nets.make_backbone("mlp", (1, 8, 8)), str(path))
    assert "\n" not in str(e.value)


def test_pretrained_mismatch_names_missing_and_unexpected_keys(tmp_path):
    sd = nets.make_backbone("resnet50", (3, 32, 32)).state_dict()
    del sd["layer2.0.conv1.weight"]
    sd["head.extra"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"missing layer2.0.conv1.weight; unexpected head.extra") as e:
        nets.load_pretrained(nets.make_backbone("resnet50", (3, 32, 32)), str(tmp_path / "bad.pth"))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- heads (layers.py modules)

# name -> (the module class, masked by DCM), written out: the four heads of docs/design.md §2-3.
HEAD_KINDS = {"fc": (nn.Linear, False), "dfc": (layers.DCMLinear, True),
              "kan": (layers.KANLinear, False), "dkan": (layers.DKANLinear, True)}


@pytest.mark.parametrize("name", sorted(HEAD_KINDS))
def test_make_head_builds_each_kind(name):
    cls, dcm = HEAD_KINDS[name]
    head = nets.make_head(name, 6, 4, 5, 3, **({"keep": 0.5} if dcm else {}))
    assert type(head) is cls and isinstance(head, layers.DCMModule) == dcm == (name in nets.DCM_HEADS)
    assert head(torch.randn(3, 6)).shape == (3, 4) and head.out_features == 4


def test_head_names_are_the_four_kinds():
    assert set(nets.HEADS) == set(HEAD_KINDS) and set(nets.DCM_HEADS) <= set(nets.HEADS)


@pytest.mark.parametrize("bad", ["DFC", "dfc ", "", "kan2", "fcd"])
def test_unknown_head_is_a_value_error_naming_it_and_the_choices(bad):
    with pytest.raises(ValueError, match=f"unknown head {bad!r}; expected one of fc, dfc, kan, dkan"):
        nets.make_head(bad, 4, 3)


@settings(max_examples=20)
@given(kind=st.sampled_from(["dfc", "dkan"]), B=st.integers(2, 6), d=st.integers(2, 9),
       C=st.integers(2, 5), seed=st.integers(0, 2 ** 16))
def test_a_dcm_head_with_keep_1_is_its_plain_head(kind, B, d, C, seed):
    """keep = 1 masks nothing: the training forward equals the unmasked head of the same weights."""
    torch.manual_seed(seed)
    head = nets.make_head(kind, d, C, 5, 3, keep=1.0)
    torch.manual_seed(seed)
    plain = nets.make_head({"dfc": "fc", "dkan": "kan"}[kind], d, C, 5, 3)
    v = torch.randn(B, d)
    assert torch.allclose(head(v), plain(v), atol=1e-6) and int(head.mask.sum()) == C * d


LITERAL_SCORES = {   # kind -> (literal score of the head's input v, rtol, atol)
    "dfc": (lambda head, v: dcm_ref.edge_scores_literal(v, head.weight), 1e-5, 1e-6),        # Eq. 2
    "dkan": (lambda head, v: kan.kan_edge_scores_literal(head.params(), kan.layer_norm(v)), 1e-4, 1e-5),
}   # DKAN: S[j,k] = std_b φ_jk(x_bk) of the layer-normed input (the literal DKAN score)


@pytest.mark.parametrize("kind", sorted(LITERAL_SCORES))
@settings(max_examples=20)
@given(B=st.integers(2, 6), d=st.integers(2, 9), C=st.integers(2, 5), seed=st.integers(0, 2 ** 16))
def test_head_scores_from_moments_are_the_literal_scores(kind, B, d, C, seed):
    torch.manual_seed(seed)
    head = nets.make_head(kind, d, C, 5, 3)
    v = torch.randn(B, d)
    with torch.no_grad():
        S = head._scores(head._moments(head._features(v)))
    literal, rtol, atol = LITERAL_SCORES[kind]
    assert S.shape == (C, d) and torch.allclose(S, literal(head, v).to(S.dtype), rtol=rtol, atol=atol)


def test_masked_head_weights_get_no_gradient():
    torch.manual_seed(0)
    for kind in ("dfc", "dkan"):
        head = nets.make_head(kind, 4, 3, 5, 3, warmup=1)   # warm-up: the forward applies the stored mask
        head.mask.zero_()
        head.mask[0, 1] = 1
        head(torch.randn(5, 4)).sum().backward()
        for name in head._MASKED:
            g = getattr(head, name).grad
            masked = (head.mask == 0).view(3, 4, *([1] * (g.dim() - 2))).expand_as(g)
            assert bool((g[masked] == 0).all()) and bool((g[~masked] != 0).any()), (kind, name)


def test_net_forward_is_the_head_of_the_backbone_in_float32():
    torch.manual_seed(1)
    net = nets.Net(nets.make_backbone("mlp", (1, 8, 8)), nets.make_head("fc", 256, 10))
    x = torch.randn(4, 1, 8, 8)
    z = net(x)
    assert z.dtype == torch.float32 and torch.equal(z, net.head(net.backbone(x)))
    assert "compiled" not in dict(net.named_children()) and set(net.state_dict()) == \
        {f"backbone.{k}" for k in net.backbone.state_dict()} | {"head.weight", "head.bias"}


class _Recorder(nn.Module):
    """A head that records its input and returns it (d = C)."""
    def forward(self, v):
        self.seen = v
        return v


def test_head_dropout_drops_the_head_input_in_training_only_and_p0_draws_nothing():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8) + 0.5           # positive pixels: the identity backbone's outputs are never 0
    flat = nn.Flatten()
    net = nets.Net(flat, _Recorder(), head_dropout=0.5)
    net(x)
    dropped = net.head.seen == 0
    assert 0.4 < dropped.float().mean() < 0.6                                     # ~p of the inputs zeroed
    assert torch.allclose(net.head.seen[~dropped], 2 * flat(x)[~dropped])        # the rest scaled by 1/(1−p)
    net.eval()
    net(x)
    assert torch.equal(net.head.seen, flat(x))                                    # no dropout at evaluation
    plain = nets.Net(flat, _Recorder(), head_dropout=0.0)
    state = torch.random.get_rng_state()
    plain(x)
    assert torch.equal(torch.random.get_rng_state(), state) and torch.equal(plain.head.seen, flat(x))
    with pytest.raises(ValueError, match="head_dropout: expected a probability in"):
        nets.Net(flat, _Recorder(), head_dropout=1.0)
