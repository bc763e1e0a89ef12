"""A deliberately naive restatement of the published BagNet, written from the paper and
the issue's specification only (no code from ``bagnet`` is used).

Everything is explicit: parameter names, shapes, BatchNorm arithmetic, residual cropping.
"""

import torch
import torch.nn.functional as F

BLOCKS = [3, 4, 6, 3]
PLANES = [64, 128, 256, 512]
STRIDES = [2, 2, 2, 1]
# Which stages have a 3x3 middle conv in their first block.
THREE_BY_THREE = {"bagnet9": [True, True, False, False], "bagnet17": [True, True, True, False],
                  "bagnet33": [True, True, True, True]}


def bn_keys(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def expected_keys(name, num_classes=1000, in_chans=3):
    """Published state-dict keys and shapes of bagnet9/17/33."""
    keys = {"conv1.weight": (64, in_chans, 1, 1), "conv2.weight": (64, 64, 3, 3), **bn_keys("bn1", 64)}
    inplanes = 64
    for s, (n, planes) in enumerate(zip(BLOCKS, PLANES)):
        for i in range(n):
            p = f"layer{s + 1}.{i}"
            k = 3 if (i == 0 and THREE_BY_THREE[name][s]) else 1
            keys[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            keys[f"{p}.conv2.weight"] = (planes, planes, k, k)
            keys[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            keys.update(bn_keys(f"{p}.bn1", planes))
            keys.update(bn_keys(f"{p}.bn2", planes))
            keys.update(bn_keys(f"{p}.bn3", planes * 4))
            if i == 0:
                keys[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                keys.update(bn_keys(f"{p}.downsample.1", planes * 4))
            inplanes = planes * 4
    keys["fc.weight"] = (num_classes, 2048)
    keys["fc.bias"] = (num_classes,)
    return keys


def random_state_dict(name, num_classes=1000, seed=0, dtype=torch.float32):
    """Random weights with non-trivial BatchNorm statistics for every key."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in expected_keys(name, num_classes).items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(0)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g, dtype=dtype) + 0.5
        elif k.endswith(("running_mean", ".bias")):
            sd[k] = torch.randn(shape, generator=g, dtype=dtype) * 0.1
        elif k.endswith(("bn3.weight", "downsample.1.weight")):
            # small residual-branch scales keep activations O(1) through 16 blocks, so
            # float32 comparisons are meaningful at 1e-5
            sd[k] = torch.rand(shape, generator=g, dtype=dtype) * 0.2 + 0.2
        elif "bn" in k:  # other BatchNorm scales
            sd[k] = torch.rand(shape, generator=g, dtype=dtype) + 0.5
        else:  # convolution / linear weight, He-scaled
            fan_in = 1
            for d in shape[1:]:
                fan_in *= d
            sd[k] = torch.randn(shape, generator=g, dtype=dtype) * (2.0 / fan_in) ** 0.5
    return sd


class Counter:
    macs = 0


def conv(x, w, stride=1, counter=None):
    y = F.conv2d(x, w, stride=stride)  # no padding anywhere
    if counter is not None:
        counter.macs += y.shape[1] * y.shape[2] * y.shape[3] * w.shape[1] * w.shape[2] * w.shape[3]
    return y


def bn(x, sd, p, eps=1e-5):
    mean = sd[p + ".running_mean"][None, :, None, None]
    var = sd[p + ".running_var"][None, :, None, None]
    return (x - mean) / torch.sqrt(var + eps) * sd[p + ".weight"][None, :, None, None] + sd[p + ".bias"][None, :, None, None]


def naive_patch_logits(sd, name, x, counter=None):
    """[B, classes, H', W'] logits of every patch, from the state dict alone."""
    x = conv(conv(x, sd["conv1.weight"], counter=counter), sd["conv2.weight"], counter=counter)
    x = torch.relu(bn(x, sd, "bn1"))
    for s, n in enumerate(BLOCKS):
        for i in range(n):
            p = f"layer{s + 1}.{i}"
            stride = STRIDES[s] if i == 0 else 1
            out = torch.relu(bn(conv(x, sd[p + ".conv1.weight"], counter=counter), sd, p + ".bn1"))
            out = torch.relu(bn(conv(out, sd[p + ".conv2.weight"], stride, counter), sd, p + ".bn2"))
            out = bn(conv(out, sd[p + ".conv3.weight"], counter=counter), sd, p + ".bn3")
            if i == 0:
                res = bn(conv(x, sd[p + ".downsample.0.weight"], stride, counter), sd, p + ".downsample.1")
            else:
                res = x
            # crop the residual at bottom and right
            res = res[:, :, : out.shape[2], : out.shape[3]]
            x = torch.relu(out + res)
    b, _c, h, w = x.shape
    logits = torch.zeros(b, sd["fc.weight"].shape[0], h, w, dtype=x.dtype)
    for i in range(h):
        for j in range(w):
            logits[:, :, i, j] = x[:, :, i, j] @ sd["fc.weight"].T + sd["fc.bias"]
    if counter is not None:
        counter.macs += 2048 * sd["fc.weight"].shape[0]  # the classifier on the pooled feature
    return logits
