"""NVAE model, residual-normal KL and loss: shapes, config errors, KL maths, training, I/O."""

from __future__ import annotations

import math
from dataclasses import MISSING, fields, replace

import pytest
import torch
from torch import nn

from acdctool.config import TrainNvaeConfig
from acdctool.errors import BadInputError, ConfigError, TrainingDivergedError
from acdctool.models.nvae import NVAE
from acdctool.models.nvae_dist import Normal, kl_normal, kl_residual
from acdctool.models.nvae_guard import check_finite
from acdctool.models.nvae_loss import NVAELoss, NVAELossConfig, kl_balance_coefficients, kl_coefficient
from acdctool.models.nvae_penalties import SpectralNormPenalty, bn_scale_penalty


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from 2 threads, and OpenMP threads stall badly when other
    processes share the cores: run this module single-threaded, then restore."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SMALL = dict(
    image_size=32,
    scales=3,
    groups_per_scale=(2, 1, 1),
    latent_channels=4,
    enc_cells=1,
    dec_cells=1,
)


def blobs(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """One-hot (n, 4, size, size) phantoms: LV disc (3) in a MYO ring (2), RV blob (1) beside."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    labels = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        cy, cx = (size / 2 + (torch.rand(2, generator=g) - 0.5) * size / 4).tolist()
        r = size / 8 * (0.8 + 0.4 * float(torch.rand(1, generator=g)))
        d = ((yy - cy) ** 2 + (xx - cx) ** 2).float().sqrt()
        drv = ((yy - cy) ** 2 + (xx - cx + 2.2 * r) ** 2).float().sqrt()
        labels[i][drv < 1.2 * r] = 1
        labels[i][d < 1.5 * r] = 2
        labels[i][d < r] = 3
    return nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float()


# ---- model shapes and configuration ---------------------------------------------------------


@pytest.mark.parametrize("in_channels", [4, 12])
def test_shapes_through_every_scale(in_channels: int) -> None:
    torch.manual_seed(0)
    model = NVAE(in_channels=in_channels, **SMALL)
    x = torch.rand(3, in_channels, 32, 32)
    feats = model.encode(x)
    # bottom-up: 1 group at 16² (8 ch), 1 at 8² (16 ch), 2 at the top 4² (32 ch)
    assert [tuple(f.shape) for f in feats] == [
        (3, 8, 16, 16), (3, 16, 8, 8), (3, 32, 4, 4), (3, 32, 4, 4),
    ]  # fmt: skip
    assert model.group_scales == (0, 0, 1, 2)
    assert model.latent_shapes == ((4, 4, 4), (4, 4, 4), (4, 8, 8), (4, 16, 16))
    out = model(x)
    assert out.logits.shape == (3, 4, 32, 32)
    assert len(out.kl) == len(out.z) == model.num_groups == 4
    assert all(k.shape == (3,) and k.dtype == torch.float32 for k in out.kl)
    assert [tuple(z.shape[1:]) for z in out.z] == list(model.latent_shapes)
    assert model.sample(2).shape == (2, 4, 32, 32)
    assert model.reconstruct(x, mode="sample").shape == (3, 4, 32, 32)


def test_report_configuration_builds_at_128() -> None:
    model = NVAE()  # stem 4, scales 3, groups (4, 2, 1), latent 20, 128²
    assert model.group_scales == (0, 0, 0, 0, 1, 1, 2)
    assert model.latent_shapes[0] == (20, 16, 16) and model.latent_shapes[-1] == (20, 64, 64)
    with torch.inference_mode():
        assert model.eval().reconstruct(torch.zeros(1, 4, 128, 128)).shape == (1, 4, 128, 128)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scales": 3, "groups_per_scale": (4, 2)},  # one group count per scale
        {"scales": 2, "groups_per_scale": (2, 0)},  # groups must be positive
        {"image_size": 36},  # 36 is not divisible by 2^(1 + 3 - 1) = 8
        {"image_size": 48, "scales": 5, "groups_per_scale": (1, 1, 1, 1, 1)},  # 48 % 32 != 0
        {"stem_channels": 0},
        {"pre_blocks": 2, "post_blocks": 1},
        {"bn_momentum": 0.0},
    ],
)
def test_inconsistent_config_raises(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        NVAE(**{**SMALL, **kwargs})


def test_from_args_rejects_unknown_keys_and_bad_input_shape() -> None:
    with pytest.raises(ConfigError, match="unknown"):
        NVAE.from_args({**SMALL, "stem": 4})
    model = NVAE(**SMALL)
    with pytest.raises(BadInputError):
        model(torch.zeros(1, 4, 64, 64))
    with pytest.raises(ConfigError):
        NVAELoss(model, loss_config(betas=(1.0, 1.0)))  # 3 scales need 3 betas


def test_from_args_and_weights_round_trip(tmp_path) -> None:
    torch.manual_seed(1)
    model = NVAE(in_channels=12, **SMALL)
    x = torch.rand(2, 12, 32, 32)
    model.train()
    model(x)  # move the BN running statistics away from their defaults
    model.eval()
    path = tmp_path / "nvae.pt"
    torch.save({"args": model.args, "state": model.state_dict()}, path)
    ckpt = torch.load(path, weights_only=True)
    clone = NVAE.from_args(ckpt["args"])
    clone.load_state_dict(ckpt["state"])
    clone.eval()
    assert clone.args == model.args
    with torch.no_grad():
        assert torch.equal(model.reconstruct(x), clone.reconstruct(x))


def test_decoding_is_reproducible() -> None:
    torch.manual_seed(2)
    model = NVAE(**SMALL).eval()
    x = blobs(2)
    with torch.no_grad():
        assert torch.equal(model.reconstruct(x, mode="mean"), model.reconstruct(x, mode="mean"))
        a = model.reconstruct(x, "sample", 0.7, torch.Generator().manual_seed(5))
        b = model.reconstruct(x, "sample", 0.7, torch.Generator().manual_seed(5))
        c = model.reconstruct(x, "sample", 0.7, torch.Generator().manual_seed(6))
        assert torch.equal(a, b) and not torch.equal(a, c)
        s1 = model.sample(2, 0.5, torch.Generator().manual_seed(3))
        s2 = model.sample(2, 0.5, torch.Generator().manual_seed(3))
        assert torch.equal(s1, s2)
        with pytest.raises(ConfigError):
            model.reconstruct(x, mode="median")


# ---- residual-normal KL ----------------------------------------------------------------------


def test_general_kl_equals_residual_closed_form() -> None:
    g = torch.Generator().manual_seed(0)
    mu_p, log_sp = torch.randn(100, generator=g), torch.randn(100, generator=g)
    d_mu, d_log = torch.randn(100, generator=g), torch.randn(100, generator=g) * 0.5
    general = kl_normal(mu_p + d_mu, log_sp + d_log, mu_p, log_sp)
    closed = kl_residual(d_mu, d_log, log_sp)
    torch.testing.assert_close(general, closed, rtol=1e-5, atol=1e-6)
    assert (general >= 0).all()
    # the model's path: a prior from network output, its residual posterior (soft-clamped)
    params = torch.randn(4, 6, 3, 3, generator=g)
    prior = Normal.from_params(params)
    post = prior.residual(torch.randn(4, 6, 3, 3, generator=g))
    via_general = kl_normal(post.mu, post.log_sigma, prior.mu, prior.log_sigma)
    torch.testing.assert_close(post.kl(prior), via_general, rtol=1e-4, atol=1e-5)


def test_residual_kl_matches_monte_carlo() -> None:
    prior = Normal(torch.tensor([0.3]), torch.tensor([math.log(1.3)]))
    post = Normal(prior.mu + 0.7, prior.log_sigma + math.log(0.6))
    expected = float(kl_residual(torch.tensor(0.7), torch.tensor(math.log(0.6)), prior.log_sigma))
    z = post.mu + post.sigma * torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    mc = float((post.log_prob(z) - prior.log_prob(z)).mean())
    assert float(post.kl(prior)) == pytest.approx(expected, rel=1e-5)
    assert mc == pytest.approx(expected, rel=0.03)


def test_soft_clamp_bounds_parameters() -> None:
    d = Normal.from_params(torch.full((1, 2, 1, 1), 1e4))
    assert float(d.mu) <= 5.0 and float(d.log_sigma) <= 5.0
    assert torch.isfinite(d.residual(torch.full((1, 2, 1, 1), -1e4)).kl(d)).all()


# ---- loss ------------------------------------------------------------------------------------


def loss_config(**changes: object) -> NVAELossConfig:
    """The loss settings of the default train-nvae config, with changes (tiny models need fewer betas)."""
    return replace(NVAELossConfig.from_config(TrainNvaeConfig()), **changes)


def test_loss_settings_have_one_home() -> None:
    """No default of the stage's settings is repeated in the loss config: it takes them from it."""
    stage = {f.name for f in fields(TrainNvaeConfig)}
    own = {f.name: f for f in fields(NVAELossConfig)}
    shared = stage & set(own)
    assert shared == {"betas", "warmup_steps", "kl_balance", "dice_weight", "sr_weight"}
    assert all(own[name].default is MISSING for name in shared)
    cfg = TrainNvaeConfig(scales=2, groups_per_scale=(2, 1), betas=(3, 4), warmup_steps=7, kl_balance=False,
                          dice_weight=2.0, sr_weight=0.5)  # fmt: skip
    assert NVAELossConfig.from_config(cfg) == NVAELossConfig((3.0, 4.0), 7, False, 2.0, 0.5)
    with pytest.raises(ConfigError):
        loss_config(betas=(-1.0, 1.0, 1.0))


def test_warmup_and_balance_coefficients() -> None:
    assert kl_coefficient(0, 100, 1e-4) == pytest.approx(1e-4)
    assert kl_coefficient(50, 100, 0.0) == pytest.approx(0.5)
    assert kl_coefficient(1000, 100) == 1.0 and kl_coefficient(5, 0) == 1.0
    kl = torch.tensor([[4.0, 4.0, 1.0], [4.0, 4.0, 1.0]])
    gamma = kl_balance_coefficients(kl, torch.tensor([1.0, 4.0, 1.0]))
    assert float(gamma.sum()) == pytest.approx(3.0)
    assert gamma[0] > gamma[2] and gamma[0] > gamma[1]  # more KL per latent → more pressure


def test_few_adamax_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    model = NVAE(**{**SMALL, "scales": 2, "groups_per_scale": (2, 1), "image_size": 32})
    loss_fn = NVAELoss(model, loss_config(betas=(1.0, 1.0), warmup_steps=50, sr_weight=1e-3, dice_weight=10))
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2, eps=1e-3, weight_decay=3e-4)
    x = blobs(8, seed=1)
    losses = []
    for step in range(25):
        loss, terms = loss_fn(model(x), x, step)
        check_finite(terms)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(terms["recon"]))
    assert set(terms) >= {"loss", "recon", "dice", "kl", "kl_scale0", "kl_scale1",
                          "kl_weighted", "kl_coeff", "nelbo", "sr", "bn"}  # fmt: skip
    assert all(t.dim() == 0 and not t.requires_grad for t in terms.values())
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3
    # the power-iteration vectors are checkpointed with the loss
    assert {"sr.u0", "sr.v0"} <= set(loss_fn.state_dict())


def test_loss_accepts_label_targets() -> None:
    model = NVAE(**SMALL)
    x = blobs(2)
    loss_fn = NVAELoss(model, loss_config(betas=(1.0, 2.0, 3.0)))
    out = model(x)
    l1, t1 = loss_fn(out, x, 10)
    l2, t2 = loss_fn(out, x.argmax(1), 10)
    torch.testing.assert_close(l1, l2)
    assert float(t1["kl"]) == pytest.approx(sum(float(t1[f"kl_scale{i}"]) for i in range(3)))


def test_check_finite_names_the_bad_term() -> None:
    terms = {"loss": torch.tensor(1.0), "recon": torch.tensor(1.0), "kl": torch.tensor(2.0),
             "kl_scale0": torch.tensor(1.0), "kl_scale1": torch.tensor(1.0),
             "sr": torch.tensor(0.0)}  # fmt: skip
    check_finite(terms)
    with pytest.raises(TrainingDivergedError, match="kl_scale1.*nan.*warm-up"):
        check_finite({**terms, "kl_scale1": torch.tensor(float("nan")),
                      "kl": torch.tensor(float("nan")), "loss": torch.tensor(float("nan"))})  # fmt: skip
    with pytest.raises(TrainingDivergedError, match="'kl_scale0'.*>"):
        check_finite({**terms, "kl_scale0": torch.tensor(1e9)})
    with pytest.raises(TrainingDivergedError, match="'recon'.*inf"):
        check_finite({**terms, "recon": float("inf")})


def test_power_iteration_matches_matrix_norm() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(6, 16, 3), nn.Conv2d(16, 16, 3), nn.Conv2d(16, 8, 1),
                        nn.Conv2d(8, 8, 5, groups=8))  # fmt: skip
    sr = SpectralNormPenalty(net, init_iterations=200)
    est = sr.estimates()
    for conv in net:
        w = conv.weight.detach().reshape(conv.weight.shape[0], -1)
        exact = float(torch.linalg.matrix_norm(w, 2))
        assert est[conv] == pytest.approx(exact, rel=1e-3)
    penalty = sr(iterations=1)
    penalty.backward()
    assert all(c.weight.grad is not None for c in net)
    assert float(penalty.detach()) == pytest.approx(sum(est.values()), rel=1e-3)


def test_bn_scale_penalty_sums_the_largest_gamma_of_each_layer() -> None:
    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.BatchNorm2d(2, affine=False), nn.BatchNorm2d(2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([0.5, -2.0, 1.0]))
        net[3].weight.copy_(torch.tensor([0.25, 0.75]))
    penalty = bn_scale_penalty(net)
    assert float(penalty.detach()) == pytest.approx(2.75)
    penalty.backward()
    assert net[1].weight.grad.tolist() == [0.0, -1.0, 0.0]
    assert float(bn_scale_penalty(nn.Conv2d(1, 1, 1))) == 0.0
