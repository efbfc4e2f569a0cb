"""thresher.features.store.FeatureStore: formats, normalisation, resumption, compatibility checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from thresher.features.store import FeatureStore

META = {"dim": 64, "seed": 3, "kind": "rademacher", "model": "abc123", "transform": "less"}


def _feats(n, dim=64, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32) * 5


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("dtype,tol", [("float16", 2e-3), ("int8", 1.5e-2)])
def test_roundtrip_normalised(tmp_path, dtype, tol):
    st = FeatureStore(tmp_path / "s", META, dtype=dtype, shard_rows=7)
    x = _feats(20)
    assert st.write([f"id{i}" for i in range(20)], x) == 20
    assert len(st.shards) == 3  # 7 + 7 + 6
    ids, y = st.load()
    assert ids == [f"id{i}" for i in range(20)]
    np.testing.assert_allclose(y, _unit(x), atol=tol)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=tol * 4)
    # subset in a given order
    ids2, y2 = st.load(["id13", "id2"])
    np.testing.assert_array_equal(y2, y[[13, 2]])
    assert isinstance(st.raw(0), np.memmap)


def test_one_bit_store_keeps_signs(tmp_path):
    st = FeatureStore(tmp_path / "b", META, dtype="bit")
    x = _feats(5)
    st.write(list("abcde"), x)
    _, y = FeatureStore(tmp_path / "b").load()
    np.testing.assert_array_equal(np.sign(y), np.sign(x))
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-6)
    assert st.raw(0).shape == (5, 8) and st.raw(0).dtype == np.uint8


def test_zero_row_stays_zero(tmp_path):
    st = FeatureStore(tmp_path / "z", META)
    x = _feats(2)
    x[1] = 0
    st.write(["a", "b"], x)
    assert np.all(st.load(["b"])[1] == 0)


def test_resume_by_id_and_reopen(tmp_path):
    p = tmp_path / "r"
    st = FeatureStore(p, META)
    x = _feats(6)
    st.write(["a", "b", "c"], x[:3])
    st2 = FeatureStore(p, META)  # a new run
    assert st2.missing(["a", "b", "c", "d"]) == ["d"]
    assert st2.write(["c", "d"], x[2:4]) == 1  # c is skipped
    assert FeatureStore(p, META).ids() == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="not stored"):
        st2.load(["zz"])


def test_killed_writer_leaves_no_partial_shard(tmp_path):
    p = tmp_path / "k"
    st = FeatureStore(p, META)
    st.write(["a"], _feats(1))
    # a writer killed after its data file but before its ids file (the commit marker), plus a temp file
    np.save(p / "shard-00001.data.npy", np.zeros((3, 64), np.float16))
    (p / ".shard-00002.data.npy.tmp.123").write_bytes(b"garbage")
    st2 = FeatureStore(p, META)
    assert st2.ids() == ["a"]
    st2.write(["b", "c"], _feats(2, seed=1))
    ids, y = FeatureStore(p, META).load()
    assert ids == ["a", "b", "c"] and np.isfinite(y).all() and (np.abs(y[1:]).sum(1) > 0).all()


@pytest.mark.parametrize("key,value", [("seed", 4), ("model", "other"), ("dim", 32), ("transform", "plain")])
def test_refuses_to_mix_incompatible_features(tmp_path, key, value):
    p = tmp_path / "m"
    FeatureStore(p, META).write(["a"], _feats(1))
    with pytest.raises(ValueError, match=f"{key}="):
        FeatureStore(p, dict(META, **{key: value}))
    with pytest.raises(ValueError, match="extra="):
        FeatureStore(p, dict(META, extra=1))


def test_bad_input(tmp_path):
    st = FeatureStore(tmp_path / "x", META)
    with pytest.raises(ValueError, match="feats"):
        st.write(["a"], np.zeros((1, 63), np.float32))
    with pytest.raises(ValueError, match="ids"):
        st.write(["a", "b"], _feats(1))
    with pytest.raises(ValueError, match="duplicate"):
        st.write(["a", "a"], _feats(2))
    bad = _feats(2)
    bad[1, 5] = np.nan
    with pytest.raises(ValueError, match="non-finite.*'b'"):
        st.write(["a", "b"], bad)
    assert len(st) == 0
    with pytest.raises(ValueError, match="dtype"):
        FeatureStore(tmp_path / "y", META, dtype="float64")
    with pytest.raises(ValueError, match="no manifest"):
        FeatureStore(tmp_path / "nothing")
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a thresher feature store"):
        FeatureStore(tmp_path / "j", META)
