"""train.class_weight -> per-class loss weights: sklearn's balanced formula, mappings, refusals."""

import numpy as np
import pytest

from cnncli.balance import class_weights
from cnncli.errors import ConfigError

CLASSES = ["cat", "dog", "7"]


def test_none_means_no_weights():
    assert class_weights("none", [0, 1, 2], CLASSES) is None


def test_balanced_is_n_over_classes_times_count():
    labels = np.array([0] * 10 + [1] * 1 + [2] * 5)
    w = class_weights("balanced", labels, CLASSES)
    np.testing.assert_allclose(w, [16 / (3 * 10), 16 / (3 * 1), 16 / (3 * 5)], rtol=1e-15)
    assert np.isclose((w[labels]).sum(), len(labels))  # total weight = number of images
    assert w[1] > w[2] > w[0]


def test_balanced_equals_sklearn_when_installed():
    utils = pytest.importorskip("sklearn.utils")
    labels = np.random.default_rng(0).integers(0, 3, 50)
    want = utils.class_weight.compute_class_weight("balanced", classes=np.arange(3), y=labels)
    np.testing.assert_allclose(class_weights("balanced", labels, CLASSES), want, rtol=1e-12)


def test_mapping_names_classes_and_the_rest_get_one():
    np.testing.assert_array_equal(class_weights({"dog": 3.0, "7": 0.5}, [0, 1, 2], CLASSES), [1.0, 3.0, 0.5])


@pytest.mark.parametrize("setting,needles", [
    ({"dgo": 2.0}, ["train.class_weight", "'dgo'", "did you mean 'dog'"]),
    ({"horse": 2.0}, ["'horse'", "cat, dog, 7"]),
    ({"cat": 0.0}, ["'cat'", "> 0"]),
    ("sometimes", ["train.class_weight", "'sometimes'"]),
])
def test_bad_settings_are_one_line_config_errors(setting, needles):
    with pytest.raises(ConfigError) as info:
        class_weights(setting, [0, 1, 2], CLASSES)
    assert "\n" not in str(info.value) and all(n in str(info.value) for n in needles)


def test_balanced_weighs_the_classes_a_fold_trains_on():
    # a K-fold split can hold all of a small class out (cnn cv with a class smaller than the folds): its
    # images are none, its weight nothing; the others' are scikit-learn's over the classes present (cnn cv
    # stopped at its first fold: 'balanced needs images of every class')
    np.testing.assert_allclose(class_weights("balanced", [0, 0, 2], CLASSES), [3 / 4, 0.0, 3 / 2], rtol=1e-15)


def test_a_class_name_matches_in_either_unicode_form():
    # the training folder written by macOS (e + accent), the YAML key typed as one character
    w = class_weights({"caf\u00e9": 2.0}, [0, 1], ["bar", "cafe\u0301"])
    np.testing.assert_array_equal(w, [1.0, 2.0])
