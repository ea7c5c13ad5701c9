"""Numeric tests of the diffusion package: preconditioning, sigma grids, samplers, guidance.

References: diffusers' EulerDiscreteScheduler configured as the SVD checkpoints ship it, diffusers'
Heun and DPM-Solver++ schedulers, and closed forms for Gaussian data.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
)

from kinetograph.conditioning import Cond, make_cond
from kinetograph.diffusion.denoiser import (
    SCALINGS,
    Denoiser,
    EDMScaling,
    VScalingEDMcNoise,
    make_scalings,
)
from kinetograph.diffusion.guidance import GuidedDenoiser, linear_ramp, triangle_ramp
from kinetograph.diffusion.samplers import (
    SAMPLERS,
    STOCHASTIC,
    ancestral_step,
    sample_dpmpp_2m,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
)

ODE_SAMPLERS = {name: f for name, f in SAMPLERS.items() if name not in STOCHASTIC}
from kinetograph.diffusion.schedules import (
    init_noise_scale,
    karras_sigmas,
    sample_cond_aug_sigmas,
    sample_training_sigmas,
)
from kinetograph.errors import InputError

# scheduler/scheduler_config.json of the diffusers SVD repos (keys EulerDiscreteScheduler reads)
SVD_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    interpolation_type="linear",
    prediction_type="v_prediction",
    sigma_min=0.002,
    sigma_max=700.0,
    steps_offset=1,
    timestep_spacing="leading",
    timestep_type="continuous",
    use_karras_sigmas=True,
)
# Stable Diffusion's beta schedule, for diffusers' Heun / DPM-Solver++ references
SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def svd_scheduler(num_steps: int) -> EulerDiscreteScheduler:
    scheduler = EulerDiscreteScheduler(**SVD_SCHEDULER_CONFIG)
    scheduler.set_timesteps(num_steps)
    return scheduler


class ToyNetwork:
    """A fixed nonlinear F(x_in, c_noise, cond): per-channel weights, depends on all its inputs."""

    def __init__(self, channels: int) -> None:
        g = torch.Generator().manual_seed(7)
        self.w = torch.randn(1, channels, 1, 1, generator=g)
        self.b = torch.randn(1, channels, 1, 1, generator=g)
        self.calls: list[tuple[tuple[int, ...], torch.Tensor]] = []

    def __call__(self, x_in: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        self.calls.append((tuple(x_in.shape), c_noise.clone()))
        c = c_noise.reshape(-1, 1, 1, 1)
        out = torch.tanh(self.w * x_in + 0.3 * c + self.b) + 0.1 * x_in.roll(1, dims=-1) * torch.cos(c)
        return out if cond is None else out + 0.2 * cond


# ---------------------------------------------------------------------------------------------
# schedules


@pytest.mark.parametrize("num_steps", [25, 30])
def test_karras_sigmas_equal_diffusers_svd_scheduler(num_steps: int) -> None:
    scheduler = svd_scheduler(num_steps)
    sigmas = karras_sigmas(num_steps)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (num_steps + 1,)
    assert torch.equal(sigmas, scheduler.sigmas)
    # diffusers' continuous timesteps are our c_noise = ln(sigma)/4, bit for bit
    c_noise = VScalingEDMcNoise()(sigmas[:-1])[3]
    assert torch.equal(c_noise, scheduler.timesteps)
    assert init_noise_scale(sigmas) == float(scheduler.init_noise_sigma)


def test_karras_sigmas_equal_diffusers_for_every_step_count() -> None:
    scheduler = EulerDiscreteScheduler(**SVD_SCHEDULER_CONFIG)
    for num_steps in range(1, 61):
        scheduler.set_timesteps(num_steps)
        assert torch.equal(karras_sigmas(num_steps), scheduler.sigmas), num_steps


def test_karras_sigmas_formula() -> None:
    sigmas = karras_sigmas(3, sigma_min=0.01, sigma_max=100.0, rho=7.0)
    mid = ((100.0 ** (1 / 7) + 0.01 ** (1 / 7)) / 2) ** 7  # i/(n-1) = 1/2
    expected = torch.tensor([100.0, mid, 0.01, 0.0], dtype=torch.float32)
    assert torch.equal(sigmas, expected)
    assert karras_sigmas(1).tolist() == [700.0, 0.0]
    assert init_noise_scale(karras_sigmas(1)) == pytest.approx(math.sqrt(1 + 700.0**2), rel=1e-7)
    with pytest.raises(InputError):
        karras_sigmas(0)
    with pytest.raises(InputError):
        karras_sigmas(10, sigma_min=1.0, sigma_max=0.5)


def test_training_sigma_densities_are_log_normal() -> None:
    n = 200_000
    sigmas = sample_training_sigmas(n, p_mean=0.7, p_std=1.6, generator=torch.Generator().manual_seed(0))
    log_sigma = sigmas.log()
    # standard errors: 1.6/sqrt(n) = 0.0036 for the mean, 1.6/sqrt(2n) = 0.0025 for the std
    assert abs(log_sigma.mean().item() - 0.7) < 0.015
    assert abs(log_sigma.std().item() - 1.6) < 0.01
    same = sample_training_sigmas(n, p_mean=0.7, p_std=1.6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sigmas, same)

    aug = sample_cond_aug_sigmas(n, generator=torch.Generator().manual_seed(1))
    assert aug.dtype == torch.float32 and aug.shape == (n,) and bool((aug > 0).all())
    assert abs(aug.log().mean().item() + 3.0) < 0.005 and abs(aug.log().std().item() - 0.5) < 0.005
    edm = sample_training_sigmas(n, generator=torch.Generator().manual_seed(2))  # EDM defaults
    assert abs(edm.log().mean().item() + 1.2) < 0.015


# ---------------------------------------------------------------------------------------------
# denoiser


def test_v_scalings_denoiser_matches_hand_formula() -> None:
    network = ToyNetwork(3)
    denoiser = Denoiser(network)  # "v_edm" by default
    x = torch.randn(4, 3, 5, 6, generator=torch.Generator().manual_seed(0)) * 3
    sigma = torch.tensor([0.01, 0.5, 3.0, 700.0])
    out = denoiser(x, sigma, None)
    for i, s in enumerate(sigma.tolist()):
        c_noise = torch.full((1,), 0.25 * math.log(s))
        f = network(x[i : i + 1] / math.sqrt(s * s + 1), c_noise, None)
        expected = x[i : i + 1] / (s * s + 1) - s / math.sqrt(s * s + 1) * f
        torch.testing.assert_close(out[i : i + 1], expected, atol=1e-5, rtol=1e-5)
    # the network got c_noise = ln(sigma)/4 per sample, as a (N,) float32 tensor
    shape, c_noise = network.calls[0]
    assert shape == (4, 3, 5, 6)
    assert c_noise.dtype == torch.float32
    torch.testing.assert_close(c_noise, 0.25 * sigma.log())

    # a scalar sigma is broadcast over the batch: same as the per-sample call with equal values
    torch.testing.assert_close(denoiser(x, torch.tensor(2.0)), denoiser(x, torch.full((4,), 2.0)))
    torch.testing.assert_close(denoiser(x, 2.0), denoiser(x, torch.full((4,), 2.0)))


@pytest.mark.parametrize("name", sorted(SCALINGS))
def test_scalings_give_unit_variance_input_and_target(name: str) -> None:
    """Karras et al. (2022) App. B.6: for data of std sigma_data and x = y + sigma*n, the network
    input c_in*x and its training target (y - c_skip*x)/c_out both have unit variance."""
    scalings = make_scalings(name)
    sigma_data = scalings.sigma_data if isinstance(scalings, EDMScaling) else 1.0
    sigma = torch.logspace(-3, 3, 25, dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = scalings(sigma)
    sd2 = sigma_data**2
    var_in = c_in**2 * (sd2 + sigma**2)
    var_target = ((1 - c_skip) ** 2 * sd2 + c_skip**2 * sigma**2) / c_out**2
    torch.testing.assert_close(var_in, torch.ones_like(sigma))
    torch.testing.assert_close(var_target, torch.ones_like(sigma))
    torch.testing.assert_close(c_noise, sigma.log() / 4)
    # c_skip is the minimiser of the target variance: d/dc [(1-c)^2 sd2 + c^2 sigma^2] = 0
    torch.testing.assert_close(c_skip, sd2 / (sd2 + sigma**2))
    # v-prediction flips the sign of c_out (the network predicts -v of Salimans & Ho)
    assert bool((c_out < 0).all()) == (name == "v_edm")


def test_scalings_by_name() -> None:
    assert isinstance(Denoiser(ToyNetwork(1), "edm").scalings, EDMScaling)
    assert isinstance(Denoiser(ToyNetwork(1), "v_edm").scalings, VScalingEDMcNoise)
    assert Denoiser(ToyNetwork(1), EDMScaling(sigma_data=1.0)).scalings.sigma_data == 1.0
    with pytest.raises(InputError):
        Denoiser(ToyNetwork(1), "vpred")


def test_denoiser_keeps_low_precision_dtype() -> None:
    seen = {}

    def network(x_in: torch.Tensor, c_noise: torch.Tensor, cond: None) -> torch.Tensor:
        seen["x_in"], seen["c_noise"] = x_in.dtype, c_noise.dtype
        return 2 * x_in

    x = torch.randn(2, 2, 3, 3).to(torch.bfloat16)
    out = Denoiser(network)(x, torch.tensor(0.7))
    assert out.dtype == torch.bfloat16 and seen["x_in"] == torch.bfloat16
    assert seen["c_noise"] == torch.float32  # c_noise stays float32 for the timestep embedding
    s = 0.7
    expected = x.float() / (s * s + 1) - s / math.sqrt(s * s + 1) * 2 * x.float() / math.sqrt(s * s + 1)
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)


# ---------------------------------------------------------------------------------------------
# samplers vs diffusers


def test_euler_matches_diffusers_svd_scheduler() -> None:
    """Our sample_euler + v-scalings Denoiser == diffusers' SVD scheduler loop, same network."""
    num_steps = 25
    network = ToyNetwork(4)
    cond = torch.randn(6, 4, 5, 7, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(6, 4, 5, 7, generator=torch.Generator().manual_seed(2))

    scheduler = svd_scheduler(num_steps)
    latents = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latents, t)
        model_output = network(model_input, t.expand(latents.shape[0]), cond)
        latents = scheduler.step(model_output, t, latents).prev_sample

    sigmas = karras_sigmas(num_steps)
    denoiser = Denoiser(network, "v_edm")
    ours = sample_euler(lambda x, s: denoiser(x, s, cond), noise * init_noise_scale(sigmas), sigmas)
    assert (ours - latents).abs().max().item() <= 1e-5
    assert latents.abs().max().item() > 0.1  # the comparison is not between two zeros


def test_heun_matches_diffusers() -> None:
    """diffusers' HeunDiscreteScheduler (k-diffusion's sample_heun) with v-prediction."""
    num_steps = 12
    scheduler = HeunDiscreteScheduler(**SD_BETAS, prediction_type="v_prediction", use_karras_sigmas=True)
    scheduler.set_timesteps(num_steps)
    network = ToyNetwork(3)
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))

    latents = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latents, t)
        sigma = scheduler.sigmas[scheduler.step_index]
        model_output = network(model_input, (0.25 * sigma.log()).expand(2), None)
        latents = scheduler.step(model_output, t, latents).prev_sample

    sigmas = scheduler.sigmas[0::2]  # [s0, s1, s1, s2, s2, ..., 0] -> [s0, s1, ..., s_{n-1}]
    sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    assert len(sigmas) == num_steps + 1
    denoiser = Denoiser(network, "v_edm")
    calls_before = len(network.calls)
    # this scheduler starts at noise * sigma_0 (its "linspace" spacing), so ours does too
    ours = sample_heun(lambda x, s: denoiser(x, s), noise * scheduler.init_noise_sigma, sigmas)
    assert len(network.calls) - calls_before == 2 * num_steps - 1  # Euler on the last step
    assert (ours - latents).abs().max().item() <= 1e-5
    assert latents.abs().max().item() > 0.1


def test_dpmpp_2m_matches_diffusers() -> None:
    """diffusers' DPMSolverMultistepScheduler (dpmsolver++, order 2, midpoint) with v-prediction.

    diffusers works on variance-preserving latents x_vp = x / sqrt(1 + sigma^2), whose v-prediction
    is exactly our v-scalings Denoiser; both end at sigma = 0 where the two spaces coincide.
    """
    num_steps = 12
    scheduler = DPMSolverMultistepScheduler(
        **SD_BETAS,
        prediction_type="v_prediction",
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        use_karras_sigmas=True,
        lower_order_final=False,
        final_sigmas_type="zero",
    )
    scheduler.set_timesteps(num_steps)
    scheduler.set_begin_index(0)  # rounded karras timesteps may repeat; index by step count
    network = ToyNetwork(3)
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(4))

    latents = noise  # x_vp at sigma_0: init_noise_sigma is 1
    for i, t in enumerate(scheduler.timesteps):
        sigma = scheduler.sigmas[i]
        model_output = network(latents, (0.25 * sigma.log()).expand(2), None)
        latents = scheduler.step(model_output, t, latents).prev_sample

    sigmas = scheduler.sigmas
    assert len(sigmas) == num_steps + 1 and sigmas[-1] == 0
    denoiser = Denoiser(network, "v_edm")
    ours = sample_dpmpp_2m(lambda x, s: denoiser(x, s), noise * init_noise_scale(sigmas), sigmas)
    assert (ours - latents).abs().max().item() <= 1e-5
    assert latents.abs().max().item() > 0.1


def test_euler_ancestral_matches_diffusers() -> None:
    """diffusers' EulerAncestralDiscreteScheduler (k-diffusion's sample_euler_ancestral), v-prediction,
    the same generator: the fresh noise of every step is the same draw."""
    num_steps = 10
    scheduler = EulerAncestralDiscreteScheduler(**SD_BETAS, prediction_type="v_prediction")
    scheduler.set_timesteps(num_steps)
    network = ToyNetwork(3)
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(5))

    latents = noise * scheduler.init_noise_sigma
    generator = torch.Generator().manual_seed(11)
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latents, t)
        sigma = scheduler.sigmas[scheduler.step_index]
        model_output = network(model_input, (0.25 * sigma.log()).expand(2), None)
        latents = scheduler.step(model_output, t, latents, generator=generator).prev_sample

    denoiser = Denoiser(network, "v_edm")
    ours = sample_euler_ancestral(
        lambda x, s: denoiser(x, s), noise * scheduler.init_noise_sigma, scheduler.sigmas,
        generator=torch.Generator().manual_seed(11),
    )
    assert (ours - latents).abs().max().item() <= 1e-5
    assert latents.abs().max().item() > 0.1


def test_ancestral_step_splits_the_noise_level() -> None:
    down, up = ancestral_step(10.0, 4.0)
    assert math.isclose(down**2 + up**2, 16.0)
    assert math.isclose(up, math.sqrt(16 * (100 - 16) / 100))  # the DDPM posterior std
    assert ancestral_step(10.0, 4.0, eta=0.0) == (4.0, 0.0)  # the plain ODE step
    assert ancestral_step(10.0, 0.0) == (0.0, 0.0)
    assert ancestral_step(1.0, 0.9, eta=5.0)[1] == 0.9  # sigma_up never exceeds sigma_to


def test_euler_ancestral_with_eta_zero_is_euler_and_seeds_matter() -> None:
    network = ToyNetwork(2)
    denoiser = Denoiser(network)
    sigmas = karras_sigmas(8)
    x = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(0)) * init_noise_scale(sigmas)
    fn = lambda x, s: denoiser(x, s)  # noqa: E731
    assert torch.allclose(sample_euler_ancestral(fn, x, sigmas, eta=0.0), sample_euler(fn, x, sigmas), atol=1e-6)
    a = sample_euler_ancestral(fn, x, sigmas, generator=torch.Generator().manual_seed(1))
    b = sample_euler_ancestral(fn, x, sigmas, generator=torch.Generator().manual_seed(1))
    c = sample_euler_ancestral(fn, x, sigmas, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(InputError, match="eta"):
        sample_euler_ancestral(fn, x, sigmas, eta=-1.0)


# ---------------------------------------------------------------------------------------------
# samplers vs the closed form for Gaussian data


MU = 0.3
DATA_STDS = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)  # one data std per dimension


def gaussian_solve(sampler, num_steps: int, sigma_max: float) -> float:
    """Max relative error of the sampler's ODE solution for data ~ N(MU, s^2), per dimension.

    The ideal denoiser is D(x, sigma) = MU + s^2/(s^2+sigma^2) (x - MU) and the probability-flow
    ODE maps x_T to MU + (x_T - MU) s / sqrt(s^2 + sigma_T^2); every solver here is linear in
    (x - MU), so the relative error of the contraction factor is the whole story.
    """
    s2 = DATA_STDS**2
    sigmas = karras_sigmas(num_steps, sigma_max=sigma_max).double()
    x_T = MU + torch.ones_like(DATA_STDS) * sigma_max
    exact = MU + (x_T - MU) * DATA_STDS / (s2 + sigma_max**2).sqrt()
    out = sampler(lambda x, sigma: MU + s2 / (s2 + sigma**2) * (x - MU), x_T, sigmas)
    assert out.dtype == torch.float64
    return ((out - MU) / (exact - MU) - 1).abs().max().item()


def test_samplers_converge_to_the_gaussian_ode_solution() -> None:
    """On the SVD grid (0.002..700): errors vanish with the observed order of each method.

    Halving the step (n -> 2n) divides a first-order method's error by ~2 and a second-order
    method's by ~4 once steps are in the asymptotic regime (here from ~40 steps). Measured at
    80 steps: Euler 5.1e-2, Heun 5.0e-3, DPM++2M 5.3e-3; tolerances are 1.5x those.
    """
    errors = {name: [gaussian_solve(f, n, 700.0) for n in (40, 80, 160)] for name, f in ODE_SAMPLERS.items()}
    for name, (e40, e80, e160) in errors.items():
        order = math.log2(e80 / e160)
        expected_order = 1 if name == "euler" else 2
        assert abs(order - expected_order) < 0.15, (name, order)
        assert e160 < e80 < e40
    assert errors["euler"][1] < 7.7e-2
    assert errors["heun"][1] < 7.5e-3
    assert errors["dpmpp_2m"][1] < 8.0e-3


def test_euler_ancestral_samples_the_gaussian_data_distribution() -> None:
    """The ancestral sampler solves no ODE (its result depends on the fresh noise), but with the ideal
    denoiser for data ~ N(MU, s^2) its samples must have that distribution: mean MU, std s, up to
    a first-order discretisation error. A wrong split of the noise (sigma_down, sigma_up) leaves
    the marginal noise level off at every step and does not converge to s.

    20,000 samples per dimension (standard error of a std: 0.5%). Measured std / s: 25 steps
    0.79-0.83, 100 steps 0.94-0.95, 400 steps 0.98-0.99.
    """
    s2 = DATA_STDS**2

    def stds(num_steps: int) -> torch.Tensor:
        sigmas = karras_sigmas(num_steps, sigma_max=80.0).double()
        g = torch.Generator().manual_seed(0)
        x_T = MU + torch.randn(20_000, 3, generator=g, dtype=torch.float64) * (s2 + 80.0**2).sqrt()
        out = sample_euler_ancestral(lambda x, sigma: MU + s2 / (s2 + sigma**2) * (x - MU), x_T, sigmas, generator=g)
        assert ((out.mean(0) - MU).abs() < 0.03 * DATA_STDS).all(), out.mean(0)
        return out.std(0) / DATA_STDS

    coarse, fine = stds(25), stds(400)
    assert ((fine - 1).abs() < 0.03).all(), fine
    assert ((coarse - 1).abs() > 2 * (fine - 1).abs()).all(), (coarse, fine)


def test_second_order_samplers_beat_euler_at_few_steps() -> None:
    """At 10 steps on a sigma_max = 10 grid, Heun and DPM++2M are ~2x more accurate than Euler.

    Measured: Euler 1.9e-1, Heun 9.1e-2, DPM++2M 9.8e-2; at 20 steps 9.5e-2 vs 1.9e-2 / 2.1e-2.
    (On the full SVD grid to sigma_max = 700, 10 steps are too coarse in the sigma ~ s region for
    Heun's 2nd-order term to pay off: Euler 3.6e-1, Heun 5.4e-1, DPM++2M 2.1e-1; hence the
    smaller range here. The convergence test above covers the SVD grid.)
    """
    samplers = (sample_euler, sample_heun, sample_dpmpp_2m)
    euler, heun, dpm = (gaussian_solve(f, 10, 10.0) for f in samplers)
    assert heun < 0.6 * euler and dpm < 0.6 * euler
    assert euler < 0.25 and heun < 0.12 and dpm < 0.13
    euler20, heun20, dpm20 = (gaussian_solve(f, 20, 10.0) for f in samplers)
    assert heun20 < 0.3 * euler20 and dpm20 < 0.3 * euler20


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_callback_and_last_step_lands_on_denoised(name: str) -> None:
    seen: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []
    network = ToyNetwork(2)
    denoiser = Denoiser(network)
    sigmas = karras_sigmas(6)
    x = torch.randn(2, 2, 3, 3) * init_noise_scale(sigmas)
    out = SAMPLERS[name](lambda x, s: denoiser(x, s), x, sigmas, callback=lambda *a: seen.append(a))
    assert [(i, n) for i, n, _, _ in seen] == [(i, 6) for i in range(6)]
    assert torch.equal(out, seen[-1][2]) and torch.equal(out, seen[-1][3])


def test_samplers_reject_bad_grids() -> None:
    x = torch.zeros(1, 1)
    with pytest.raises(InputError):
        sample_euler(lambda x, s: x, x, torch.tensor([0.0, 1.0]))
    with pytest.raises(InputError):
        sample_euler(lambda x, s: x, x, torch.tensor([1.0]))


# ---------------------------------------------------------------------------------------------
# guidance


def test_ramps() -> None:
    assert linear_ramp(1.0, 2.5, 4).tolist() == [1.0, 1.5, 2.0, 2.5]
    assert torch.equal(linear_ramp(1.5, 3.0, 25), torch.linspace(1.5, 3.0, 25))
    assert triangle_ramp(1.0, 3.0, 5).tolist() == [1.0, 2.0, 3.0, 2.0, 1.0]
    # even t: the peak falls between the middle frames, u = 1/3 and 2/3 both reach 2/3 of the way
    torch.testing.assert_close(triangle_ramp(1.0, 3.0, 4), torch.tensor([1.0, 7 / 3, 7 / 3, 1.0]))
    # period 1/2: two teeth, u = 0, .25, .5, .75, 1 -> w = 0, 1, 0, 1, 0
    two_teeth = triangle_ramp(0.0, 1.0, 5, period=0.5)
    torch.testing.assert_close(two_teeth, torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0]))


def _video_cond(b: int, t: int) -> Cond:
    g = torch.Generator().manual_seed(5)
    return make_cond(
        image_embedding=torch.randn(b, 1, 8, generator=g),
        image_latent=torch.randn(b, 4, 3, 3, generator=g),
        vector=torch.randn(b, 12, generator=g),
        num_frames=t,
    )


class RecordingCondDenoiser:
    """D(x, sigma, cond) = x / (1 + sigma) + concat + mean(crossattn): affine in the conditioning."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, Cond, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        self.calls.append((x.shape[0], cond, torch.as_tensor(sigma)))
        sigma = torch.as_tensor(sigma)
        sigma = sigma.reshape(-1, 1, 1, 1) if sigma.ndim else sigma
        return x / (1 + sigma) + cond.concat + cond.crossattn.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)


def test_guided_denoiser_per_frame_scale() -> None:
    b, t = 2, 3
    cond = _video_cond(b, t)
    uncond = cond.zeroed()
    inner = RecordingCondDenoiser()
    scale = linear_ramp(1.0, 2.0, t)  # 1.0, 1.5, 2.0
    guided = GuidedDenoiser(inner, cond, uncond, scale)
    x = torch.randn(b * t, 4, 3, 3, generator=torch.Generator().manual_seed(6))
    out = guided(x, torch.tensor(0.5))

    # one forward on [uncond, cond]: 2 (b t) rows, uncond first
    assert len(inner.calls) == 1
    rows, cond2, _ = inner.calls[0]
    assert rows == 2 * b * t
    assert torch.equal(cond2.concat[: b * t], uncond.concat)
    assert torch.equal(cond2.concat[b * t :], cond.concat)

    # by hand: D_u = x/1.5 (zeroed conditioning), D_c - D_u = concat + mean(crossattn)
    for video in range(b):
        for frame, s in enumerate([1.0, 1.5, 2.0]):
            r = video * t + frame  # frames fastest
            delta = cond.concat[r] + cond.crossattn[r].mean()
            torch.testing.assert_close(out[r], x[r] / 1.5 + s * delta)


def test_guided_denoiser_per_sample_sigma_and_float_scale() -> None:
    b, t = 1, 4
    cond = _video_cond(b, t)
    inner = RecordingCondDenoiser()
    x = torch.randn(b * t, 4, 3, 3)
    sigma = torch.tensor([0.1, 0.2, 0.3, 0.4])
    out_float = GuidedDenoiser(inner, cond, cond.zeroed(), 2.5)(x, sigma)
    assert inner.calls[-1][2].tolist() == pytest.approx(sigma.tolist() * 2)  # sigma doubled too
    out_tensor = GuidedDenoiser(inner, cond, cond.zeroed(), torch.full((t,), 2.5))(x, sigma)
    torch.testing.assert_close(out_float, out_tensor, atol=0, rtol=0)


def test_guidance_skips_uncond_at_scale_one() -> None:
    b, t = 2, 3
    cond = _video_cond(b, t)
    uncond = cond.zeroed()
    x = torch.randn(b * t, 4, 3, 3)
    inner = RecordingCondDenoiser()
    out = GuidedDenoiser(inner, cond, uncond, linear_ramp(1.0, 1.0, t))(x, torch.tensor(2.0))
    assert len(inner.calls) == 1 and inner.calls[0][0] == b * t  # the cond half only
    # equals the full guided computation D_u + 1 * (D_c - D_u)
    d_u, d_c = inner(torch.cat([x, x]), torch.tensor(2.0), Cond.cat([uncond, cond])).chunk(2)
    torch.testing.assert_close(out, d_u + 1.0 * (d_c - d_u), atol=1e-6, rtol=0)
    # a plain float 1.0 skips too; any other scale does not
    inner.calls.clear()
    GuidedDenoiser(inner, cond, uncond, 1.0)(x, 2.0)
    GuidedDenoiser(inner, cond, uncond, linear_ramp(1.0, 1.01, t))(x, 2.0)
    assert [c[0] for c in inner.calls] == [b * t, 2 * b * t]


def test_guidance_rejects_wrong_scale_length() -> None:
    cond = _video_cond(1, 3)
    with pytest.raises(InputError):
        GuidedDenoiser(RecordingCondDenoiser(), cond, cond.zeroed(), linear_ramp(1.0, 2.0, 4))


def test_anchored_denoiser_is_the_plain_one_on_the_residual_and_plain_without_an_image() -> None:
    """D(x) = a + D_0(x - a), a = anchor_scale * concat; a dropped image (zero concat) gives D_0."""
    from types import SimpleNamespace

    def network(x_in: torch.Tensor, c_noise: torch.Tensor, cond) -> torch.Tensor:
        return 0.3 * x_in + c_noise[:, None, None, None] + 0.1 * cond.concat

    g = torch.Generator().manual_seed(0)
    x, concat = torch.randn(6, 4, 5, 5, generator=g), torch.randn(6, 4, 5, 5, generator=g)
    cond, dropped = SimpleNamespace(concat=concat), SimpleNamespace(concat=torch.zeros_like(concat))
    plain, anchored = Denoiser(network), Denoiser(network, "v_edm", anchor_scale=0.5)
    torch.testing.assert_close(anchored(x, 0.7, cond), 0.5 * concat + plain(x - 0.5 * concat, 0.7, cond))
    torch.testing.assert_close(anchored(x, 0.7, dropped), plain(x, 0.7, dropped))
    # A network that outputs nothing: at the highest noise level the anchored D is the image's
    # latent, the plain one nothing.
    silent = lambda x_in, c_noise, cond: torch.zeros_like(x_in)  # noqa: E731
    torch.testing.assert_close(Denoiser(silent, "v_edm", 0.5)(x, 1e4, cond), 0.5 * concat, atol=1e-6, rtol=0)
    torch.testing.assert_close(Denoiser(silent)(x, 1e4, cond), torch.zeros_like(x), atol=1e-6, rtol=0)
