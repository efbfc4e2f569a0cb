"""The survey's unified comparison: formulas, test vectors and both published tables.

The expected values below are transcribed from docs/comparison.md
(the paper's tables), not computed by the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from thresher.evaluation import (
    L_BASE,
    OTHER_BENCH_MAP,
    SAME_BENCH_MAP,
    Feasibility,
    FlexibilityWeights,
    LinearMap,
    Method,
    SimplicityWeights,
    compare_methods,
    dense_rank,
    feasibility_ranks,
    flexibility_penalty,
    leaderboard,
    mean_ratio,
    perpendicular_distance,
    pir,
    published,
    residual,
    sdf,
    simplicity_penalty,
)

# name: (SDF, PIR, residual to 4 decimals, efficiency rank) -- the efficiency table.
EFFICIENCY_TABLE = {
    "IFD": (0.05, 1.747, +0.3144, 1),
    "LESS": (0.05, 1.491, +0.0584, 2),
    "Superfiltering": (0.05, 1.475, +0.0424, 3),
    "SelectIT": (0.20, 1.653, +0.0250, 4),
    "InstructionGPT-4": (0.058, 1.443, 0.0, 5),
    "Instruction-Mining": (0.025, 1.400, 0.0, 5),
    "SHED": (0.09, 1.460, -0.0247, 6),
    "Nuggets": (0.145, 1.519, -0.0374, 7),
    "InsTag": (0.02, 1.344, -0.0495, 8),
    "CaR": (0.0196, 1.343, -0.0500, 9),
    "DEITA": (0.10, 1.426, -0.0717, 10),
    "AlpaGasus": (0.173, 1.284, -0.3088, 11),
}

# name: (trained LLMs, small, steps, public code, simpl. penalty, simpl. rank, model-free, dataset-free,
#        no proprietary judge, flex. penalty, flex. rank, feasibility rank) -- the feasibility table.
FEASIBILITY_TABLE = {
    "AlpaGasus": (0, False, 2, False, 3, 1, True, True, False, 1, 2, 1),
    "CaR": (0, False, 4, True, 4, 2, True, True, True, 0, 1, 1),
    "Nuggets": (0, False, 4, True, 4, 2, True, True, True, 0, 1, 1),
    "SelectIT": (0, False, 4, True, 4, 2, True, True, True, 0, 1, 1),
    "InsTag": (0, False, 3, False, 4, 2, True, True, False, 1, 2, 2),
    "Superfiltering": (1, True, 3, True, 4.5, 3, False, False, True, 5, 4, 3),
    "IFD": (1, False, 3, True, 5, 4, False, False, True, 5, 4, 4),
    "LESS": (1, False, 4, True, 6, 5, False, False, True, 5, 4, 5),
    "InstructionGPT-4": (30, False, 4, True, 64, 7, False, True, False, 4, 3, 6),
    "DEITA": (2, False, 5, True, 9, 6, False, False, False, 6, 5, 7),
    "Instruction-Mining": (129, False, 4, False, 200, 8, False, True, False, 4, 3, 7),
    "SHED": (500, False, 3, True, 200, 8, False, False, True, 5, 4, 8),
}


# ---------------------------------------------------------------- test vectors
def test_pir_same_win_vector():
    assert pir("same_win", [1.2, 3], [4]) == pytest.approx(0.525, abs=1e-12)


def test_pir_same_win_cherry_counts():
    wins = [44, 85, 102, 111, 165]
    losses = [21, 59, 62, 80, 76]
    assert pir("same_win", wins, losses) == pytest.approx(1.7479, abs=5e-5)
    assert round(pir("same_win", wins, losses), 3) == 1.748  # the paper rounds down to 1.747


def test_linear_maps_from_anchors():
    assert SAME_BENCH_MAP(1.0) == pytest.approx(1.443689, abs=1e-6)
    assert SAME_BENCH_MAP(0.949) == pytest.approx(1.284, abs=1e-12)
    assert SAME_BENCH_MAP(1.01) == pytest.approx(1.475, abs=1e-12)
    assert SAME_BENCH_MAP.slope == pytest.approx(3.131148, abs=1e-6)
    assert SAME_BENCH_MAP.intercept == pytest.approx(-1.687459, abs=1e-6)
    assert OTHER_BENCH_MAP(1.0) == pytest.approx(1.426, abs=1e-12)
    assert OTHER_BENCH_MAP(0.985) == pytest.approx(1.344, abs=1e-12)
    assert OTHER_BENCH_MAP.slope == pytest.approx(5.466667, abs=1e-6)
    assert OTHER_BENCH_MAP.intercept == pytest.approx(-4.040667, abs=1e-6)
    # through pir(): one evaluation set with r = 1
    assert pir("same_bench", [0.7], [0.7]) == pytest.approx(1.443689, abs=1e-6)
    assert pir("other_bench", [2.0, 3.0], [2.0, 3.0]) == pytest.approx(1.426, abs=1e-12)


def test_maps_follow_their_anchors():
    m = LinearMap((0.0, 1.0), (2.0, 5.0))
    assert m.slope == 2.0 and m.intercept == 1.0 and m(1.0) == 3.0
    assert pir("same_bench", [2.0], [1.0], same_bench_map=m) == 5.0


def test_l_base():
    assert L_BASE.slope == pytest.approx(1.303030, abs=1e-6)
    assert L_BASE.intercept == pytest.approx(1.367424, abs=1e-6)
    assert residual(0.05, 1.747) == pytest.approx(0.3144, abs=5e-5)
    assert residual(0.173, 1.284) == pytest.approx(-0.3088, abs=5e-5)
    d = perpendicular_distance(0.05, 1.747)
    assert d == pytest.approx(residual(0.05, 1.747) / math.sqrt(1 + L_BASE.slope**2), rel=1e-12)
    assert perpendicular_distance(0.173, 1.284) < 0


def test_sdf():
    assert sdf(5, 100) == 0.05
    assert sdf(100, 100) == 1.0


def test_mean_ratio_broadcast_and_lists():
    assert mean_ratio([1.0, 2.0], [2.0, 4.0]) == 0.5
    assert mean_ratio([1.0, 2.0], 2.0) == 0.75
    assert mean_ratio(3.0, [1.5]) == 2.0


# ---------------------------------------------------------------- ranks
def test_dense_rank_ties_share():
    assert dense_rank([3, 1, 2, 1]).tolist() == [3, 1, 2, 1]
    assert dense_rank([3, 1, 2, 1], descending=True).tolist() == [1, 3, 2, 3]
    assert dense_rank([0.1 + 0.2, 0.3]).tolist() == [1, 1]  # float noise is a tie
    assert dense_rank([]).tolist() == []
    assert dense_rank([5.0]).tolist() == [1]
    with pytest.raises(ValueError, match="NaN"):
        dense_rank([1.0, float("nan")])


# ---------------------------------------------------------------- published tables
def test_efficiency_table_reproduced():
    t = leaderboard()
    assert sorted(t["name"]) == sorted(EFFICIENCY_TABLE)
    for _, row in t.iterrows():
        s, p, res, rank = EFFICIENCY_TABLE[row["name"]]
        assert row["sdf"] == s and row["pir"] == p
        assert round(row["residual"], 4) == pytest.approx(res, abs=1e-12), row["name"]
        assert row["efficiency_rank"] == rank, row["name"]
        # perpendicular distance ranks the same way
    order_res = t.sort_values("residual", ascending=False)["name"].tolist()
    order_dist = t.sort_values("distance", ascending=False)["name"].tolist()
    assert order_res == order_dist


def test_feasibility_table_reproduced():
    t = leaderboard().set_index("name")
    for name, (llms, small, steps, code, sp, sr, mf, df, noprop, fp, fr, feas) in FEASIBILITY_TABLE.items():
        row = t.loc[name]
        assert (row["trained_llms"], row["small_proxy"], row["steps"], row["public_code"]) == (llms, small, steps, code)
        assert (row["model_free"], row["dataset_free"], not row["proprietary_judge"]) == (mf, df, noprop)
        assert row["simplicity_penalty"] == sp, name
        assert row["simplicity_rank"] == sr, name
        assert row["flexibility_penalty"] == fp, name
        assert row["flexibility_rank"] == fr, name
        assert row["feasibility_rank"] == feas, name


def test_mods_excluded_explicitly_and_includable():
    names = [p.name for p in published()]
    assert "MoDS" not in names and len(names) == 12
    mods = [p for p in published(include_excluded=True) if p.name == "MoDS"][0]
    assert mods.excluded and "outlier" in mods.exclusion_reason
    t = leaderboard(include_excluded=True).set_index("name")
    assert t.loc["MoDS", "efficiency_rank"] == 1  # PIR 3.337 tops the board
    assert t.loc["IFD", "efficiency_rank"] == 2
    assert t.loc["MoDS", "feasibility_rank"] is None or str(t.loc["MoDS", "feasibility_rank"]) == "<NA>"
    # feasibility ranks of the twelve unchanged by MoDS (no published feasibility inputs)
    assert t.loc["SHED", "feasibility_rank"] == 8


def test_less_pir_disputed_recorded():
    less = [p for p in published() if p.name == "LESS"][0]
    assert less.pir == 1.491 and "1.57" in less.disputed["pir"]


def test_user_method_placed_among_published():
    f = Feasibility(trained_llms=0, steps=1, model_free=True, dataset_free=True, proprietary_judge=False)
    t = leaderboard(extra=[Method("mine", 0.05, 1.6, f, user=True)]).set_index("name")
    assert t.loc["IFD", "efficiency_rank"] == 1 and t.loc["mine", "efficiency_rank"] == 2
    assert t.loc["LESS", "efficiency_rank"] == 3
    # simplicity penalty 1 -> strictly simplest; flexibility 0 shares rank 1
    assert t.loc["mine", "simplicity_rank"] == 1 and t.loc["mine", "flexibility_rank"] == 1
    assert t.loc["mine", "feasibility_rank"] == 1
    assert t.loc["AlpaGasus", "simplicity_rank"] == 2


# ---------------------------------------------------------------- penalties
def test_penalty_special_cases_are_parameters():
    small = Feasibility(1, 3, False, False, False, small_proxy=True)
    assert simplicity_penalty(small) == 4.5
    assert simplicity_penalty(small, SimplicityWeights(small_proxy_llm=2.0)) == 5.0
    many = Feasibility(101, 3, False, True, False)
    assert simplicity_penalty(many) == 200.0
    assert simplicity_penalty(Feasibility(100, 3, False, True, False)) == 203.0  # cap is "more than 100"
    assert simplicity_penalty(many, SimplicityWeights(cap_llms=1000)) == 2 * 101 + 3
    assert simplicity_penalty(many, SimplicityWeights(cap_penalty=150.0)) == 150.0
    assert flexibility_penalty(Feasibility(0, 1, False, False, True)) == 6.0
    assert flexibility_penalty(Feasibility(0, 1, False, False, True), FlexibilityWeights(1, 1, 1)) == 3.0


def test_feasibility_ranks_dense():
    fs = [
        Feasibility(0, 2, True, True, True, public_code=False),
        Feasibility(0, 4, True, True, False),
        Feasibility(0, 4, True, True, False),
    ]
    r = feasibility_ranks(fs)
    assert r["simplicity_rank"].tolist() == [1, 2, 2]
    assert r["flexibility_rank"].tolist() == [2, 1, 1]
    assert r["feasibility_rank"].tolist() == [1, 1, 1]


def test_compare_methods_input_order_and_empty_feasibility():
    ms = [Method("b", 0.5, 2.0, None), Method("a", 0.1, 1.0, Feasibility(0, 1, True, True, False))]
    t = compare_methods(ms)
    assert t["name"].tolist() == ["b", "a"]
    assert t["efficiency_rank"].tolist() == [1, 2]
    assert t.loc[1, "feasibility_rank"] == 1 and np.isnan(t.loc[0, "simplicity_penalty"])


# ---------------------------------------------------------------- bad input
def test_unknown_setting():
    with pytest.raises(ValueError, match="setting: unknown setting 'same_judge'"):
        pir("same_judge", [1.0], [1.0])


def test_other_win_not_supported():
    with pytest.raises(ValueError, match="setting: 'other_win'.*not supported"):
        pir("other_win", [10], [5])


def test_blm_length_mismatch():
    with pytest.raises(ValueError, match="blm: 2 values for 3 sem values"):
        pir("same_bench", [1.0, 2.0, 3.0], [1.0, 2.0])


def test_zero_wins():
    with pytest.raises(ValueError, match=r"blm\[1\]: zero wins"):
        pir("same_win", [3, 4], [2, 0])
    with pytest.raises(ValueError, match=r"blm\[0\]: a BLM score of 0"):
        pir("same_bench", [0.3], [0.0])
    with pytest.raises(ValueError, match=r"sem\[0\]: win counts must be >= 0"):
        pir("same_win", [-1], [2])


def test_empty_and_nonfinite_lists():
    with pytest.raises(ValueError, match="sem: empty list"):
        pir("same_bench", [], [1.0])
    with pytest.raises(ValueError, match=r"sem\[1\]: expected a finite number"):
        pir("same_bench", [1.0, float("nan")], [1.0])
    with pytest.raises(ValueError, match=r"blm\[0\]: expected a number"):
        pir("same_bench", [1.0], ["x"])


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan"), float("inf")])
def test_sdf_out_of_range(bad):
    with pytest.raises(ValueError, match="sdf"):
        residual(bad, 1.4)
    with pytest.raises(ValueError, match="sdf"):
        Method("x", bad, 1.4, None)


def test_sdf_counts_bad():
    with pytest.raises(ValueError, match="selected: the selected subset size must be > 0"):
        sdf(0, 10)
    with pytest.raises(ValueError, match="pool: the candidate pool size"):
        sdf(1, 0)
    with pytest.raises(ValueError, match="larger than pool"):
        sdf(11, 10)


def test_feasibility_validation():
    with pytest.raises(ValueError, match="missing feasibility input.*'steps'"):
        Feasibility.from_mapping(
            {"trained_llms": 0, "model_free": True, "dataset_free": True, "proprietary_judge": False}
        )
    with pytest.raises(ValueError, match="unknown field.*'judge'"):
        Feasibility.from_mapping(
            {
                "trained_llms": 0,
                "steps": 1,
                "model_free": True,
                "dataset_free": True,
                "proprietary_judge": False,
                "judge": 1,
            }
        )
    with pytest.raises(ValueError, match="steps: expected an integer >= 0"):
        Feasibility(0, -1, True, True, False)
    with pytest.raises(ValueError, match="model_free: expected true or false"):
        Feasibility(0, 1, "yes", True, False)


def test_duplicate_method_names():
    f = Feasibility(0, 1, True, True, False)
    with pytest.raises(ValueError, match="duplicate method name"):
        compare_methods([Method("a", 0.1, 1.0, f), Method("a", 0.2, 1.0, f)])
