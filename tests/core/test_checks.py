import pytest

from core.checks import at_least, in_unit_interval, one_of


def test_at_least_names_every_value_below_the_floor():
    at_least(0, a=0, b=0.5)
    with pytest.raises(ValueError, match=r"these must be >= 1: \['a', 'c'\]"):
        at_least(1, a=0, b=1, c=-0.5)
    with pytest.raises(ValueError, match=r"\['w'\]"):
        at_least(0, w=-0.25)  # a negative fraction is not rounded up to 0


def test_one_of_and_the_unit_interval_name_the_field_and_its_value():
    one_of(("a", "b"), x="a")
    with pytest.raises(ValueError, match=r"x must be one of \('a', 'b'\), got 'c'"):
        one_of(("a", "b"), x="c")
    in_unit_interval(p=0.0, q=0.99)
    with pytest.raises(ValueError, match=r"q must be in \[0, 1\), got 1.0"):
        in_unit_interval(p=0.5, q=1.0)
