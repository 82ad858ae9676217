"""The exact Student-t quantile against printed tables and closed forms; the t interval of a mean."""

from __future__ import annotations

import math

import pytest

from ebmm_rl.stats import betainc, mean_ci, t_cdf, t_quantile

# two-sided 95% and 99% critical values as printed in t tables (e.g. NIST/SEMATECH e-Handbook, Table 1.4.2.4.3)
TABLE_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 10: 2.228, 20: 2.086, 30: 2.042, 100: 1.984}
TABLE_995 = {1: 63.657, 2: 9.925, 5: 4.032, 10: 3.169, 30: 2.750}


@pytest.mark.parametrize(("table", "p"), [(TABLE_975, 0.975), (TABLE_995, 0.995)])
def test_quantile_matches_the_printed_table(table, p):
    for df, printed in table.items():
        assert t_quantile(p, df) == pytest.approx(printed, abs=5e-4), df


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.999])
def test_quantile_matches_the_closed_forms(p):
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-11)  # Cauchy
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-11)
    assert t_quantile(1 - p, 7) == pytest.approx(-t_quantile(p, 7), rel=1e-12)


def test_quantile_tends_to_the_normal_one():
    assert t_quantile(0.975, 1e7) == pytest.approx(1.959963984540054, abs=1e-6)
    assert t_quantile(0.5, 3) == pytest.approx(0.0, abs=1e-12)


def test_cdf_and_incomplete_beta_against_closed_forms():
    for t in (-3.0, -0.5, 0.0, 0.7, 4.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-13)  # Cauchy CDF
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-13)
    for x in (0.01, 0.3, 0.8, 0.99):
        assert betainc(1.0, 1.0, x) == pytest.approx(x, rel=1e-13)
        assert betainc(2.0, 3.0, x) == pytest.approx(6 * x**2 - 8 * x**3 + 3 * x**4, rel=1e-12)  # by integration
    with pytest.raises(ValueError, match="0 < p < 1"):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile(0.9, 0)


def test_mean_ci_by_hand():
    mean, half = mean_ci([1.0, 2.0, 6.0])  # mean 3, s = sqrt(7); t_{0.975, 2} = 0.95 / sqrt(2 * 0.975 * 0.025)
    assert mean == pytest.approx(3.0)
    assert half == pytest.approx(0.95 / math.sqrt(0.04875) * math.sqrt(7.0) / math.sqrt(3.0), rel=1e-11)
    assert mean_ci([0.4]) == (0.4, 0.0)
