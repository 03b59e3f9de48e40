"""vreid.eval: hand-computed metric cases, ranked-list / chunked equivalence, track2.txt."""

from __future__ import annotations

import numpy as np
import pytest

from vreid.eval import (
    ReIDEvaluator,
    evaluate,
    evaluate_ranked,
    read_submission,
    write_submission,
)
from vreid.eval.metrics import _stable_argsort


def _one(dist, g_pids, g_cams, q_pid=1, q_cam=0, **kw):
    """Evaluate a single query (pid 1, camera 0 unless given) against a small gallery."""
    return evaluate(np.array([dist], dtype=float), [q_pid], g_pids, [q_cam], g_cams, **kw)


def _reference(d, qp, gp, qc, gc, max_rank, top_k=None):
    """Per-query loop straight from METHODS.md "Evaluation" (fast-reid style)."""
    aps, inps, cmcs = [], [], []
    for i in range(len(qp)):
        o = np.argsort(d[i], kind="stable")
        keep = ~((gp[o] == qp[i]) & (gc[o] == qc[i]))
        pos = np.nonzero((gp[o] == qp[i])[keep])[0]  # 0-based ranks of positives, junk removed
        if not len(pos):
            continue
        cmcs.append(np.arange(1, max_rank + 1) > pos[0])
        inps.append(len(pos) / (pos[-1] + 1))
        prec = np.arange(1, len(pos) + 1) / (pos + 1)
        aps.append(prec.mean() if top_k is None else prec[pos < top_k].sum() / min(len(pos), top_k))
    return np.mean(aps), np.mean(inps), np.mean(cmcs, axis=0), len(aps)


def _random_case(rng, q, g, ids, cams, ties):
    qp, gp = rng.integers(0, ids, q), rng.integers(0, ids, g)
    qc, gc = rng.integers(0, cams, q), rng.integers(0, cams, g)
    d = rng.integers(0, 6, (q, g)).astype(np.float32) if ties else rng.random((q, g))
    return d, qp, gp, qc, gc


# ---------------------------------------------------------------- hand-computed cases


def test_junk_removed_ap_cmc_minp():
    # Query pid 1 cam 0. Ranked by distance: g0 (pid 1, cam 0: junk), g1 (neg), g2 (pos), g3 (neg),
    # g4 (pos). Junk removed: neg, pos, neg, pos -> positive ranks 2 and 4.
    # AP = (1/2 + 2/4) / 2 = 0.5; CMC = [0, 1, 1, 1, 1]; mINP = 2 positives / rank 4 = 0.5.
    m = _one([0.1, 0.2, 0.3, 0.4, 0.5], [1, 2, 1, 3, 1], [0, 1, 1, 2, 2], max_rank=5)
    assert m.mAP == pytest.approx(0.5)
    assert m.mINP == pytest.approx(0.5)
    np.testing.assert_allclose(m.cmc, [0, 1, 1, 1, 1])
    assert m.num_valid_queries == 1
    # Same gallery with g0 in another camera: a positive at rank 1, others at 3 and 5.
    # AP = (1/1 + 2/3 + 3/5) / 3 = 34/45; mINP = 3/5.
    m = _one([0.1, 0.2, 0.3, 0.4, 0.5], [1, 2, 1, 3, 1], [3, 1, 1, 2, 2], max_rank=5)
    assert m.mAP == pytest.approx(34 / 45)
    assert m.mINP == pytest.approx(0.6)
    np.testing.assert_allclose(m.cmc, [1, 1, 1, 1, 1])


def test_ties_keep_gallery_order():
    # g0 (neg) and g1 (pos) tie at 0.5: the stable ranking puts g0 first -> positive at rank 2,
    # AP = 1/2, CMC@1 = 0. Swapping their gallery order puts the positive first -> AP = 1.
    m = _one([0.5, 0.5, 0.9], [2, 1, 3], [1, 1, 1], max_rank=3)
    assert m.mAP == pytest.approx(0.5)
    np.testing.assert_allclose(m.cmc, [0, 1, 1])
    m = _one([0.5, 0.5, 0.9], [1, 2, 3], [1, 1, 1], max_rank=3)
    assert m.mAP == pytest.approx(1.0)
    np.testing.assert_allclose(m.cmc, [1, 1, 1])


def test_ties_float32_negative_zero_and_inf():
    # The float32 key sort must equal numpy's stable argsort, including -0.0 == +0.0 ties,
    # negative distances (bias-corrected ones can be), +-inf and many exact ties.
    rng = np.random.default_rng(3)
    d = (rng.integers(-4, 4, (20, 300)) * 0.25).astype(np.float32)
    d[0, :5], d[0, 5:10] = -0.0, 0.0
    d[1, 3], d[1, 4], d[2, 7] = np.inf, -np.inf, -1e-30
    ints = rng.integers(-3, 3, (20, 300)).astype(np.int32)
    for block in (d, d.astype(np.float16), d.astype(np.float64), ints):
        np.testing.assert_array_equal(
            _stable_argsort(block), np.argsort(block, axis=1, kind="stable")
        )


def test_queries_without_positives_are_skipped():
    # q0 (pid 1, cam 0): positive g1 at rank 2 -> AP 0.5, first rank 2.
    # q1 (pid 7): no gallery image of pid 7 -> skipped.
    # q2 (pid 2, cam 1): its only pid-2 image g0 is in camera 1 too (junk) -> skipped.
    # q3 (pid 3, cam 0): positive g2 at rank 1 -> AP 1.
    # mAP = (0.5 + 1) / 2 = 0.75; CMC@1 = 1/2; 2 valid queries.
    g_pids, g_cams = [2, 1, 3], [1, 1, 1]
    d = np.array([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    m = evaluate(d, [1, 7, 2, 3], g_pids, [0, 0, 1, 0], g_cams, max_rank=3)
    assert m.num_valid_queries == 2
    assert m.mAP == pytest.approx(0.75)
    np.testing.assert_allclose(m.cmc, [0.5, 1, 1])
    with pytest.raises(ValueError, match="no query has a positive"):
        evaluate(d[1:3], [7, 2], g_pids, [0, 1], g_cams)


def test_minp():
    # Positives at ranks 1 and 10 of 10: INP = 2 / 10 = 0.2; AP = (1/1 + 2/10) / 2 = 0.6.
    g_pids = [1] + [5] * 8 + [1]
    m = _one(np.arange(10) / 10, g_pids, [1] * 10, max_rank=10)
    assert m.mINP == pytest.approx(0.2)
    assert m.mAP == pytest.approx(0.6)


def test_cmc_averaged_and_padded_past_gallery():
    # q0 first positive at rank 2, q1 at rank 1 -> CMC = [0.5, 1, 1]; max_rank 6 > gallery 3:
    # the curve keeps its last value (every valid query has its positive within G).
    d = np.array([[0.1, 0.2, 0.3], [0.2, 0.1, 0.3]])
    m = evaluate(d, [1, 1], [2, 1, 3], [0, 0], [1, 1, 1], max_rank=6)
    np.testing.assert_allclose(m.cmc, [0.5, 1, 1, 1, 1, 1])
    assert m.as_dict() == {"mAP": 0.75, "mINP": 0.75, "rank-1": 0.5, "rank-5": 1.0}
    assert all(type(v) is float for v in m.as_dict().values())


def test_aicity_top100_more_than_100_positives():
    # Ranks 1..100 alternate negative / positive (50 positives at ranks 2, 4, ..., 100, each with
    # precision i / 2i = 1/2); 100 more positives follow at ranks 101..200 and fall outside.
    # #positives 150 -> AP@100 = 50 * 0.5 / min(150, 100) = 0.25.
    g_pids = np.array([2, 1] * 50 + [1] * 100)
    m = _one(np.arange(200.0), g_pids, np.ones(200, int), top_k_ap=100)
    assert m.mAP == pytest.approx(0.25)
    # Untruncated: (25 + sum_{j=51}^{150} j / (50 + j)) / 150.
    full = (25 + sum(j / (50 + j) for j in range(51, 151))) / 150
    assert _one(np.arange(200.0), g_pids, np.ones(200, int)).mAP == pytest.approx(full)


def test_aicity_top100_fewer_positives_and_junk_first():
    # 3 positives at ranks 1, 50, 150 of 200: AP@100 = (1/1 + 2/50) / min(3, 100) = 1.04 / 3,
    # untruncated AP = (1 + 2/50 + 3/150) / 3 = 1.06 / 3.
    g_pids = np.full(200, 9)
    g_pids[[0, 49, 149]] = 1
    g_cams = np.ones(200, int)
    assert _one(np.arange(200.0), g_pids, g_cams, top_k_ap=100).mAP == pytest.approx(1.04 / 3)
    assert _one(np.arange(200.0), g_pids, g_cams).mAP == pytest.approx(1.06 / 3)
    # A junk image (pid 1, camera 0) ranked first is removed before truncating: ranks unchanged.
    g_pids, g_cams = np.concatenate([[1], g_pids]), np.concatenate([[0], g_cams])
    assert _one(np.arange(201.0), g_pids, g_cams, top_k_ap=100).mAP == pytest.approx(1.04 / 3)


# ---------------------------------------------------------------- equivalences


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("top_k", [None, 10])
def test_matches_reference_loop(ties, top_k):
    rng = np.random.default_rng(7)
    d, qp, gp, qc, gc = _random_case(rng, 30, 250, ids=12, cams=4, ties=ties)
    m = evaluate(d, qp, gp, qc, gc, max_rank=20, top_k_ap=top_k)
    ref_map, ref_minp, ref_cmc, n = _reference(d, qp, gp, qc, gc, 20, top_k)
    assert m.mAP == pytest.approx(ref_map)
    assert m.mINP == pytest.approx(ref_minp)
    np.testing.assert_allclose(m.cmc, ref_cmc)
    assert m.num_valid_queries == n


@pytest.mark.parametrize("ties", [False, True])
def test_ranked_full_lists_equal_full_matrix(ties):
    rng = np.random.default_rng(11)
    d, qp, gp, qc, gc = _random_case(rng, 40, 400, ids=15, cams=5, ties=ties)
    order = np.argsort(d, axis=1, kind="stable")
    for top_k in (None, 100):
        a = evaluate(d, qp, gp, qc, gc, top_k_ap=top_k)
        b = evaluate_ranked(order, qp, gp, qc, gc, top_k_ap=top_k)
        assert (a.mAP, a.mINP, a.num_valid_queries) == (b.mAP, b.mINP, b.num_valid_queries)
        np.testing.assert_array_equal(a.cmc, b.cmc)


def test_ranked_topk_is_aicity_score_and_lower_bound():
    rng = np.random.default_rng(5)
    d, qp, gp, qc, gc = _random_case(rng, 40, 600, ids=4, cams=6, ties=False)
    order = np.argsort(d, axis=1, kind="stable")
    # Enough columns to reach rank 100 after removing each query's junk images.
    junk = ((gp[None, :] == qp[:, None]) & (gc[None, :] == qc[:, None])).sum(axis=1)
    k = 100 + int(junk.max())
    full = evaluate(d, qp, gp, qc, gc, top_k_ap=100)
    top = evaluate_ranked(order[:, :k], qp, gp, qc, gc, top_k_ap=100)
    assert top.mAP == pytest.approx(full.mAP, abs=1e-12)
    np.testing.assert_allclose(top.cmc, full.cmc)
    # Short lists miss positives (~150 per query here): plain mAP / mINP become lower bounds.
    short = evaluate_ranked(order[:, :50], qp, gp, qc, gc)
    exact = evaluate(d, qp, gp, qc, gc)
    assert short.mAP < exact.mAP and short.mINP <= exact.mINP


def test_evaluator_chunked_equals_one_shot():
    rng = np.random.default_rng(2)
    d, qp, gp, qc, gc = _random_case(rng, 37, 300, ids=10, cams=4, ties=True)
    one = evaluate(d, qp, gp, qc, gc, max_rank=10, top_k_ap=100)
    ev = ReIDEvaluator(gp, gc, max_rank=10, top_k_ap=100, chunk_rows=4)
    ev.process(qp[:5], qc[:5], distmat=d[:5])
    ev.process(qp[5:20], qc[5:20], ranked=np.argsort(d[5:20], axis=1, kind="stable"))
    ev.process(qp[20:], qc[20:], distmat=d[20:])
    many = ev.evaluate()
    assert (one.mAP, one.mINP, one.num_valid_queries) == (
        many.mAP, many.mINP, many.num_valid_queries
    )
    np.testing.assert_array_equal(one.cmc, many.cmc)
    ev.reset()
    with pytest.raises(ValueError, match="no queries processed"):
        ev.evaluate()


# ---------------------------------------------------------------- bad input


def test_bad_input_errors():
    d = np.zeros((2, 3))
    qp, gp, qc, gc = [1, 2], [1, 2, 3], [0, 0], [1, 1, 1]
    with pytest.raises(ValueError, match=r"distmat has shape \(2, 3\), expected .*\(3, 3\)"):
        evaluate(d, [1, 2, 3], gp, [0, 0, 0], gc)
    with pytest.raises(ValueError, match="q_camids has 1 entries"):
        evaluate(d, qp, gp, [0], gc)
    with pytest.raises(ValueError, match="g_camids has 2 entries"):
        evaluate(d, qp, gp, qc, [1, 1])
    with pytest.raises(ValueError, match="empty query set"):
        evaluate(np.zeros((0, 3)), [], gp, [], gc)
    for dtype in (np.float32, np.float64):
        bad = d.astype(dtype)
        bad[1, 1] = np.nan
        with pytest.raises(ValueError, match=r"NaN in query rows \[1\]"):
            evaluate(bad, qp, gp, qc, gc)
    with pytest.raises(ValueError, match="max_rank must be an integer >= 1"):
        evaluate(d, qp, gp, qc, gc, max_rank=0)
    with pytest.raises(ValueError, match="top_k_ap"):
        evaluate(d, qp, gp, qc, gc, top_k_ap=0)
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        evaluate_ranked(np.array([[0, 3], [0, 1]]), qp, gp, qc, gc)
    with pytest.raises(ValueError, match=r"repeat a gallery index \(query rows \[0\]\)"):
        evaluate_ranked(np.array([[1, 1], [0, 1]]), qp, gp, qc, gc)
    ev = ReIDEvaluator(gp, gc)
    with pytest.raises(ValueError, match="exactly one of distmat= or ranked="):
        ev.process(qp, qc)


# ---------------------------------------------------------------- track2.txt


def test_submission_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    ranked = np.stack([rng.permutation(300)[:120] for _ in range(4)])
    path = write_submission(ranked, tmp_path / "res" / "track2.txt", num_gallery=300)
    lines = path.read_text().splitlines()
    assert len(lines) == 4
    assert lines[0].split()[:3] == [str(v + 1) for v in ranked[0, :3]]  # 1-based
    np.testing.assert_array_equal(read_submission(path, num_gallery=300), ranked[:, :100])
    assert [p.name for p in path.parent.iterdir()] == ["track2.txt"]  # no temporary left
    # A gallery smaller than 100 lists all of it.
    small = write_submission([[2, 0, 1], [0, 1, 2]], tmp_path / "small.txt", num_gallery=3)
    assert small.read_text() == "3 1 2\n1 2 3\n"
    np.testing.assert_array_equal(read_submission(small, num_gallery=3), [[2, 0, 1], [0, 1, 2]])


def test_submission_write_validation(tmp_path):
    out = tmp_path / "track2.txt"
    with pytest.raises(ValueError, match="at least 100.*num_gallery"):
        write_submission(np.zeros((2, 50), int), out)
    ok = np.tile(np.arange(100), (2, 1))
    with pytest.raises(ValueError, match=r"\[0, 100\); query rows \[1\]"):
        bad = ok.copy()
        bad[1, 5] = 100
        write_submission(bad, out, num_gallery=100)
    with pytest.raises(ValueError, match=r"repeats a gallery image: query rows \[0\]"):
        bad = ok.copy()
        bad[0, 1] = 0
        write_submission(bad, out)
    with pytest.raises(ValueError, match=">= 0"):
        write_submission(ok - 1, out)
    assert not out.exists()


def test_submission_read_validation(tmp_path):
    path = tmp_path / "track2.txt"
    good = " ".join(str(i) for i in range(1, 101))
    cases = {
        good + "\n" + good.replace("7", "x", 1) + "\n": "track2.txt:2: expected space-separated",
        good + "\n" + " ".join(str(i) for i in range(1, 100)) + "\n": ":2: 99 gallery indices",
        good.replace("100", "1") + "\n": ":1: a gallery index is repeated",
        good.replace("100", "0") + "\n": r":1: gallery indices must be >= 1",
        "": "empty submission",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_submission(path)
    path.write_text(good + "\n")
    with pytest.raises(ValueError, match=r":1: gallery indices must be \[1, 150\]"):
        path.write_text(good.replace("100", "151") + "\n")
        read_submission(path, num_gallery=150)
    path.write_text(good + "\n")
    with pytest.raises(ValueError, match="1 lines, expected one per query \\(2\\)"):
        read_submission(path, num_queries=2)


# ---------------------------------------------------------------- track-level evaluation


def _tracks_case(rng, q, n_tracks, ids, cams, mixed):
    """Hand-made tracks: each one camera (or, with ``mixed``, a few images relabelled to another
    pid / camera), images of a track scattered over the gallery order."""
    sizes = rng.integers(1, 6, n_tracks)
    item = rng.permutation(np.repeat(np.arange(n_tracks), sizes))
    t_pid, t_cam = rng.integers(0, ids, n_tracks), rng.integers(-1, cams, n_tracks)  # -1: a camera too
    gp, gc = t_pid[item].copy(), t_cam[item].copy()
    if mixed:
        flip = rng.random(len(item)) < 0.2
        gp[flip] = rng.integers(0, ids, flip.sum())
        gc[flip] = rng.integers(-1, cams, flip.sum())
    qp, qc = rng.integers(0, ids, q), rng.integers(-1, cams, q)
    d = rng.permutation(q * n_tracks).reshape(q, n_tracks).astype(np.float32)  # no two tracks tie
    return d, item, qp, gp, qc, gc


@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("top_k", [None, 100, 3])
def test_track_evaluation_equals_image_evaluation(mixed, top_k):
    from vreid.eval import evaluate_tracks

    rng = np.random.default_rng(7)
    for _ in range(5):
        d, item, qp, gp, qc, gc = _tracks_case(rng, 25, 40, 6, 4, mixed)
        want = evaluate(d[:, item], qp, gp, qc, gc, max_rank=20, top_k_ap=top_k)  # every image: its track's
        for chunk in (None, 4):
            got = evaluate_tracks(d, item, qp, gp, qc, gc, max_rank=20, top_k_ap=top_k, chunk_rows=chunk)
            assert got.mAP == pytest.approx(want.mAP, abs=1e-12)
            assert got.mINP == pytest.approx(want.mINP, abs=1e-12)
            np.testing.assert_allclose(got.cmc, want.cmc)
            assert got.num_valid_queries == want.num_valid_queries
        full, top = evaluate_tracks(d, item, qp, gp, qc, gc, max_rank=20, also_top_k_ap=top_k or 100)
        assert full.mAP == pytest.approx(evaluate(d[:, item], qp, gp, qc, gc).mAP, abs=1e-12)
        assert top.mAP == pytest.approx(evaluate(d[:, item], qp, gp, qc, gc, top_k_ap=top_k or 100).mAP, abs=1e-12)
        ref = _reference(d[:, item], qp, gp, qc, gc, 20, top_k)
        assert want.mAP == pytest.approx(ref[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_image_items_rank_like_the_stable_sort_with_ties(dtype):
    """One image per item (the ablation rows before the tracklet step): positions come from the
    sorted keys, ties broken by gallery index as the stable sort of ``evaluate`` does."""
    from vreid.eval import evaluate_tracks

    rng = np.random.default_rng(3)
    q, g = 30, 200
    d = rng.integers(0, 12, (q, g)).astype(dtype)  # many exact ties; -0.0 and +inf too
    d[0, :5] = -0.0
    d[1, :7] = np.inf
    qp, gp = rng.integers(0, 6, q), rng.integers(0, 6, g)
    qc, gc = rng.integers(0, 3, q), rng.integers(0, 3, g)
    for chunk in (None, 7):
        got = evaluate_tracks(d, np.arange(g), qp, gp, qc, gc, max_rank=20, chunk_rows=chunk)
        want = evaluate(d, qp, gp, qc, gc, max_rank=20)
        ref = _reference(d, qp, gp, qc, gc, 20, None)
        assert got.mAP == pytest.approx(want.mAP, abs=1e-12) and got.mAP == pytest.approx(ref[0])
        assert got.mINP == pytest.approx(want.mINP, abs=1e-12)
        np.testing.assert_allclose(got.cmc, want.cmc)
    d[4, 9] = np.nan
    with pytest.raises(ValueError, match=r"NaN in query rows \[4\]"):
        evaluate_tracks(d, np.arange(g), qp, gp, qc, gc)


def test_track_evaluation_hand_case_and_errors():
    from vreid.eval import evaluate_tracks

    # Query pid 1 cam 0. Tracks by distance: t1 (pid 1, cam 0: two junk images), t0 (pid 2), t2 (pid 1,
    # cam 5: two positives). Junk removed: neg, pos, pos -> ranks 2, 3; AP = (1/2 + 2/3) / 2.
    item = np.array([0, 1, 2, 1, 2])
    gp, gc = [2, 1, 1, 1, 1], [3, 0, 5, 0, 5]
    m = evaluate_tracks(np.array([[0.5, 0.1, 0.9]]), item, [1], gp, [0], gc, max_rank=3)
    assert m.mAP == pytest.approx((1 / 2 + 2 / 3) / 2)
    np.testing.assert_allclose(m.cmc, [0, 1, 1])
    assert m.mINP == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="item_of_image must lie"):
        evaluate_tracks(np.zeros((1, 2)), item, [1], gp, [0], gc)
    with pytest.raises(ValueError, match="one entry per gallery image"):
        evaluate_tracks(np.zeros((1, 3)), item[:4], [1], gp, [0], gc)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_tracks(np.array([[np.nan, 0.1, 0.9]]), item, [1], gp, [0], gc)
