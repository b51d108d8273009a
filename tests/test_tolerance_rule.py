"""The tolerance rule of rnn_fused.tools.testing: what it accepts and what it rejects."""

from __future__ import annotations

import pytest
import torch

from rnn_fused.tools.testing import DEFAULT_ULPS, assert_within_tolerance, measure

REFERENCE = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
EPS32 = torch.finfo(torch.float32).eps


def _offset(delta):
    return (REFERENCE + torch.tensor([0.0, delta, 0.0], dtype=torch.float64)).float()


def test_accepts_up_to_twice_stock_error_plus_floor():
    stock = _offset(1e-4)
    floor = DEFAULT_ULPS * EPS32 * 2.0
    result = assert_within_tolerance(REFERENCE, stock, _offset(2e-4 + 0.9 * floor))
    assert result.stock_error == pytest.approx(1e-4, rel=1e-3)
    assert result.floor == pytest.approx(floor)


def test_rejects_beyond_the_bound_and_reports_the_errors():
    stock = _offset(1e-4)
    with pytest.raises(AssertionError) as info:
        assert_within_tolerance(REFERENCE, stock, _offset(3e-4), name="h_n")
    message = str(info.value)
    assert "h_n" in message and "ours 3.0" in message and "stock 1.0" in message


def test_floor_allows_a_few_ulps_when_stock_is_exact():
    exact = REFERENCE.float()
    assert_within_tolerance(REFERENCE, exact, _offset(2 * EPS32 * 2.0))
    with pytest.raises(AssertionError):
        assert_within_tolerance(REFERENCE, exact, _offset(4 * DEFAULT_ULPS * EPS32 * 2.0))


def test_floor_scales_with_dtype():
    half = measure(REFERENCE, REFERENCE.half(), REFERENCE.half())
    single = measure(REFERENCE, REFERENCE.float(), REFERENCE.float())
    assert half.floor / single.floor == pytest.approx(
        torch.finfo(torch.float16).eps / torch.finfo(torch.float32).eps)


def test_nan_is_rejected():
    ours = REFERENCE.float().clone()
    ours[0] = float("nan")
    with pytest.raises(AssertionError):
        assert_within_tolerance(REFERENCE, REFERENCE.float(), ours)


def test_shape_and_dtype_mismatch_are_rejected():
    with pytest.raises(AssertionError, match="shapes differ"):
        measure(REFERENCE, REFERENCE.float(), REFERENCE[:2].float())
    with pytest.raises(AssertionError, match="dtypes differ"):
        measure(REFERENCE, REFERENCE.float(), REFERENCE)
