"""Where the attention goes (mhsa.evaluation.attention_share), on hand-made label and attention maps."""

from __future__ import annotations

import numpy as np
import pytest

from mhsa.evaluation.attention_share import activation_map, attention_shares, chance_shares, pool_labels, share_report


def test_labels_pool_to_the_share_of_each_class_per_cell():
    # a 4x2 map pooled to a 2x1 grid: top cell = rows 0-1, bottom cell = rows 2-3
    lab = np.array([[[0, 0], [1, 2], [2, 2], [1, 1]]])
    frac = pool_labels(lab, (2, 1))
    assert frac.shape == (1, 3, 2, 1)
    np.testing.assert_allclose(frac[0, :, 0, 0], [2 / 4, 1 / 4, 1 / 4])  # background, body, occluder
    np.testing.assert_allclose(frac[0, :, 1, 0], [0, 2 / 4, 2 / 4])
    np.testing.assert_allclose(frac.sum(1), 1.0)


def test_uneven_cells_follow_adaptive_pooling():
    lab = np.arange(5)[None, :, None].repeat(1, axis=2) % 3  # 5x1 map, rows 0,1,2,0,1
    frac = pool_labels(lab, (2, 1))  # cells span rows 0-2 and 2-4 (overlapping at row 2)
    np.testing.assert_allclose(frac[0, :, 0, 0], [1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(frac[0, :, 1, 0], [1 / 3, 1 / 3, 1 / 3])


def test_a_head_on_one_cell_takes_that_cells_classes_and_an_even_head_gets_chance():
    frac = np.zeros((1, 3, 2, 2))
    frac[0, 2, 0, 0] = 1.0  # cell (0,0) is all occluder
    frac[0, 1, 0, 1] = 1.0  # cell (0,1) all body
    frac[0, 0, 1, :] = 1.0  # bottom row background
    alpha = np.zeros((1, 2, 2, 2))
    alpha[0, 0, 0, 1] = 0.7  # head 1: only on the body cell
    alpha[0, 1] = 0.25  # head 2: even
    shares = attention_shares(alpha, frac)
    np.testing.assert_allclose(shares[0], [0, 1, 0])
    np.testing.assert_allclose(shares[1], chance_shares(frac))
    np.testing.assert_allclose(chance_shares(frac), [0.5, 0.25, 0.25])


def test_shares_average_images_each_normalised_by_its_own_mass():
    frac = np.zeros((2, 3, 1, 2))
    frac[:, 1, 0, 0] = 1.0  # left cell body
    frac[:, 2, 0, 1] = 1.0  # right cell occluder
    alpha = np.array([[[[3.0, 1.0]]], [[[0.0, 0.001]]]])  # image 1: 3/4 body; image 2: all occluder
    np.testing.assert_allclose(attention_shares(alpha, frac)[0], [0, (0.75 + 0) / 2, (0.25 + 1) / 2])
    zero = np.zeros((2, 1, 1, 2))  # no mass at all: counted as even attention
    np.testing.assert_allclose(attention_shares(zero, frac)[0], [0, 0.5, 0.5])


def test_the_baseline_map_is_the_channel_sum_of_activation_magnitudes():
    fmap = np.array([[[[1.0, -2.0]], [[3.0, 0.5]]]])  # (1, C=2, 1, 2)
    np.testing.assert_allclose(activation_map(fmap), [[[[4.0, 2.5]]]])


def test_the_report_names_classes_and_counts_images():
    lab = np.zeros((3, 8, 4), np.uint8)
    lab[:, :4] = 2
    report = share_report(np.ones((3, 2, 2, 1)), lab)
    assert report["classes"] == ["background", "body", "occluder"] and report["images"] == 3
    np.testing.assert_allclose(report["heads"], [[0.5, 0, 0.5]] * 2)
    np.testing.assert_allclose(report["chance"], [0.5, 0, 0.5])


def test_bad_shapes_and_negative_attention_are_refused():
    with pytest.raises(ValueError, match="negative"):
        attention_shares(-np.ones((1, 1, 1, 1)), np.ones((1, 3, 1, 1)))
    with pytest.raises(ValueError, match="must be"):
        attention_shares(np.ones((1, 1, 2, 2)), np.ones((1, 3, 1, 1)))
