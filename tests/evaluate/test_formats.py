"""The one way reports write intervals and p-values."""

from __future__ import annotations

from imgclf.evaluate.stats import format_interval, format_p


def test_intervals_and_p_values_read_the_same_in_every_report():
    assert format_interval(0.97123, (0.968, 0.97449)) == "0.9712 [0.9680, 0.9745]"
    assert [format_p(p) for p in (1.0, 0.04321, 3.2e-12, 0.0)] == ["1", "0.0432", "3.2e-12", "< 1e-300"]
