"""roadwork.validation: the shared argument checks accept what their rule allows and name what they refuse."""

from __future__ import annotations

import math

import numpy as np
import pytest

from roadwork.validation import check_finite, check_fraction, check_int


def test_check_int_takes_python_and_numpy_ints_inside_the_bounds() -> None:
    assert check_int(3, "n", 1) == 3 and type(check_int(np.int64(3), "n", 1)) is int
    assert check_int(100, "q", 1, 100) == 100 and check_int(0, "n", 0) == 0


@pytest.mark.parametrize(
    ("value", "high", "error", "match"),
    [
        (True, None, TypeError, "n must be an int, got bool"),
        (2.0, None, TypeError, "n must be an int, got float"),
        ("2", None, TypeError, "n must be an int, got str"),
        (0, None, ValueError, "n must be >= 1, got 0"),
        (9, 8, ValueError, r"n must be in \[1, 8\], got 9"),
    ],
)
def test_check_int_refuses_naming_the_argument(
    value: object, high: int | None, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        check_int(value, "n", 1, high)


def test_check_fraction_open_or_half_open_at_zero() -> None:
    assert check_fraction(0.0, "f", allow_zero=True) == 0.0
    assert check_fraction(np.float32(0.5), "f", allow_zero=False) == 0.5
    for value, allow_zero in ((0.0, False), (1.0, True), (-0.1, True), (math.nan, True), (math.inf, False)):
        with pytest.raises(ValueError, match=r"f must be in [\[(]0, 1\)"):
            check_fraction(value, "f", allow_zero=allow_zero)
    with pytest.raises(TypeError, match="f must be a float; got bool"):
        check_fraction(False, "f", allow_zero=True)


def test_check_finite() -> None:
    assert check_finite(np.int64(-2), "t") == -2.0 and isinstance(check_finite(1, "t"), float)
    with pytest.raises(ValueError, match="t must be finite; got inf"):
        check_finite(math.inf, "t")
    with pytest.raises(TypeError, match="t must be a finite number; got NoneType"):
        check_finite(None, "t")
