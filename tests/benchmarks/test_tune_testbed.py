"""The tuning rule of ``benchmarks.tune_testbed``: the same for every method, blind to no collapse."""

from __future__ import annotations

from benchmarks.tune_testbed import choose, grid_points


def _row(name: str, erased: float, others: float, fid: float) -> dict:
    return {"name": name, "erased": erased, "others": others, "fid_base_kept": fid}


def test_choose_prefers_the_lowest_fid_among_erasing_points():
    rows = [_row("a", 0.0, 0.99, 3.0), _row("b", 0.04, 0.99, 1.0), _row("c", 0.5, 1.0, 0.2)]
    chosen = choose(rows, 0.05, others_floor=0.95)
    assert chosen["name"] == "b" and chosen["erases"] and chosen["keeps_others"]


def test_choose_never_picks_a_wrecked_model_that_keeps_nothing():
    # round 4's grad_ascent: the only point that erased had left 19% of the other digits
    rows = [_row("gentle", 0.67, 0.997, 10.4), _row("wrecked", 0.0, 0.19, 71.0)]
    chosen = choose(rows, 0.05, others_floor=0.95)
    assert chosen["name"] == "gentle" and not chosen["erases"] and chosen["keeps_others"]
    assert choose(rows, 0.05)["name"] == "wrecked"  # without a floor the old rule took it


def test_choose_says_so_when_no_point_keeps_the_floor():
    rows = [_row("a", 0.0, 0.5, 9.0), _row("b", 0.3, 0.6, 2.0)]
    chosen = choose(rows, 0.05, others_floor=0.95)
    assert chosen["name"] == "a" and chosen["erases"] and not chosen["keeps_others"]


def test_grid_points_cover_the_product_in_a_fixed_order():
    points = grid_points({"lr": [1, 2], "epochs": [10, 20, 30]})
    assert len(points) == 6 and points[0] == {"epochs": 10, "lr": 1} and points[-1] == {"epochs": 30, "lr": 2}
