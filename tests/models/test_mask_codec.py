"""ISTR's mask codecs: the soft-logit transform, the streamed PCA fit against numpy, exact reconstruction at full
rank, save / load, and the DCT codec."""
import os

import numpy as np
import pytest
import torch

from models.istr.mask_codec import (
    CodecError,
    CovarianceAccumulator,
    DCTMaskCodec,
    PCAMaskCodec,
    crop_box_masks,
    fit_pca,
    load_pca_codec,
    mask_iou,
    reconstruction_iou,
    soft_logits,
    zigzag_order,
)


def random_masks(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """uint8 [count, size, size]: rectangles and discs of random extent and position (never empty)."""
    generator = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    masks = np.zeros((count, size, size), dtype=np.uint8)
    for mask in masks:
        y0, x0 = generator.integers(0, size // 2, 2)
        y1, x1 = y0 + generator.integers(2, size - y0 + 1), x0 + generator.integers(2, size - x0 + 1)
        if generator.random() < 0.5:
            mask[y0:y1, x0:x1] = 1
        else:
            cy, cx, r = (y0 + y1) / 2, (x0 + x1) / 2, max(1.5, min(y1 - y0, x1 - x0) / 2)
            mask[(rows - cy) ** 2 + (cols - cx) ** 2 <= r * r] = 1
            mask[int(cy), int(cx)] = 1
    return torch.from_numpy(masks)


def in_batches(masks: torch.Tensor, sizes: list[int]):
    start = 0
    for size in sizes:
        yield masks[start : start + size]
        start += size
    if start < len(masks):
        yield masks[start:]


# --------------------------------------------------------------------------------------------- soft logits


def test_soft_logits_follow_the_official_noise_range():
    masks = torch.zeros(200, 4, 4)
    masks[:100] = 1
    logits = soft_logits(masks, torch.Generator().manual_seed(0))
    values = torch.sigmoid(logits)
    # Ones become 1 - r, zeros r, with r in [0.01, 0.05]; r is floored at 0.01, so 0.01 occurs often.
    assert float(values[:100].min()) >= 0.95 - 1e-6 and float(values[:100].max()) <= 0.99 + 1e-6
    assert float(values[100:].min()) >= 0.01 - 1e-6 and float(values[100:].max()) <= 0.05 + 1e-6
    floored = (values[100:] - 0.01).abs() < 1e-6
    assert 0.1 < float(floored.float().mean()) < 0.3  # P(U(0, 0.05) < 0.01) = 0.2
    again = soft_logits(masks, torch.Generator().manual_seed(0))
    torch.testing.assert_close(logits, again)


# -------------------------------------------------------------------------------------------------- fitting


def test_streamed_covariance_equals_numpy_whatever_the_batching():
    rows = np.random.default_rng(0).normal(size=(103, 7)) * np.arange(1, 8) + 3.0
    one_pass = CovarianceAccumulator(7)
    one_pass.update(rows)
    batched = CovarianceAccumulator(7)
    for start, stop in ((0, 1), (1, 40), (40, 40), (40, 103)):
        batched.update(rows[start:stop])
    expected = np.cov(rows, rowvar=False)
    np.testing.assert_allclose(one_pass.covariance(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(batched.covariance(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(batched.mean, rows.mean(0), rtol=1e-12)
    assert batched.count == 103


def test_pca_components_equal_numpy_svd_on_a_small_set():
    size, count, seed = 6, 60, 3
    masks = random_masks(count, size, seed=1)
    fit = fit_pca(in_batches(masks, [7, 20, 1]), size, seed=seed)

    # The same soft logits, drawn in the same order from the same seed, decomposed by numpy's SVD.
    generator = torch.Generator().manual_seed(seed)
    logits = torch.cat([soft_logits(b, generator) for b in in_batches(masks, [7, 20, 1])]).double().numpy()
    centred = logits - logits.mean(0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    variance = singular**2 / (count - 1)

    np.testing.assert_allclose(fit.mean, logits.mean(0), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(fit.explained_variance[: len(variance)], variance, rtol=1e-8, atol=1e-8)
    leading = 10  # distinct eigenvalues: each component is defined up to its sign
    assert np.all(np.diff(variance[: leading + 1]) < -1e-6)
    dots = np.abs(np.sum(fit.components[:leading] * vt[:leading], axis=1))
    np.testing.assert_allclose(dots, 1.0, atol=1e-8)
    # The sign convention: each component's largest-magnitude entry is positive.
    largest = fit.components[np.arange(leading), np.argmax(np.abs(fit.components[:leading]), axis=1)]
    assert np.all(largest > 0)


def test_full_rank_codec_reproduces_masks_exactly():
    size = 28
    train = random_masks(900, size, seed=0)  # > 784 masks: with the soft-logit noise the covariance is full rank
    fit = fit_pca(in_batches(train, [256, 256, 256]), size, seed=0)
    codec = PCAMaskCodec.from_fit(fit, size * size, size)
    unseen = random_masks(50, size, seed=7)
    decoded = codec.decode(codec.encode(unseen))
    assert decoded.shape == (50, size, size)
    assert torch.equal(decoded > 0.5, unseen.bool())
    # Whitening: the training embeddings have unit variance per component.
    embeddings = codec.encode(train, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(embeddings[:, :20].double().var(0).numpy(), 1.0, rtol=0.05)


def test_fewer_components_reconstruct_worse_and_the_report_metric_says_so():
    size = 16
    train = random_masks(400, size, seed=0)
    fit = fit_pca(in_batches(train, [100] * 4), size, seed=0)
    codec = PCAMaskCodec.from_fit(fit, 64, size)
    ious, count = reconstruction_iou(codec, in_batches(random_masks(80, size, seed=5), [30, 50]), [2, 8, 64])
    assert count == 80
    assert ious[2] < ious[8] < ious[64] <= 1.0
    assert ious[64] > 0.9
    truncated = codec.truncated(8)
    torch.testing.assert_close(truncated.components, codec.components[:8])


def test_mask_iou_by_row():
    a = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    b = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)
    assert mask_iou(a, b).tolist() == [0.5, 1.0, 0.0]


def test_box_crops_are_binary_and_box_relative():
    masks = torch.zeros(2, 40, 60, dtype=torch.uint8)
    masks[0, 10:30, 20:40] = 1
    masks[1, 0:40, 0:30] = 1  # the left half of the box below
    boxes = torch.tensor([[20.0, 10.0, 40.0, 30.0], [0.0, 0.0, 60.0, 40.0]])
    crops = crop_box_masks(masks, boxes, 14)
    assert crops.shape == (2, 14, 14) and set(crops.unique().tolist()) <= {0.0, 1.0}
    assert bool(crops[0].all())
    assert bool(crops[1, :, :7].all()) and not bool(crops[1, :, 7:].any())


# ------------------------------------------------------------------------------------------------- files


def test_fitted_codec_round_trips_through_save_and_load(tmp_path):
    size = 12
    fit = fit_pca(in_batches(random_masks(300, size), [100] * 3), size, seed=0)
    codec = PCAMaskCodec.from_fit(fit, 20, size, {"ann_file": "/data/x.json"})
    path = tmp_path / "nested" / "codec.pt"
    assert codec.save(path) == str(path)
    assert sorted(os.listdir(path.parent)) == ["codec.pt"]  # no temporary file left behind

    loaded = load_pca_codec(path)
    assert (loaded.num_components, loaded.mask_size) == (20, size)
    for name in ("components", "mean", "explained_variance", "explained_variance_ratio"):
        torch.testing.assert_close(getattr(loaded, name), getattr(codec, name), rtol=0, atol=0)
    assert loaded.source["ann_file"] == "/data/x.json" and loaded.source["num_masks"] == 300
    masks = random_masks(10, size, seed=3)
    torch.testing.assert_close(loaded.encode(masks, torch.Generator().manual_seed(1)),
                               codec.encode(masks, torch.Generator().manual_seed(1)))
    assert 0 < float(loaded.explained_variance_ratio.sum()) < 1


def test_loading_checks_components_and_mask_size(tmp_path):
    size = 12
    fit = fit_pca(in_batches(random_masks(200, size), [200]), size, seed=0)
    path = PCAMaskCodec.from_fit(fit, 20, size).save(tmp_path / "codec.pt")
    with pytest.raises(CodecError, match=r"K=20 components of 12x12 masks, the model expects K=60, 12x12"):
        PCAMaskCodec(60, size).load_file(path)
    with pytest.raises(CodecError, match=r"the model expects K=20, 28x28"):
        PCAMaskCodec(20, 28).load_file(path)
    with pytest.raises(CodecError, match="codec file not found"):
        PCAMaskCodec(20, size).load_file(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CodecError, match="not a maskbench ISTR codec file"):
        load_pca_codec(tmp_path / "other.pt")


def test_an_unfitted_codec_refuses_to_encode():
    with pytest.raises(CodecError, match="not fitted"):
        PCAMaskCodec(8, 8).encode(torch.zeros(1, 8, 8))


def test_whitening_needs_positive_variance():
    fit = fit_pca(in_batches(random_masks(5, 8), [5]), 8, seed=0)  # 5 masks: rank 4
    assert fit.rank == 4
    with pytest.raises(CodecError, match="span only 4 dimensions"):
        PCAMaskCodec.from_fit(fit, 10, 8)


# --------------------------------------------------------------------------------------------------- DCT


def test_dct_zigzag_order_is_jpeg_order():
    assert zigzag_order(4)[:10] == [(0, 0), (0, 1), (1, 0), (2, 0), (1, 1), (0, 2), (0, 3), (1, 2), (2, 1), (3, 0)]
    assert sorted(zigzag_order(5)) == [(i, j) for i in range(5) for j in range(5)]


def test_dct_codec_is_orthonormal_and_exact_at_full_size():
    codec = DCTMaskCodec(64, 8)
    torch.testing.assert_close(codec.components @ codec.components.T, torch.eye(64), atol=1e-5, rtol=0)
    masks = random_masks(20, 8)
    assert torch.equal(codec.decode(codec.encode(masks)) > 0.5, masks.bool())
    # The first coefficient is the DC term: the mask's sum / size.
    torch.testing.assert_close(codec.encode(masks)[:, 0], masks.flatten(1).float().sum(1) / 8)
