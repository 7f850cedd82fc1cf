import math

import pytest
import torch
from hydra.utils import instantiate

import gpo.losses as losses
from conftest import compose_train

# Closed forms from the GPO paper's table (t = beta * rho).
CLOSED_FORMS = {
    losses.Logistic: lambda t: math.log(1 + math.exp(-t)),
    losses.Squared: lambda t: (t - 1) ** 2,
    losses.Hinge: lambda t: max(0.0, 1 - t),
    losses.Exponential: lambda t: math.exp(-t),
    losses.TruncatedQuadratic: lambda t: max(0.0, 1 - t) ** 2,
    losses.Savage: lambda t: 1 / (1 + math.exp(t)) ** 2,
}
TABLE = {  # f'(0), f''(0), f''(0)/|f'(0)| as printed in the paper's table
    losses.Logistic: (-1 / 2, 1 / 4, 1 / 2),
    losses.Squared: (-2, 2, 1),
    losses.Hinge: (-1, 0, 0),
    losses.Exponential: (-1, 1, 1),
    losses.TruncatedQuadratic: (-2, 2, 1),
    losses.Savage: (-1 / 4, 1 / 8, 1 / 2),
}
CONFIG_NAMES = {
    "dpo": losses.Logistic, "ipo": losses.Squared, "slic": losses.Hinge, "exponential": losses.Exponential,
    "truncated_quadratic": losses.TruncatedQuadratic, "savage": losses.Savage,
}


@pytest.mark.parametrize("family", list(CLOSED_FORMS))
def test_values_match_closed_form(family):
    f = family()
    for t in [-3.0, -0.7, -0.1, 0.0, 0.3, 0.999, 1.5, 4.0]:
        got = f(torch.tensor(t, dtype=torch.float64)).item()
        assert got == pytest.approx(CLOSED_FORMS[family](t), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("family", list(CLOSED_FORMS))
def test_taylor_coefficients_match_table_and_autograd(family):
    f = family()
    df0, d2f0, scale = TABLE[family]
    assert f.f0 == pytest.approx(CLOSED_FORMS[family](0.0))
    assert (f.df0, f.d2f0, f.regularisation_scale) == pytest.approx((df0, d2f0, scale))

    t = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    (first,) = torch.autograd.grad(f(t), t, create_graph=True)
    (second,) = torch.autograd.grad(first, t, allow_unused=True)
    second = torch.zeros(()) if second is None else second  # hinge: piecewise linear
    assert first.item() == pytest.approx(f.df0, abs=1e-12)
    assert second.item() == pytest.approx(f.d2f0, abs=1e-12)


@pytest.mark.parametrize("family", [losses.Logistic, losses.Exponential, losses.Savage, losses.Squared])
def test_smooth_families_second_derivative_by_finite_differences(family):
    f, h = family(), 1e-4
    t = torch.tensor([-h, 0.0, h], dtype=torch.float64)
    fm, f0, fp = f(t).tolist()
    assert (fp - 2 * f0 + fm) / h**2 == pytest.approx(f.d2f0, rel=1e-4, abs=1e-6)


def test_savage_is_decreasing_but_not_convex_below_minus_log_two():
    f = losses.Savage()
    t = torch.linspace(-5, 5, 1001, dtype=torch.float64)
    assert (f(t).diff() < 0).all()
    second = f(t).diff().diff()
    assert (second[t[1:-1] < -math.log(2) - 0.05] < 0).all() and (second[t[1:-1] > -math.log(2) + 0.05] > 0).all()


@pytest.mark.parametrize("name", sorted(CONFIG_NAMES))
def test_each_loss_config_instantiates_its_family(name):
    cfg = compose_train([f"loss={name}"])
    assert type(instantiate(cfg.loss)) is CONFIG_NAMES[name]
