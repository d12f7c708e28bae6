import torch
from torch.distributions import Normal, kl_divergence

from danvae.models.kl import dual_prior_llr, kl_between, kl_to_isotropic


def _diag(mu, logvar):
    return torch.distributions.Independent(Normal(mu, (0.5 * logvar).exp()), 1)


def test_kl_to_standard_normal_matches_torch():
    torch.manual_seed(0)
    mu, logvar = torch.randn(16, 7) * 2, torch.randn(16, 7)
    ref = kl_divergence(_diag(mu, logvar), _diag(torch.zeros_like(mu), torch.zeros_like(logvar)))
    torch.testing.assert_close(kl_to_isotropic(mu, logvar), ref)


def test_kl_to_anomaly_prior_matches_torch():
    torch.manual_seed(1)
    mu, logvar = torch.randn(16, 5) * 3, torch.randn(16, 5)
    m = 10.0
    ref = kl_divergence(_diag(mu, logvar), _diag(torch.full_like(mu, m), torch.zeros_like(logvar)))
    torch.testing.assert_close(kl_to_isotropic(mu, logvar, m), ref)


def test_kl_with_per_sample_prior_mean_mixes_both_priors():
    torch.manual_seed(2)
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3)
    means = torch.tensor([[0.0], [10.0], [0.0], [10.0]])
    got = kl_to_isotropic(mu, logvar, means)
    torch.testing.assert_close(got[1], kl_to_isotropic(mu[1:2], logvar[1:2], 10.0)[0])
    torch.testing.assert_close(got[0], kl_to_isotropic(mu[0:1], logvar[0:1])[0])


def test_kl_between_diagonal_gaussians_matches_torch():
    torch.manual_seed(3)
    a, b, c, d = (torch.randn(32, 8) for _ in range(4))
    torch.testing.assert_close(kl_between(a, b, c, d), kl_divergence(_diag(a, b), _diag(c, d)))


def test_dual_prior_llr_is_expected_log_density_ratio():
    torch.manual_seed(4)
    mu, logvar = torch.randn(6, 4), torch.randn(6, 4)
    q = Normal(mu, (0.5 * logvar).exp())
    z = q.sample((20000,))
    mc = (Normal(10.0, 1.0).log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1).mean(0)
    torch.testing.assert_close(dual_prior_llr(mu, 10.0), mc, rtol=0.02, atol=2.0)
