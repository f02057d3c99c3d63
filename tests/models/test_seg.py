"""MONAI segmentation factory: every architecture builds, runs forward/backward, and checks its args."""

from __future__ import annotations

import pytest
import torch

from acdctool.errors import BadInputError, ConfigError
from acdctool.models.seg import (
    ARCHS,
    build_seg_model,
    check_input_size,
    default_args,
    parse_net_args,
    resolve_args,
    size_divisor,
)

SMALL = {
    "unet": ({"channels": (4, 8, 16)}, 32),
    "resunet": ({"channels": (4, 8, 16)}, 32),
    "attunet": ({"channels": (4, 8, 16)}, 32),
    "swinunetr": ({"feature_size": 12, "depths": (1, 1, 1, 1)}, 64),  # needs ≥ 64 px
}


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_backward_small(arch):
    overrides, size = SMALL[arch]
    args = resolve_args(arch, overrides)
    torch.manual_seed(0)
    net = build_seg_model(arch, args)
    x = torch.rand(2, 1, size, size)
    out = net(x)
    assert out.shape == (2, 4, size, size)
    out.square().mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_resunet_is_unet_with_two_residual_units():
    assert default_args("resunet")["num_res_units"] == 2 and default_args("unet")["num_res_units"] == 0
    assert type(build_seg_model("resunet", resolve_args("resunet", {"channels": (4, 8)}))).__name__ == "UNet"


def test_defaults_are_2d_four_classes():
    for arch in ARCHS:
        args = default_args(arch)
        assert args["spatial_dims"] == 2 and args["in_channels"] == 1 and args["out_channels"] == 4


def test_resolve_args_derives_strides_and_rejects_typos():
    assert resolve_args("unet", {"channels": (4, 8, 16, 32)})["strides"] == (2, 2, 2)
    with pytest.raises(ConfigError, match="not an argument"):
        resolve_args("unet", {"chanels": (4, 8)})
    with pytest.raises(ConfigError, match="strides"):
        resolve_args("attunet", {"channels": (4, 8, 16), "strides": (2,)})
    with pytest.raises(ConfigError, match="multiple of 12"):
        resolve_args("swinunetr", {"feature_size": 16})
    with pytest.raises(ConfigError, match="unknown architecture"):
        resolve_args("vnet")


def test_parse_net_args():
    assert parse_net_args(["channels=4,8,16", "dropout=0.1", "norm=batch", "use_v2=true"]) == {
        "channels": (4, 8, 16),
        "dropout": 0.1,
        "norm": "batch",
        "use_v2": True,
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_net_args(["channels"])


def test_input_size_check():
    args = resolve_args("unet")
    assert size_divisor("unet", args) == 16 and size_divisor("swinunetr", default_args("swinunetr")) == 32
    check_input_size("unet", args, (128, 128))
    with pytest.raises(BadInputError, match="multiples of 16"):
        check_input_size("unet", args, (100, 100))
    with pytest.raises(BadInputError, match="at least 64"):
        check_input_size("swinunetr", default_args("swinunetr"), (32, 32))
