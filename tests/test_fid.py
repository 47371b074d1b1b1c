"""Classifier-based FID / inception score on scikit-learn digits."""

import jax
import numpy as np
import pytest
import scipy.linalg

from jaxsci.data.digits import (
    downscale,
    from_digits_scale,
    load_digits_split,
    to_digits_scale,
    upscale,
)
from jaxsci.metrics.fid import (
    evaluate_samples,
    fit_feature_classifier,
    frechet_distance,
    inception_score,
)


@pytest.fixture(scope="module")
def digits():
    return load_digits_split()


@pytest.fixture(scope="module")
def classifier(digits):
    return fit_feature_classifier(
        digits.train_images,
        digits.train_labels,
        key=jax.random.PRNGKey(0),
        test_images=digits.test_images,
        test_labels=digits.test_labels,
    )


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5)) + 0.5
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = np.sum((mu_a - mu_b) ** 2) + np.trace(
        s_a + s_b - 2 * np.real(scipy.linalg.sqrtm(s_a @ s_b))
    )
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-8)
    assert frechet_distance(b, a) == pytest.approx(ref, rel=1e-8)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # a pure mean shift of d in every coordinate of 5 adds 5 d^2
    assert frechet_distance(a, a + 2.0) == pytest.approx(20.0, rel=1e-8)
    # one feature: (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2 (np.cov is 0-d there)
    x = a[:, :1]
    want = (x.mean() - (2 * x.mean() + 0.5)) ** 2 + (x.std(ddof=1) - 2 * x.std(ddof=1)) ** 2
    assert frechet_distance(x, 2 * x + 0.5) == pytest.approx(want, rel=1e-10)


def test_inception_score_limits():
    k = 4
    assert inception_score(np.eye(k)[np.arange(40) % k]) == pytest.approx(k, rel=1e-6)
    assert inception_score(np.full((10, k), 1.0 / k)) == pytest.approx(1.0)
    assert inception_score(np.tile(np.eye(k)[1], (10, 1))) == pytest.approx(1.0)


def test_real_heldout_fid_far_below_noise(digits, classifier):
    assert classifier.test_accuracy > 0.9
    ref = classifier.features(digits.train_images)
    real = frechet_distance(classifier.features(digits.test_images), ref)
    noise_imgs = np.random.default_rng(0).uniform(-1, 1, digits.test_images.shape)
    noise = frechet_distance(classifier.features(noise_imgs), ref)
    blank = frechet_distance(
        classifier.features(np.full_like(noise_imgs, -0.9) + 0.01 * noise_imgs), ref
    )
    assert real < 0.05 * noise
    assert real < 0.05 * blank


def test_evaluate_samples_on_real_images(digits, classifier):
    out = evaluate_samples(
        classifier, digits.test_images, digits.test_labels, digits.train_images, digits.train_labels
    )
    assert out["accuracy"] > 0.9
    assert out["inception_score"] > 8.0
    assert sorted(out["per_label"]) == list(range(10))
    assert min(v["accuracy"] for v in out["per_label"].values()) > 0.75
    # FIDs: of all samples against the whole reference, of each label against its own rows
    f_gen = classifier.features(digits.test_images)
    f_ref = classifier.features(digits.train_images)
    assert out["fid"] == pytest.approx(frechet_distance(f_gen, f_ref), rel=1e-9)
    for lab, v in out["per_label"].items():
        g, r = digits.test_labels == lab, digits.train_labels == lab
        assert v["fid"] == pytest.approx(frechet_distance(f_gen[g], f_ref[r]), rel=1e-9)
        assert v["fid"] > 0 and v["n"] == g.sum()
    # conditioning on the wrong label shows up as low accuracy
    wrong = evaluate_samples(
        classifier,
        digits.test_images,
        (digits.test_labels + 1) % 10,
        digits.train_images,
        digits.train_labels,
    )
    assert wrong["accuracy"] < 0.1
    # a label sampled once has no covariance: its FID is NaN, the rest are reported
    threes = np.flatnonzero(digits.test_labels == 3)
    few = np.concatenate([threes[:1], np.flatnonzero(digits.test_labels != 3)])
    one = evaluate_samples(
        classifier,
        digits.test_images[few],
        digits.test_labels[few],
        digits.train_images,
        digits.train_labels,
    )
    assert one["per_label"][3]["n"] == 1 and np.isnan(one["per_label"][3]["fid"])
    assert all(np.isfinite(v["fid"]) for v in one["per_label"].values() if v["n"] >= 2)


def test_classifier_compiles_once_per_shape(digits, classifier, caplog):
    """features/probs built a new jit wrapper per call: every call compiled (0.14 s)."""
    x = digits.test_images[:7]
    classifier.features(x), classifier.probs(x)  # compile for this shape
    with jax.log_compiles(True), caplog.at_level("WARNING"):
        for _ in range(3):
            classifier.features(x), classifier.probs(x)
    assert "Compiling" not in caplog.text


def test_bad_input():
    with pytest.raises(ValueError, match="equal d"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full((5, 3), np.nan), np.zeros((5, 3)))
    for bad in (np.full((4, 3), np.nan), np.array([[2.0, -1.0, 3.0]])):  # NaN, logits
        with pytest.raises(ValueError, match="summing to 1"):
            inception_score(bad)
    for n_labels, match in ((3, "labels must lie in 0..2"), (5, "no training images for labels")):
        with pytest.raises(ValueError, match=match):  # labels 0..3 against 3 or 5 classes
            fit_feature_classifier(
                np.zeros((4, 8, 8, 1)),
                np.array([0, 1, 2, 3]),
                key=jax.random.PRNGKey(0),
                n_labels=n_labels,
                steps=1,
            )


def test_digit_scales_round_trip(digits):
    x = np.arange(17, dtype=np.float32)
    np.testing.assert_allclose(to_digits_scale(from_digits_scale(x)), x, atol=1e-5)
    assert from_digits_scale(x).min() == -1.0 and from_digits_scale(x).max() == 1.0
    big = upscale(digits.test_images[:3], 32)
    assert big.shape == (3, 32, 32, 1)
    np.testing.assert_allclose(downscale(big, 8), digits.test_images[:3], atol=1e-6)
    smooth = upscale(digits.test_images[:3], 32, method="bilinear")
    assert smooth.shape == (3, 32, 32, 1)
    assert np.abs(downscale(smooth, 8) - digits.test_images[:3]).mean() < 0.2


def test_fid_is_biased_by_n_and_equal_n_fid_compares_like_with_like():
    """Samples of one Gaussian against a reference from it: FID falls with n (the bias the
    cgan_digits floor had at n=450 against models at n=2000); at equal n, 2000 samples
    split into 4 disjoint subsets of 450 score like 450 samples."""
    from jaxsci.metrics.fid import equal_n_fid, equal_n_subsets, matched_counts

    rng = np.random.default_rng(0)
    d = 16
    ref = rng.normal(size=(1347, d))
    big, big_labels = rng.normal(size=(2000, d)), np.repeat(np.arange(10), 200)
    small, small_labels = rng.normal(size=(450, d)), np.repeat(np.arange(10), 45)
    assert frechet_distance(small, ref) > 2.0 * frechet_distance(big, ref)
    counts = matched_counts(small_labels, big_labels)
    assert counts == {lab: 45 for lab in range(10)}
    subsets = equal_n_subsets(big_labels, counts)
    assert len(subsets) == 4 and all(len(s) == 450 for s in subsets)
    assert len(np.unique(np.concatenate(subsets))) == 1800  # disjoint
    eq = equal_n_fid(big, big_labels, counts, ref)
    floor = equal_n_fid(small, small_labels, counts, ref)
    assert eq["n"] == floor["n"] == 450 and (eq["subsets"], floor["subsets"]) == (4, 1)
    assert eq["fid"] == pytest.approx(floor["fid"], rel=0.25)
    assert matched_counts(np.array([0, 0, 1]), np.array([0, 1, 1, 2])) == {0: 1, 1: 1}
    with pytest.raises(ValueError, match="too few rows"):
        equal_n_subsets(np.array([0, 1, 1]), {0: 2, 1: 1})


def test_evaluate_samples_at_equal_n(digits, classifier):
    from jaxsci.metrics.fid import matched_counts

    counts = matched_counts(digits.test_labels, np.repeat(np.arange(10), 20))
    out = evaluate_samples(
        classifier,
        digits.test_images,
        digits.test_labels,
        digits.train_images,
        digits.train_labels,
        per_label_n=counts,
    )
    assert out["fid_n"] == 200 and out["fid_subsets"] == 2 and out["n"] == len(digits.test_labels)
    assert out["fid"] > out["fid_all_samples"]  # fewer samples, larger bias
    all_samples = frechet_distance(
        classifier.features(digits.test_images), classifier.features(digits.train_images)
    )
    assert out["fid_all_samples"] == pytest.approx(all_samples, rel=1e-9)


def test_evaluate_samples_refuses_fewer_than_two_images(digits, classifier):
    """An empty set failed inside the classifier with ZeroDivisionError."""
    ref = (digits.train_images, digits.train_labels)
    for n in (0, 1):
        with pytest.raises(ValueError, match="images needs at least 2 images"):
            evaluate_samples(classifier, digits.test_images[:n], digits.test_labels[:n], *ref)


def test_label_arrays_are_checked_before_any_work(digits, classifier):
    """Raw broadcast / IndexError / MLIR errors before, or silent truncation of floats."""
    x, y = digits.test_images[:100], digits.test_labels[:100]
    ref = (digits.train_images, digits.train_labels)
    for bad, shown in ((y[:99], r"\[99\]"), (y[:1], r"\[1\]"), (y[:, None], r"\[100, 1\]")):
        with pytest.raises(ValueError, match=rf"labels must be \[100\] class indices.*{shown}"):
            evaluate_samples(classifier, x, bad, *ref)
    with pytest.raises(ValueError, match="reference_labels must be"):
        evaluate_samples(classifier, x, y, ref[0], ref[1][:-5])
    with pytest.raises(ValueError, match="labels must be integer class indices"):
        evaluate_samples(classifier, x, y + 0.7, *ref)
    img = np.zeros((4, 8, 8, 1))
    lab = np.array([0, 1, 2, 3])
    fit = lambda **kw: fit_feature_classifier(  # noqa: E731
        img, kw.pop("labels", lab), key=jax.random.PRNGKey(0), n_labels=4, **kw
    )
    with pytest.raises(ValueError, match="labels must be integer class indices"):
        fit(labels=lab + 0.7, steps=1)
    with pytest.raises(ValueError, match=r"labels must be \[4\] class indices.*\[4, 1\]"):
        fit(labels=lab[:, None], steps=1)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        fit(steps=-1)
    with pytest.raises(ValueError, match="pass test_images and test_labels together"):
        fit(steps=1, test_images=img)
    with pytest.raises(ValueError, match=r"test_labels must be \[4\] class indices"):
        fit(steps=1, test_images=img, test_labels=lab[:3])
    with pytest.raises(ValueError, match="test_images must have images' shape"):
        fit(steps=1, test_images=np.zeros((4, 8, 8)), test_labels=lab)
    # whole-number floats are class indices, and an accuracy comes out
    assert (
        0.0
        <= fit(labels=lab.astype(float), steps=2, test_images=img, test_labels=lab).test_accuracy
        <= 1.0
    )


def test_inception_score_stays_within_one_and_k_for_rows_off_by_rounding():
    # before: rows summing to 1.0009 gave 2.0012 > K = 2
    p = np.array([[1.0009, 0.0], [0.0, 1.0009]])
    assert inception_score(p) == pytest.approx(2.0)
    assert inception_score(p) <= 2.0


def test_evaluate_samples_and_the_classifier_share_one_label_rule(digits, classifier):
    """Before: evaluate_samples refused whole-number float labels (y.astype(float)) that
    fit_feature_classifier accepted; both now take them, refuse fractions, and say so alike."""
    x, y = digits.test_images[:100], digits.test_labels[:100]
    ref = (digits.train_images, digits.train_labels)
    as_int = evaluate_samples(classifier, x, y, *ref)
    as_float = evaluate_samples(classifier, x, y.astype(np.float32), ref[0], ref[1] * 1.0)
    assert as_float == as_int
    assert all(isinstance(k, int) for k in as_float["per_label"])
    img, lab = np.zeros((4, 8, 8, 1)), np.array([0.0, 1.0, 2.0, 3.0])
    fit = lambda labels: fit_feature_classifier(  # noqa: E731
        img, labels, key=jax.random.PRNGKey(0), n_labels=4, steps=1
    )
    for fn, call in (
        ("evaluate_samples", lambda bad: evaluate_samples(classifier, x, bad, *ref)),
        ("fit_feature_classifier", fit),
    ):
        n = 100 if fn == "evaluate_samples" else 4
        base = y if fn == "evaluate_samples" else lab
        for bad in (base + 0.5, np.where(np.arange(n) == 1, np.nan, base), base > 0):
            with pytest.raises(ValueError, match=f"{fn}: labels must be integer class indices"):
                call(bad)
        with pytest.raises(ValueError, match=rf"{fn}: labels must be \[{n}\] class indices, one"):
            call(base[:-1])


def test_features_are_the_last_hidden_layer_after_its_relu(digits, classifier):
    feats = np.asarray(classifier.features(digits.test_images[:64]))
    assert feats.min() >= 0.0 and np.mean(feats == 0.0) > 0.05  # rectified: some units off
