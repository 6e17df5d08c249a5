"""Tests of the scikit-learn estimator ``TFMClassifier`` and its preprocessing / ensemble / hierarchical parts.

Most tests use the lead's tiny random TabICL (``make_tiny_network``); tests that need to know the right answer use
``NearestNeighbourOracle``, a stand-in network that labels each test row like its nearest training row.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from autogluon_tfm.checkpoints import make_tiny_network
from autogluon_tfm.inference import TFMClassifier
from autogluon_tfm.inference.ensemble import build_ensemble, feature_orders, latin_square_rows
from autogluon_tfm.inference.hierarchical import build_class_tree, hierarchical_proba
from autogluon_tfm.inference.preprocessing import (
    EnsemblePreprocessor,
    NormalizationPipeline,
    OutlierSoftClipper,
    TableEncoder,
)

torch.set_num_threads(1)


class NearestNeighbourOracle(torch.nn.Module):
    """Stand-in network following the protocol: each test row gets confident logits for the label of its nearest
    training row (Euclidean). Exact for rows that also appear in the training set, whatever the feature order."""

    arch = "oracle"

    def __init__(self, max_classes: int = 10):
        super().__init__()
        self.max_classes = max_classes
        self.config = {"max_classes": max_classes}
        self.confidence = torch.nn.Parameter(torch.tensor(20.0))
        self.n_forward_calls = 0
        self.max_rows_seen = 0

    def forward(self, X: torch.Tensor, y_train: torch.Tensor) -> torch.Tensor:
        self.n_forward_calls += 1
        self.max_rows_seen = max(self.max_rows_seen, X.shape[1])
        n_train = y_train.shape[1]
        nearest = torch.cdist(X[:, n_train:], X[:, :n_train]).argmin(dim=-1)
        labels = torch.gather(y_train.long(), 1, nearest)
        # one_hot fails for labels >= max_classes: proves the caller never feeds more classes than supported.
        return self.confidence * F.one_hot(labels, self.max_classes).float()


@pytest.fixture(scope="module")
def tiny_network() -> torch.nn.Module:
    return make_tiny_network("tabicl", "classification", seed=0)


def mixed_frame(n_rows: int = 40, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=n_rows)
    numeric[::7] = np.nan
    skewed = rng.exponential(size=n_rows) * 1000
    skewed[3] = np.inf
    colour = rng.choice(["red", "green", "blue"], size=n_rows).astype(object)
    colour[::5] = None
    frame = pd.DataFrame(
        {
            "numeric": numeric,
            "count": rng.integers(0, 5, size=n_rows),
            "colour": pd.Categorical(colour),
            "shape": rng.choice(["square", "circle"], size=n_rows).astype(object),
            "flag": rng.random(n_rows) > 0.5,
            "constant": 1.0,
            "skewed": skewed,
        }
    )
    labels = np.where(np.nan_to_num(numeric) > 0.3, "high", np.where(frame["flag"], "flagged", "low"))
    return frame, pd.Series(labels, name="target")


def make_classifier(network: torch.nn.Module, **kwargs) -> TFMClassifier:
    params = dict(checkpoint=network, n_estimators=4, device="cpu", random_state=0)
    params.update(kwargs)
    return TFMClassifier(**params)


# ------------------------------------------------------------------------------------------------------ end to end
def test_fit_predict_on_mixed_dataframe(tiny_network):
    X, y = mixed_frame()
    clf = make_classifier(tiny_network).fit(X.iloc[:30], y.iloc[:30])
    proba = clf.predict_proba(X.iloc[30:])
    assert proba.shape == (10, 3) and proba.dtype == np.float64
    assert np.isfinite(proba).all() and (proba >= 0).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert list(clf.classes_) == ["flagged", "high", "low"]
    assert clf.n_features_in_ == 7 and list(clf.feature_names_in_) == list(X.columns)
    assert set(clf.predict(X.iloc[30:])) <= set(clf.classes_)
    # "constant" is dropped; 7 columns -> 6 features fed to the network.
    assert clf.preprocessor_.n_features_out_ == 6
    assert len(clf.members_) == 4 and clf.class_tree_ is None


def test_fit_runs_no_forward_and_labels_round_trip():
    oracle = NearestNeighbourOracle()
    X, y = mixed_frame(30)
    X = X.drop(columns=["numeric"])  # keep rows distinct without NaN ties
    X["id"] = np.arange(30, dtype=float)
    clf = make_classifier(oracle).fit(X, y)
    assert oracle.n_forward_calls == 0
    np.testing.assert_array_equal(clf.predict(X), y.to_numpy())
    # integer and categorical labels come back with their own type.
    y_int = np.arange(30) % 4 + 10
    np.testing.assert_array_equal(make_classifier(oracle).fit(X, y_int).predict(X), y_int)
    y_cat = pd.Series(pd.Categorical(np.where(np.arange(30) % 2 == 0, "even", "odd")))
    np.testing.assert_array_equal(make_classifier(oracle).fit(X, y_cat).predict(X), y_cat.to_numpy())


def test_class_shift_and_feature_orders_are_undone():
    # With class shifts every member sees other class ids; the oracle is only right if the shift is undone.
    rng = np.random.default_rng(1)
    X = rng.normal(size=(24, 5))
    y = np.arange(24) % 6
    clf = make_classifier(NearestNeighbourOracle(), n_estimators=8, norm_methods=("none", "power")).fit(X, y)
    assert {tuple(m.class_pattern) for m in clf.members_} != {tuple(range(6))}
    assert len({tuple(m.feature_order) for m in clf.members_}) > 1
    proba = clf.predict_proba(X)
    np.testing.assert_array_equal(proba.argmax(axis=1), y)
    assert (proba.max(axis=1) > 0.99).all()


def test_deterministic_for_random_state(tiny_network):
    X, y = mixed_frame()
    first = make_classifier(tiny_network, random_state=3).fit(X, y).predict_proba(X)
    second = make_classifier(tiny_network, random_state=3).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(first, second)
    members_3 = make_classifier(tiny_network, random_state=3).fit(X, y).members_
    members_4 = make_classifier(tiny_network, random_state=4).fit(X, y).members_
    assert [tuple(m.feature_order) for m in members_3] != [tuple(m.feature_order) for m in members_4]


def test_single_row_prediction_matches_batch(tiny_network):
    X, y = mixed_frame()
    clf = make_classifier(tiny_network).fit(X.iloc[:30], y.iloc[:30])
    X_test = X.iloc[30:].copy()
    X_test.iloc[0, X_test.columns.get_loc("shape")] = "triangle"  # unseen category
    X_test.iloc[1, X_test.columns.get_loc("numeric")] = np.nan
    batch = clf.predict_proba(X_test)
    for row in range(len(X_test)):
        np.testing.assert_allclose(clf.predict_proba(X_test.iloc[[row]]), batch[[row]], atol=1e-5)


def test_chunking_and_batch_size_do_not_change_results(tiny_network):
    X, y = mixed_frame()
    clf = make_classifier(tiny_network, n_estimators=5).fit(X.iloc[:30], y.iloc[:30])
    reference = clf.predict_proba(X.iloc[30:])
    clf.max_test_rows_per_forward = 3
    clf.batch_size = 2
    clf.verbose = True  # progress bar path
    np.testing.assert_allclose(clf.predict_proba(X.iloc[30:]), reference, atol=1e-5)
    oracle = NearestNeighbourOracle()
    chunked = make_classifier(oracle, n_estimators=2, norm_methods=("none",)).fit(X.iloc[:30], y.iloc[:30])
    chunked.max_test_rows_per_forward = 4
    chunked.predict_proba(X)
    assert oracle.max_rows_seen == 30 + 4  # every call: all training rows + one chunk of test rows
    assert oracle.n_forward_calls == 10  # 2 members in one batch x ceil(40 / 4) chunks


def test_input_dataframe_and_labels_not_mutated(tiny_network):
    X, y = mixed_frame()
    X_before, y_before = X.copy(deep=True), y.copy(deep=True)
    clf = make_classifier(tiny_network).fit(X, y)
    clf.predict_proba(X)
    clf.predict(X[list(reversed(X.columns))])
    pd.testing.assert_frame_equal(X, X_before)
    pd.testing.assert_series_equal(y, y_before)


def test_column_order_is_matched_by_name(tiny_network):
    X, y = mixed_frame()
    clf = make_classifier(tiny_network).fit(X, y)
    np.testing.assert_array_equal(clf.predict_proba(X[list(reversed(X.columns))]), clf.predict_proba(X))


def test_average_probabilities_option(tiny_network):
    X, y = mixed_frame()
    by_logits = make_classifier(tiny_network).fit(X, y).predict_proba(X)
    by_proba = make_classifier(tiny_network, average_logits=False).fit(X, y).predict_proba(X)
    np.testing.assert_allclose(by_proba.sum(axis=1), 1.0, atol=1e-12)
    assert not np.allclose(by_logits, by_proba)


def test_numpy_input_and_object_arrays(tiny_network):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3))
    y = (X[:, 0] > 0).astype(int)
    clf = make_classifier(tiny_network).fit(X, y)
    assert not hasattr(clf, "feature_names_in_")
    assert clf.predict_proba(X).shape == (20, 2)
    assert clf.predict_proba(X[:0]).shape == (0, 2)
    X_object = np.column_stack([X[:, :2], rng.choice(["a", "b"], size=20)]).astype(object)
    X_object[:, :2] = X[:, :2]
    clf = make_classifier(tiny_network).fit(X_object, y)
    assert clf.encoder_.categorical_columns_ == [2] and clf.encoder_.numeric_columns_ == [0, 1]
    assert clf.predict_proba(X_object).shape == (20, 2)


@pytest.mark.parametrize("n_rows", [2, 3, 4])
def test_tiny_contexts_one_row_per_class(tiny_network, n_rows):
    X = pd.DataFrame({"a": np.arange(n_rows, dtype=float), "b": ["x", "y", "x", "y"][:n_rows]})
    y = [f"class{i}" for i in range(n_rows)]
    clf = make_classifier(tiny_network, n_estimators=8).fit(X, y)
    proba = clf.predict_proba(X)
    assert proba.shape == (n_rows, n_rows)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert np.isfinite(proba).all()


def test_degenerate_columns(tiny_network):
    rng = np.random.default_rng(0)
    n_rows = 16
    y = np.arange(n_rows) % 2
    only_constant = pd.DataFrame({"c1": 1.0, "c2": "same", "c3": np.nan}, index=range(n_rows))
    clf = make_classifier(tiny_network).fit(only_constant, y)
    assert clf.preprocessor_.n_features_out_ == 1
    np.testing.assert_allclose(clf.predict_proba(only_constant).sum(axis=1), 1.0, atol=1e-12)

    messy = pd.DataFrame(
        {
            "with_inf": np.where(np.arange(n_rows) % 5 == 0, np.inf, rng.normal(size=n_rows)),
            "neg_inf": np.where(np.arange(n_rows) % 4 == 0, -np.inf, rng.normal(size=n_rows)),
            "all_nan": np.nan,
            "bool": rng.random(n_rows) > 0.5,
            "nullable": pd.array(rng.integers(0, 3, size=n_rows), dtype="Int64"),
        }
    )
    messy.loc[0, "nullable"] = pd.NA
    clf = make_classifier(tiny_network).fit(messy, y)
    proba = clf.predict_proba(messy.assign(with_inf=[np.inf, -np.inf] * (n_rows // 2)))
    assert np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)


def test_eval_mode_used_and_training_mode_restored():
    class DropoutProbe(NearestNeighbourOracle):
        def forward(self, X, y_train):
            assert not self.training
            return super().forward(X, y_train)

    probe = DropoutProbe().train()
    X = np.random.default_rng(0).normal(size=(10, 2))
    make_classifier(probe).fit(X, np.arange(10) % 2).predict_proba(X)
    assert probe.training


# ------------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("X", "y", "message"),
    [
        (pd.DataFrame({"a": []}), [], "0 rows"),
        (pd.DataFrame(index=range(4)), [0, 1, 0, 1], "0 columns"),
        (np.zeros((4, 0)), [0, 1, 0, 1], "0 columns"),
        (pd.DataFrame({"a": [1.0, 2.0, 3.0]}), [0, 1], "different lengths"),
        (pd.DataFrame({"a": [1.0, 2.0, 3.0]}), ["a", "a", "a"], "single class"),
        (pd.DataFrame({"a": [1.0, 2.0, 3.0]}), [0.0, np.nan, 1.0], "NaN/inf"),
        (pd.DataFrame({"a": [1.0, 2.0, 3.0]}), [0.0, np.inf, 1.0], "NaN/inf"),
        (pd.DataFrame({"a": [1.0, 2.0, 3.0]}), ["x", None, "y"], "NaN/inf"),
        (pd.DataFrame({"a": [1.0, 2.0, 3.0]}), [0.5, 1.5, 2.25], "continuous"),
        (np.arange(4.0), [0, 1, 0, 1], "2-D"),
        (pd.Series([1.0, 2.0]), [0, 1], "Series"),
    ],
)
def test_bad_training_input_raises(tiny_network, X, y, message):
    with pytest.raises(ValueError, match=message):
        make_classifier(tiny_network).fit(X, y)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"n_estimators": 0}, "n_estimators"),
        ({"batch_size": 0}, "batch_size"),
        ({"norm_methods": ("none", "bogus")}, "bogus"),
        ({"norm_methods": ()}, "norm_methods"),
        ({"feat_shuffle": "sideways"}, "sideways"),
        ({"categorical_order": "alphabetical"}, "alphabetical"),
        ({"precision": "int8"}, "int8"),
        ({"softmax_temperature": 0.0}, "softmax_temperature"),
        ({"max_classes_per_call": 1}, "max_classes_per_call"),
        ({"max_classes_per_call": "two"}, "max_classes_per_call"),
        ({"max_classes_per_call": 11}, "max_classes_per_call=11 exceeds"),
        ({"device": "cuda:0" if not torch.cuda.is_available() else "nonsense"}, "device|CUDA"),
    ],
)
def test_bad_parameters_raise(tiny_network, params, message):
    X = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0]})
    with pytest.raises(ValueError, match=message):
        make_classifier(tiny_network, **params).fit(X, [0, 1, 0, 1])


def test_regression_network_is_rejected():
    with pytest.raises(ValueError, match="not a classifier"):
        make_classifier(make_tiny_network("tabicl", "regression")).fit(np.eye(4), [0, 1, 0, 1])


def test_bad_prediction_input_raises(tiny_network):
    X, y = mixed_frame()
    with pytest.raises(ValueError, match="not fitted"):
        make_classifier(tiny_network).predict_proba(X)
    clf = make_classifier(tiny_network).fit(X, y)
    with pytest.raises(ValueError, match=r"missing columns \['flag'\]"):
        clf.predict_proba(X.drop(columns=["flag"]))
    with pytest.raises(ValueError, match=r"unexpected columns \['surprise'\]"):
        clf.predict_proba(X.assign(surprise=1))
    with pytest.raises(ValueError, match="6 columns.*fitted with 7"):
        clf.predict_proba(X.to_numpy()[:, :6])
    with pytest.raises(ValueError, match="2-D"):
        clf.predict_proba(X.to_numpy()[0])
    array_clf = make_classifier(tiny_network).fit(np.eye(4), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="3 columns.*fitted with 4"):
        array_clf.predict_proba(np.eye(3))


# -------------------------------------------------------------------------------------------------------- pickling
def test_pickle_round_trip_predicts_identically(tiny_network):
    X, y = mixed_frame()
    clf = make_classifier(copy.deepcopy(tiny_network)).fit(X.iloc[:30], y.iloc[:30])
    before = clf.predict_proba(X.iloc[30:])
    payload = pickle.dumps(clf)
    restored = pickle.loads(payload)
    assert all(p.device.type == "cpu" for p in restored.network_.parameters())
    assert restored.device_.type == "cpu"
    np.testing.assert_array_equal(restored.predict_proba(X.iloc[30:]), before)
    np.testing.assert_array_equal(clf.predict_proba(X.iloc[30:]), before)  # the original still works
    assert restored.get_params()["n_estimators"] == 4


# -------------------------------------------------------------------------------------------------- calibration
def _log_loss(proba: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(proba[np.arange(len(labels)), labels])))


@pytest.mark.parametrize(("confidence", "label_noise", "sharper"), [(0.3, 0.0, True), (20.0, 0.3, False)])
def test_calibrate_fits_a_temperature_on_held_out_training_rows(confidence, label_noise, sharper):
    """An underconfident network (clean clusters, weak logits) gets a temperature < 1, an overconfident one (noisy
    labels, strong logits) one > 1; either way the log loss of new rows drops and no predicted class changes."""
    rng = np.random.default_rng(4)
    n_rows, n_classes = 300, 3

    def table(n: int) -> tuple[pd.DataFrame, np.ndarray]:
        y = rng.integers(0, n_classes, size=n)
        X = pd.DataFrame({"a": y * 5.0 + rng.normal(size=n), "b": rng.normal(size=n)})
        noisy = rng.random(n) < label_noise
        y = np.where(noisy, rng.integers(0, n_classes, size=n), y)
        return X, y

    X, y = table(n_rows)
    X_new, y_new = table(200)
    oracle = NearestNeighbourOracle()
    with torch.no_grad():
        oracle.confidence.fill_(confidence)
    plain = make_classifier(oracle, calibrate=False).fit(X, y)
    calibrated = make_classifier(oracle, calibrate=True).fit(X, y)
    assert plain.calibration_temperature_ == 1.0
    assert (calibrated.calibration_temperature_ < 0.8) if sharper else (calibrated.calibration_temperature_ > 1.25)
    before, after = plain.predict_proba(X_new), calibrated.predict_proba(X_new)
    assert _log_loss(after, y_new) < _log_loss(before, y_new) - 0.02
    np.testing.assert_allclose(after.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(calibrated.predict(X_new), plain.predict(X_new))


def test_calibrate_auto_follows_the_weights_and_is_off_when_finetuning(tiny_network):
    from autogluon_tfm.checkpoints import load_network

    X, y = mixed_frame()
    network = copy.deepcopy(tiny_network)
    assert make_classifier(network).fit(X, y).calibration_temperature_ == 1.0  # no card: no recommendation
    network.inference_defaults = {"calibrate": True}
    calls = []
    original = TFMClassifier._fit_calibration_temperature

    def spy(self, *args):
        calls.append(self.fine_tune_)
        return original(self, *args)

    TFMClassifier._fit_calibration_temperature = spy
    try:
        make_classifier(network).fit(X, y)
        make_classifier(network, fine_tune="full", fine_tune_steps=1).fit(X, y)
    finally:
        TFMClassifier._fit_calibration_temperature = original
    assert calls == [None]  # "auto" calibrated the in-context fit only
    with pytest.raises(ValueError, match="calibrate=True .* fine_tune"):
        make_classifier(network, calibrate=True, fine_tune="lora").fit(X, y)
    with pytest.raises(ValueError, match="calibrate must be"):
        make_classifier(network, calibrate="yes").fit(X, y)
    # A card that recommends finetuning yields to an explicit calibrate=True (calibration needs unseen rows).
    network.inference_defaults = {"calibrate": True, "fine_tune": "full", "fine_tune_steps": 1}
    calibrated = make_classifier(network, calibrate=True).fit(X, y)
    assert calibrated.fine_tune_ is None and calibrated.fine_tune_report_ is None
    assert calibrated.calibration_temperature_ != 1.0
    # The shipped TabPFN v2 weights recommend it (they are underconfident on real tables); TabICL's do not.
    assert load_network("tabpfnv2-clf-small").inference_defaults.get("calibrate") is True
    assert "calibrate" not in load_network("tabicl-clf-small").inference_defaults


def test_estimator_pickled_before_calibration_still_predicts(tiny_network):
    X, y = mixed_frame()
    clf = make_classifier(copy.deepcopy(tiny_network)).fit(X.iloc[:30], y.iloc[:30])
    expected = clf.predict_proba(X.iloc[30:])
    state = clf.__getstate__()
    del state["calibrate"], state["calibration_temperature_"]
    old = TFMClassifier.__new__(TFMClassifier)
    old.__setstate__(state)
    assert old.get_params()["calibrate"] is False
    np.testing.assert_array_equal(old.predict_proba(X.iloc[30:]), expected)


# ------------------------------------------------------------------------------------------------- many classes
@pytest.mark.parametrize("n_classes", [11, 30, 100])
def test_more_classes_than_network_supports(n_classes):
    rng = np.random.default_rng(n_classes)
    y = np.repeat(np.arange(n_classes), 2)
    X = pd.DataFrame({"signal": y + rng.normal(scale=0.05, size=len(y)), "noise": rng.normal(size=len(y))})
    labels = np.array([f"c{i:02d}" for i in y])
    oracle = NearestNeighbourOracle()
    clf = make_classifier(oracle, n_estimators=2).fit(X, labels)
    assert clf.class_tree_ is not None and all(len(leaf.classes) <= 10 for leaf in clf.class_tree_.leaves())
    proba = clf.predict_proba(X)
    assert proba.shape == (len(y), n_classes)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(clf.predict(X), labels)
    assert set(clf.predict(X)) == set(clf.classes_)
    oracle.n_forward_calls = 0
    clf.predict_proba(X.iloc[:3])
    assert oracle.n_forward_calls == 2 * clf.class_tree_.count_nodes()  # one call per tree node and member
    by_proba = make_classifier(oracle, n_estimators=2, average_logits=False).fit(X, labels)
    np.testing.assert_array_equal(by_proba.predict(X), labels)


def test_max_classes_per_call_splits_the_decision_and_auto_follows_the_weights(tmp_path):
    from autogluon_tfm.checkpoints import load_network, save_network

    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(5), 4)
    X = pd.DataFrame({"signal": y + rng.normal(scale=0.05, size=len(y))})
    oracle = NearestNeighbourOracle()
    clf = make_classifier(oracle, n_estimators=2, max_classes_per_call=2).fit(X, y)
    assert clf.max_classes_per_call_ == 2 and clf.class_tree_ is not None
    nodes, stack = [], [clf.class_tree_]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.children)
    assert all(len(node.children) <= 2 for node in nodes)
    assert all(len(leaf.classes) <= 2 for leaf in clf.class_tree_.leaves())
    oracle.n_forward_calls = 0
    np.testing.assert_array_equal(clf.predict(X), y)
    assert oracle.n_forward_calls > 2  # several binary calls per member instead of one 5-way call
    # "auto": the network's recommendation (shipped weights' card), else its max_classes.
    assert make_classifier(oracle).fit(X, y).max_classes_per_call_ == 10
    oracle.inference_defaults = {"max_classes_per_call": 3}
    auto = make_classifier(oracle).fit(X, y)
    assert auto.max_classes_per_call_ == 3 and auto.class_tree_ is not None
    assert load_network("tabicl-clf-small").inference_defaults["max_classes_per_call"] == 2
    assert load_network(save_network(make_tiny_network(), tmp_path / "w.safetensors")).inference_defaults == {}


def test_many_classes_with_real_network_is_a_distribution(tiny_network):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    y = np.arange(60) % 12
    proba = make_classifier(tiny_network, n_estimators=2).fit(X, y).predict_proba(X[:7])
    assert proba.shape == (7, 12) and np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("arch", ["tabicl", "tabpfn_v2", "mitra"])
def test_one_hundred_classes_with_each_real_network(arch):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 3))
    y = np.arange(200) % 100
    model = {"tabicl": "tabicl", "tabpfn_v2": "tabpfnv2", "mitra": "mitra"}[arch]
    clf = TFMClassifier(model=model, checkpoint=make_tiny_network(arch), n_estimators=1, device="cpu").fit(X, y)
    assert clf.class_tree_.count_nodes() == 11  # root over 10 groups + 10 leaves of 10 classes: depth ceil(log10 100)
    proba = clf.predict_proba(X[:5])
    assert proba.shape == (5, 100) and (proba > 0).all()  # every class reachable along its path
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)


# ----------------------------------------------------------------------------------------------- preprocessing units
def test_outlier_soft_clipping():
    train = np.random.default_rng(0).normal(size=(500, 1))
    clipper = OutlierSoftClipper(threshold=4.0).fit(train)
    upper = clipper.upper_bounds_[0]
    assert 3.0 < upper < 5.0
    values = np.array([[0.5], [upper - 0.01], [100.0], [1000.0], [-1000.0]])
    clipped = clipper.transform(values)[:, 0]
    np.testing.assert_allclose(clipped[:2], values[:2, 0])  # inside the bounds: unchanged
    assert upper < clipped[2] <= upper + np.log1p(100.0) + 1e-9
    assert clipped[2] < clipped[3] < 20  # order kept, extremes tamed
    assert -20 < clipped[4] < clipper.lower_bounds_[0]


def test_normalization_pipeline_train_rows_and_extremes():
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.exponential(size=100), rng.normal(size=100)])
    for method in ("none", "power", "quantile", "robust"):
        pipeline = NormalizationPipeline(method)
        train = pipeline.fit_transform(X)
        np.testing.assert_allclose(pipeline.transform(X), train, atol=1e-9)
        extreme = pipeline.transform(np.array([[1e12, -1e12], [np.float64(1e300), 0.0]]))
        assert np.isfinite(extreme).all()
    scaled = NormalizationPipeline("none", outlier_threshold=100.0).fit_transform(X)
    np.testing.assert_allclose(scaled.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(scaled.std(axis=0), 1.0, atol=1e-5)


def test_constant_column_removal():
    X = np.column_stack([np.arange(6.0), np.full(6, 3.0), np.arange(6.0) % 2])
    preprocessor = EnsemblePreprocessor(("none", "power")).fit(X)
    np.testing.assert_array_equal(preprocessor.kept_columns_, [True, False, True])
    assert preprocessor.train_transformed_["power"].shape == (6, 2)
    assert preprocessor.transform(X[:2], "none").shape == (2, 2)
    all_constant = EnsemblePreprocessor(("none",)).fit(np.ones((5, 3)))
    np.testing.assert_array_equal(all_constant.transform(np.random.rand(2, 3), "none"), np.zeros((2, 1)))
    assert all_constant.n_features_out_ == 1
    with pytest.raises(ValueError, match="not fitted"):
        preprocessor.transform(X, "quantile")


def test_table_encoder_categories_missing_and_unseen():
    train = pd.DataFrame(
        {
            "num": [1.0, np.nan, 3.0, np.inf],
            "cat": pd.Categorical(["b", "a", None, "b"]),
            "obj": ["x", 1, "y", None],  # mixed types are compared as strings
            "flag": [True, False, True, True],
            "empty": np.nan,
        }
    )
    encoder = TableEncoder().fit(train)
    assert encoder.categorical_columns_ == [1, 2, 3] and encoder.numeric_columns_ == [0, 4]
    encoded = encoder.transform(train)
    # categoricals first: cat, obj, flag; then num (mean of finite values = 2), empty (0).
    np.testing.assert_array_equal(encoded[:, 0], [1, 0, -1, 1])
    np.testing.assert_array_equal(encoded[:, 1], [1, 0, 2, -1])
    np.testing.assert_array_equal(encoded[:, 2], [1, 0, 1, 1])
    np.testing.assert_array_equal(encoded[:, 3], [1, 2, 3, 2])
    np.testing.assert_array_equal(encoded[:, 4], 0.0)
    unseen = pd.DataFrame(
        {"num": [-np.inf], "cat": pd.Categorical(["zebra"]), "obj": ["never"], "flag": [False], "empty": [5.0]}
    )
    np.testing.assert_array_equal(encoder.transform(unseen)[0], [-1, -1, 0, 2, 5.0])


def test_table_encoder_target_order_ranks_many_categories_by_smoothed_mean():
    # 12 cities (>= TARGET_ORDER_MIN_CATEGORIES): city c has target 10 * (11 - c), so the lexical order c00 < c01 <
    # ... is the reverse of the target order; 3 sizes (few categories) keep their sorted codes.
    cities = np.repeat([f"c{c:02d}" for c in range(12)], 4)
    target = np.repeat(10.0 * (11 - np.arange(12)), 4)
    sizes = np.resize(["s", "m", "l"], len(cities))
    train = pd.DataFrame({"city": cities, "size": pd.Categorical(sizes), "x": np.arange(len(cities), dtype=float)})
    encoder = TableEncoder(categorical_order="target").fit(train, target)
    encoded = encoder.transform(train)
    np.testing.assert_array_equal(encoded[:, 0], np.repeat(11 - np.arange(12), 4))  # highest target -> highest code
    np.testing.assert_array_equal(encoded[:, 1], TableEncoder().fit(train).transform(train)[:, 1])  # l < m < s
    np.testing.assert_array_equal(encoded[:, 2], train["x"])
    # An unknown city (and a missing one: training had none) has the overall mean, 55: half-way between the cities
    # with means 50 (code 5) and 60 (code 6). The few-category column keeps -1 for both.
    unseen = pd.DataFrame({"city": ["zzz", None], "size": pd.Categorical(["m", None]), "x": [0.0, 1.0]})
    np.testing.assert_array_equal(encoder.transform(unseen)[:, :2], [[5.5, 1], [5.5, -1]])
    # Missing cities seen in training rank like a category (here the lowest target).
    with_missing = train.assign(city=train["city"].where(train["city"] != "c11", None))
    codes = TableEncoder(categorical_order="target").fit(with_missing, target).transform(with_missing)[:, 0]
    np.testing.assert_array_equal(codes, np.repeat(11 - np.arange(12), 4))
    # Smoothing: a city seen once with a target of 130 (above every other city's 0..110) ranks below the cities seen
    # four times with means 90..110; unsmoothed it would rank last.
    rare = pd.concat([train, pd.DataFrame({"city": ["c99"], "size": pd.Categorical(["m"]), "x": [0.0]})])
    codes = TableEncoder(categorical_order="target").fit(rare, np.append(target, 130.0)).transform(rare)[:, 0]
    assert codes[-1] == 9 and codes.max() == 12
    # Nothing is reordered by default, and the target order needs a target.
    np.testing.assert_array_equal(TableEncoder().fit(train).transform(train)[:4, 0], 0)
    with pytest.raises(ValueError, match="needs the training target"):
        TableEncoder(categorical_order="target").fit(train)
    with pytest.raises(ValueError, match="47 values for 48 rows"):
        TableEncoder(categorical_order="target").fit(train, target[:-1])
    with pytest.raises(ValueError, match="sideways"):
        TableEncoder(categorical_order="sideways").fit(train)


def test_classifier_target_orders_categories_for_binary_labels_only(tiny_network):
    rng = np.random.default_rng(0)
    n_rows = 60
    city = rng.choice([f"c{c:02d}" for c in range(12)], size=n_rows)
    X = pd.DataFrame({"city": city, "x": rng.normal(size=n_rows)})
    binary = np.where(np.isin(city, ["c00", "c05", "c07"]), "yes", "no")
    auto = make_classifier(tiny_network).fit(X, binary)
    ranks = auto.encoder_.category_ranks_[0]
    # the three "yes" cities get the three highest codes
    assert set(ranks[[0, 5, 7]]) == {9.0, 10.0, 11.0}
    lexical = make_classifier(tiny_network, categorical_order="lexical").fit(X, binary)
    assert lexical.encoder_.category_ranks_ is None
    three_classes = np.where(city < "c04", "a", np.where(city < "c08", "b", "c"))
    assert make_classifier(tiny_network).fit(X, three_classes).encoder_.category_ranks_ is None
    forced = make_classifier(tiny_network, categorical_order="target")
    with pytest.raises(ValueError, match="binary"):
        forced.fit(X, three_classes)


# --------------------------------------------------------------------------------------------------- ensemble units
def test_latin_square_rows_are_latin():
    import random

    rows = np.array(latin_square_rows(7, random.Random(0)))
    assert rows.shape == (7, 7)
    for axis in (0, 1):
        assert (np.sort(rows, axis=axis) == np.arange(7).reshape((1, -1) if axis == 1 else (-1, 1))).all()


def test_build_ensemble_members():
    members = build_ensemble(5, 3, 8, ("none", "power"), random_state=0)
    assert len(members) == 8
    assert [m.norm_method for m in members] == ["none"] * 4 + ["power"] * 4
    again = build_ensemble(5, 3, 8, ("none", "power"), random_state=0)
    assert all((a.feature_order == b.feature_order).all() for a, b in zip(members, again))
    for member in members:
        assert sorted(member.feature_order) == list(range(5)) and sorted(member.class_pattern) == [0, 1, 2]
    # 1 feature x 2 class shifts x 2 methods: only 4 distinct members exist.
    assert len(build_ensemble(1, 2, 8, ("none", "power"), random_state=0)) == 4
    no_shift = build_ensemble(4, 3, 8, ("none",), class_shift=False, feat_shuffle="none", random_state=0)
    assert len(no_shift) == 1 and list(no_shift[0].class_pattern) == [0, 1, 2]


def test_ensemble_matches_official_tabicl_generator():
    official = pytest.importorskip("tabicl._sklearn.preprocessing")
    for n_features, seed in [(1, 0), (4, 42), (9, 7)]:
        for method in ("latin", "shift", "random"):
            expected = [list(order) for order in official.Shuffler(n_features, method, random_state=seed).shuffle(8)]
            assert [list(order) for order in feature_orders(n_features, method, 8, seed)] == expected
    X, y = np.random.default_rng(0).normal(size=(30, 6)), np.arange(30) % 4
    generator = official.EnsembleGenerator(True, 8, ["none", "power"], random_state=42).fit(X, y)
    expected = sorted(
        (method, tuple(order), tuple(pattern))
        for method, configs in generator.ensemble_configs_.items()
        for order, pattern in configs
    )
    members = build_ensemble(6, 4, 8, ("none", "power"), random_state=42)
    assert sorted((m.norm_method, tuple(m.feature_order), tuple(m.class_pattern)) for m in members) == expected


# ----------------------------------------------------------------------------------------------- hierarchical units
def test_class_tree_partition():
    tree = build_class_tree(range(11), 10)
    assert [len(child.classes) for child in tree.children] == [6, 5]
    tree = build_class_tree(range(30), 10)
    assert [list(child.classes) for child in tree.children] == [
        list(range(0, 10)),
        list(range(10, 20)),
        list(range(20, 30)),
    ]
    tree = build_class_tree(range(150), 10)
    assert len(tree.children) == 10 and all(len(child.children) == 2 for child in tree.children)
    leaves = tree.leaves()
    assert all(len(leaf.classes) <= 10 for leaf in leaves)
    np.testing.assert_array_equal(np.concatenate([leaf.classes for leaf in leaves]), np.arange(150))
    assert build_class_tree(range(4), 10).is_leaf


def test_hierarchical_proba_product_of_paths():
    n_classes, max_classes = 25, 4
    y_train = np.arange(n_classes)
    target = np.array([3, 17, 24])  # class of each test row

    def exact_node_logits(rows, labels, n_labels):
        # the node's label of each test row's class (if the class is in the node), else uniform
        lookup = dict(zip(y_train[rows], labels))
        logits = np.zeros((len(target), n_labels))
        for i, cls in enumerate(target):
            if cls in lookup:
                logits[i, lookup[cls]] = 50.0
        return logits

    proba = hierarchical_proba(exact_node_logits, y_train, n_classes, len(target), max_classes)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(proba.argmax(axis=1), target)
    assert (proba[np.arange(3), target] > 0.999).all()


# -------------------------------------------------------------------------------------------- parity with official
@pytest.mark.parametrize(("n_estimators", "random_state"), [(8, 42), (32, 1)])
def test_matches_official_tabicl_estimator(tmp_path, n_estimators, random_state):
    """Same network (official TabICL module) through both pipelines gives the same probabilities (<= 10 classes)."""
    tabicl = pytest.importorskip("tabicl")
    from tabicl._model.tabicl import TabICL

    torch.manual_seed(0)
    config = dict(
        max_classes=10,
        embed_dim=16,
        col_num_blocks=1,
        col_nhead=2,
        col_num_inds=4,
        row_num_blocks=2,
        row_nhead=2,
        row_num_cls=2,
        icl_num_blocks=1,
        icl_nhead=2,
        ff_factor=2,
    )
    network = TabICL(**config).eval()
    with torch.no_grad():  # fresh weights have zero-initialised layers that make every row's output identical
        for parameter in network.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    path = tmp_path / "tiny.ckpt"
    torch.save({"config": config, "state_dict": network.state_dict()}, path)

    rng = np.random.default_rng(0)
    n_rows = 48
    X = pd.DataFrame(
        {
            "x1": rng.normal(size=n_rows),
            "x2": rng.exponential(size=n_rows) * 10,
            "city": pd.Categorical(rng.choice(["paris", "lyon", "nice"], size=n_rows)),
            "x3": rng.integers(0, 4, size=n_rows).astype(float),
            "x4": rng.normal(size=n_rows),
        }
    )
    X.loc[5, "x1"] = np.nan
    X.loc[7, "x2"] = 500.0  # outlier
    y = (X["x1"].fillna(0) + (X["city"] == "lyon") > 0.2).astype(int) + (X["x4"] > 1).astype(int)
    official = tabicl.TabICLClassifier(
        model_path=path,
        device="cpu",
        use_amp=False,
        use_fa3=False,
        random_state=random_state,
        n_estimators=n_estimators,
    ).fit(X.iloc[:36], y.iloc[:36])
    ours = TFMClassifier(
        checkpoint=network, device="cpu", precision="fp32", random_state=random_state, n_estimators=n_estimators
    ).fit(X.iloc[:36], y.iloc[:36])
    proba = ours.predict_proba(X.iloc[36:])
    assert proba.std(axis=0).min() > 1e-3  # rows get different predictions: the comparison is not vacuous
    np.testing.assert_allclose(proba, official.predict_proba(X.iloc[36:]), atol=1e-5)
