"""The shared kernels (vreid/postprocess/kernels.py) against references written here: brute-force
distances in float64 and a full ``np.lexsort`` of every row."""

import numpy as np
import pytest

from vreid.postprocess.kernels import pair_squared_distances, squared_distances, topk
from vreid.postprocess.knn import knn_graph


def _brute(a, b):
    return ((a[:, None, :].astype(np.float64) - b[None, :, :].astype(np.float64)) ** 2).sum(-1)


def _ref_topk(d, k, *tbs):
    cols = np.broadcast_to(np.arange(d.shape[1]), d.shape)
    order = np.lexsort((cols, *reversed(tbs), d), axis=-1)[:, :k]
    return order, np.take_along_axis(d, order, 1)


def test_squared_distances_match_brute_force_in_chunks_and_dtypes():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=(11, 5)).astype(np.float32)
    ref = _brute(a, b)
    for chunk in (None, 1, 3, 100):
        d = squared_distances(a, b, chunk)
        assert d.shape == (7, 11) and d.dtype == np.float32
        np.testing.assert_allclose(d, ref, rtol=1e-5, atol=1e-5)
    d64 = squared_distances(a, b, 2, dtype=np.float64)
    assert d64.dtype == np.float64
    np.testing.assert_allclose(d64, ref, rtol=1e-12, atol=1e-12)
    same = squared_distances(a, a)
    assert (same >= 0).all() and np.abs(np.diag(same)).max() < 1e-5  # clipped, no negative round-off
    with pytest.raises(ValueError, match=r"\(n, d\) and \(m, d\)"):
        squared_distances(a, b[:, :4])
    with pytest.raises(ValueError, match="chunk"):
        squared_distances(a, b, chunk=0)


def test_pair_squared_distances_match_brute_force():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 6)).astype(np.float32)
    rows, cols = rng.integers(0, 20, 50), rng.integers(0, 20, (50, 4))
    ref = _brute(x, x)
    np.testing.assert_allclose(pair_squared_distances(x, rows, cols), ref[rows[:, None], cols], atol=1e-10)
    np.testing.assert_allclose(pair_squared_distances(x, rows, cols[:, 0]), ref[rows, cols[:, 0]], atol=1e-10)
    assert (pair_squared_distances(x, np.arange(20), np.arange(20)) == 0).all()


def test_topk_tie_rule_against_a_full_sort():
    d = np.array([[0.5, 0.1, 0.5, 0.1, 0.5, 0.0], [3.0, 2.0, 1.0, 1.0, 1.0, 1.0]])
    idx, val = topk(d, 3)
    np.testing.assert_array_equal(idx, [[5, 1, 3], [2, 3, 4]])  # ties: lower column first
    np.testing.assert_allclose(val, [[0.0, 0.1, 0.1], [1.0, 1.0, 1.0]])
    rng = np.random.default_rng(3)
    r = rng.integers(0, 5, size=(40, 30)).astype(np.float32)  # many ties straddling the k-th place
    tb = rng.integers(0, 3, size=r.shape)
    for k in (1, 7, 29, 30):
        for chunk in (None, 7):
            got = topk(r, k, chunk=chunk)
            want = _ref_topk(r, k)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
            got = topk(r, k, tiebreak=(tb,), chunk=chunk)  # equal values ordered by tb, then column
            np.testing.assert_array_equal(got[0], _ref_topk(r, k, tb)[0])
    inf = np.array([[np.inf, 1.0, np.inf], [np.inf, np.inf, np.inf]])
    np.testing.assert_array_equal(topk(inf, 2)[0], [[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="k must be"):
        topk(d, 7)
    with pytest.raises(ValueError, match="k must be"):
        topk(d, 0)
    with pytest.raises(ValueError, match=r"NaN in rows \[1\]"):
        topk(np.array([[0.0, 1.0], [np.nan, 1.0]]), 1)
    with pytest.raises(ValueError, match="tiebreak"):
        topk(d, 2, tiebreak=(np.zeros(3),))


def test_duplicated_rows_take_no_per_row_path(monkeypatch):
    """Exact duplicates (images sharing their track's feature): the k-NN graph equals a brute-force
    reference (self first, then lower index among equal distances) and no row is redone alone."""
    import vreid.postprocess.knn as knn

    rng = np.random.default_rng(4)
    distinct = rng.normal(size=(30, 8)).astype(np.float32)
    x = np.repeat(distinct, rng.integers(1, 12, 30), axis=0)  # tracks of 1..11 copies
    x = x[rng.permutation(len(x))]
    calls = []
    real = knn.pair_squared_distances
    monkeypatch.setattr(knn, "pair_squared_distances",
                        lambda x_, r, c, *a, **kw: (calls.append(np.ndim(c)), real(x_, r, c, *a, **kw))[1])
    k = 15
    g = knn_graph(x, k)
    assert 2 not in calls  # the per-row fallback re-scores (1, c) blocks; it never ran
    d = _brute(x, x)
    n = len(x)
    rows = np.arange(n)
    self_last = np.broadcast_to(np.arange(n), (n, n)) != rows[:, None]
    want, _ = _ref_topk(d, k + 1, self_last)
    # equal distances among distinct vectors do not occur here, so the key is exact
    np.testing.assert_array_equal(g.indices, want)
    np.testing.assert_allclose(g.distances, np.take_along_axis(d, want, 1), atol=1e-5)
    np.testing.assert_allclose(g.row_max, d.max(axis=1), rtol=1e-6)
