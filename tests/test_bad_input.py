"""Bad input, table-driven: every case runs through TFMClassifier / TFMRegressor and (where AutoGluon's own
preprocessing matters) through ``TabularPredictor`` with the ``TABICL`` key.

Each case builds its data (training X / y and the rows to predict) and states the expected outcome per route:
:class:`Works` (plus a case-specific property of the output) or :class:`Raises` (exception type, message regex, and
the package the error must come from). Every run also checks that the caller's X / y / predict frame are not mutated
and that no error comes from inside torch. The networks are tiny and randomly initialised, so prediction quality is
never asserted, only behaviour.
"""

from __future__ import annotations

import copy
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from autogluon_tfm import TFMClassifier, TFMRegressor
from autogluon_tfm.checkpoints import make_tiny_network, save_network

LABEL = "target"
TORCH_DIR = os.path.dirname(torch.__file__)


# ------------------------------------------------------------------------------------------------ case machinery
@dataclass
class Data:
    """One case's inputs: training table, labels/targets, and the rows to predict (None: predict X itself)."""

    X: Any
    y: Any
    X_test: Any = None

    @property
    def rows_to_predict(self) -> Any:
        return self.X if self.X_test is None else self.X_test


@dataclass(frozen=True)
class Works:
    """Fit and predict succeed; the generic output checks pass and then ``check(result)`` (case-specific)."""

    check: Callable[[SimpleNamespace], None] | None = None


@dataclass(frozen=True)
class Raises:
    """Fit or predict raises ``error`` whose message matches ``match``, raised from code in package ``origin``."""

    match: str
    error: type[BaseException] = ValueError
    origin: str = "autogluon_tfm"


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[np.random.Generator], Data]
    estimator: Works | Raises | None  # None: not run through the estimator
    autogluon: Works | Raises | None = None  # None: not run through TabularPredictor
    task: str = "classification"
    estimator_params: dict = field(default_factory=dict)
    ag_fit_kwargs: dict = field(default_factory=dict)  # e.g. num_bag_folds=2
    ag_problem_type: str | None = None
    ag_predictor_kwargs: dict = field(default_factory=dict)  # TabularPredictor(...) arguments
    ag_xfail: str | None = None  # reason, for a known AutoGluon bug upstream of our model (strict xfail)


def _frame(rng: np.random.Generator, n_rows: int = 30, n_features: int = 3) -> pd.DataFrame:
    return pd.DataFrame(rng.normal(size=(n_rows, n_features)), columns=[f"f{i}" for i in range(n_features)])


def _labels(n_rows: int = 30, n_classes: int = 2) -> pd.Series:
    return pd.Series(np.arange(n_rows) % n_classes, name=LABEL)


def _assert_unchanged(original: Any, snapshot: Any) -> None:
    assert type(original) is type(snapshot)
    if isinstance(original, pd.DataFrame):
        pd.testing.assert_frame_equal(original, snapshot, check_exact=True)
    elif isinstance(original, pd.Series):
        pd.testing.assert_series_equal(original, snapshot, check_exact=True)
    elif isinstance(original, np.ndarray):
        assert original.dtype == snapshot.dtype
        np.testing.assert_array_equal(original, snapshot)
    elif original is not None:
        assert original == snapshot


def _assert_clean_error(excinfo: pytest.ExceptionInfo, origin: str) -> None:
    """No frame of the error (or of the errors it was raised from) is inside torch; the innermost frame is in
    package ``origin``, i.e. the error is a deliberate check, not a crash deep inside a library."""
    error: BaseException | None = excinfo.value
    frames = traceback.extract_tb(excinfo.tb)
    assert f"{os.sep}{origin}{os.sep}" in frames[-1].filename, f"raised from {frames[-1].filename}:{frames[-1].lineno}"
    while error is not None:
        torch_frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename.startswith(TORCH_DIR)]
        assert not torch_frames, f"error from inside torch: {torch_frames[-1]}"
        error = error.__cause__ or error.__context__


def _check_probabilities(proba: np.ndarray, n_rows: int, n_classes: int) -> None:
    assert proba.shape == (n_rows, n_classes)
    assert np.isfinite(proba).all() and (proba >= 0).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)


# ----------------------------------------------------------------------------------------- case-specific checks
def _fit_proba(networks: dict, X: Any, y: Any, X_test: Any, **params: Any) -> np.ndarray:
    return _make_estimator(networks, "classification", params).fit(X, y).predict_proba(X_test)


def _same_as_without(*columns: str) -> Callable[[SimpleNamespace], None]:
    """A useless column (all missing, constant) changes nothing: same probabilities as without it."""

    def check(result: SimpleNamespace) -> None:
        data = result.data
        if result.route == "estimator":
            X_without = data.X.drop(columns=list(columns))
            X_test_without = data.rows_to_predict.drop(columns=list(columns))
            expected = _fit_proba(result.networks, X_without, data.y, X_test_without)
            np.testing.assert_allclose(result.out, expected, atol=1e-6)

    return check


def _same_as_original_order(result: SimpleNamespace) -> None:
    """Predicting with the columns in another order (or with another numeric dtype) = predicting the fit frame."""
    if result.route == "estimator":
        expected = result.model.predict_proba(result.data.X)
    else:
        expected = result.model.predict_proba(result.data.X).to_numpy()
    np.testing.assert_allclose(result.out, expected, atol=1e-6)


def _rows_identical(result: SimpleNamespace) -> None:
    """Nothing informative in the features: every row gets the same probabilities."""
    np.testing.assert_allclose(result.out, np.broadcast_to(result.out[:1], result.out.shape), atol=1e-6)


def _predicts_labels(*labels: Any) -> Callable[[SimpleNamespace], None]:
    def check(result: SimpleNamespace) -> None:
        if result.route == "estimator":
            assert list(result.model.classes_) == list(labels)
            assert set(result.model.predict(result.data.rows_to_predict)) <= set(labels)
        else:
            assert list(result.model.class_labels) == list(labels)
            assert set(result.model.predict(result.data.rows_to_predict)) <= set(labels)

    return check


def _equals_constant(value: float) -> Callable[[SimpleNamespace], None]:
    def check(result: SimpleNamespace) -> None:
        np.testing.assert_array_equal(result.out, np.full(len(result.data.rows_to_predict), value))
        if result.route == "estimator":
            quantiles = result.model.predict_quantiles(result.data.rows_to_predict, (0.1, 0.9))
            np.testing.assert_array_equal(quantiles, value)

    return check


def _oof_covers_missing_class(result: SimpleNamespace) -> None:
    """Class 2 is missing from the training rows of the fold that predicts its rows out of fold: the OOF
    probabilities still cover all three classes, with 0 for the class that fold never saw."""
    oof = result.model.predict_proba_oof()
    _check_probabilities(oof.to_numpy(), len(result.data.X), 3)
    rare_rows = np.flatnonzero(np.asarray(result.data.y) == 2)
    assert (oof.iloc[rare_rows][2] == 0.0).all()
    assert any(2 not in set(fit_y) for _, fit_y in result.fits), "no fold fit missed the rare class"


def _one_fold_saw_all_nan_category(result: SimpleNamespace) -> None:
    """One fold trains on rows whose 'colour' is all missing (AutoGluon 1.6 drops such an in-fold useless column
    before our model sees it; an all-missing column that does reach the estimator is covered by the estimator
    route), while the other fold trains with 'colour' as a category and predicts out-of-fold rows where it is all
    missing. Out-of-fold probabilities must be complete and valid."""
    all_nan_or_dropped = ["colour" not in fit_X or bool(fit_X["colour"].isna().all()) for fit_X, _ in result.fits]
    assert True in all_nan_or_dropped, "construction failed: every fold fit saw non-missing 'colour' values"
    with_colour = [fit_X for fit_X, _ in result.fits if "colour" in fit_X]
    assert with_colour and all(isinstance(fit_X["colour"].dtype, pd.CategoricalDtype) for fit_X in with_colour)
    oof = result.model.predict_proba_oof()
    _check_probabilities(oof.to_numpy(), len(result.data.X), 2)


def _covers_all_classes(n_classes: int) -> Callable[[SimpleNamespace], None]:
    def check(result: SimpleNamespace) -> None:
        assert result.out.shape[1] == n_classes

    return check


# ------------------------------------------------------------------------------------------------------ builders
def _with_nan(rng):
    X = _frame(rng)
    X.iloc[::4, 0] = np.nan
    X.iloc[1::5, 2] = np.nan
    X_test = _frame(rng, 6)
    X_test.iloc[:, 1] = np.nan  # a test column entirely missing
    return Data(X, _labels(), X_test)


def _with_inf(rng):
    X = _frame(rng)
    X.iloc[0, 0], X.iloc[1, 0], X.iloc[2, 1] = np.inf, -np.inf, np.inf
    X_test = _frame(rng, 4)
    X_test.iloc[0, :] = [np.inf, -np.inf, np.nan]
    return Data(X, _labels(), X_test)


def _all_nan_categorical(rng):
    X = _frame(rng).assign(empty=pd.Categorical([None] * 30, categories=["a", "b"]))
    return Data(X, _labels())


def _all_nan_categorical_in_one_bag_fold(rng):
    """A category column that is missing on the training rows of one of AutoGluon's two bag folds.

    Non-missing only on the out-of-fold rows of fold 0 (= the training rows of fold 1), so fold 0 trains on an
    entirely missing categorical column. Uses AutoGluon's own splitter with the seed AutoGluon 1.6 gives a level-1
    bag (1); the AutoGluon check asserts through a spy on the estimator's fit that one fold really saw it all-NaN.
    """
    from autogluon.common.utils.cv_splitter import CVSplitter

    X, y = _frame(rng, 40), _labels(40)
    (_, out_of_fold_0), _ = CVSplitter(n_splits=2, n_repeats=1, stratify=True, random_state=1).split(X, y)
    colour = np.full(len(X), None, dtype=object)
    colour[out_of_fold_0] = np.where(np.arange(len(out_of_fold_0)) % 2 == 0, "red", "blue")
    X["colour"] = pd.Categorical(colour)
    return Data(X, y)


def _constant_column(rng):
    X = _frame(rng).assign(const=7.0, const_text="same")
    return Data(X, _labels(), X.iloc[:5].assign(const=-3.0, const_text="other"))


def _only_constant_columns(rng):
    X = pd.DataFrame({"a": [1.0] * 30, "b": ["x"] * 30, "c": [np.nan] * 30})
    return Data(X, _labels(), X.iloc[:4])


def _duplicate_columns(rng):
    X = _frame(rng)
    X.columns = ["a", "a", "b"]
    return Data(X, _labels())


def _one_row_per_class(rng):
    return Data(_frame(rng, 3), pd.Series(["cat", "dog", "eel"], name=LABEL), _frame(rng, 5))


def _two_rows(rng):
    return Data(_frame(rng, 2), pd.Series([0, 1], name=LABEL), _frame(rng, 3))


def _one_feature(rng):
    return Data(_frame(rng, 30, 1), _labels())


def _many_features(rng):
    return Data(_frame(rng, 12, 2000), _labels(12), _frame(rng, 2, 2000))


def _labels_as(converter):
    def build(rng):
        return Data(_frame(rng, 40), converter(_labels(40)))

    return build


def _labels_with_missing(kind):
    def build(rng):
        y = _labels().astype(float) if kind == "nan" else _labels().map({0: "no", 1: "yes"})
        y.iloc[3] = np.nan if kind == "nan" else None
        return Data(_frame(rng), y)

    return build


def _many_classes(n_classes, n_rows):
    def build(rng):
        return Data(_frame(rng, n_rows, 2), _labels(n_rows, n_classes), _frame(rng, 3, 2))

    return build


def _class_only_in_one_fold(rng):
    """Class 2 has two rows, both in group 1: with AutoGluon's group folds, the fold that holds out group 1 trains
    without class 2 but must still predict it out of fold."""
    X, y = _frame(rng, 40), _labels(40)
    y.iloc[[7, 9]] = 2
    X["group"] = np.where(np.arange(40) < 20, 1, 0)
    return Data(X, y)


def _unseen_category(rng):
    X = _frame(rng).assign(colour=rng.choice(["red", "blue"], 30))
    return Data(X, _labels(), X.iloc[:4].assign(colour=["green", "red", None, "violet"]))


def _column_missing_at_predict(rng):
    X = _frame(rng)
    return Data(X, _labels(), X.drop(columns="f1"))


def _column_extra_at_predict(rng):
    X = _frame(rng)
    return Data(X, _labels(), X.assign(surprise=1.0))


def _columns_reordered(rng):
    X = _frame(rng).assign(colour=rng.choice(["red", "blue"], 30))
    return Data(X, _labels(), X[X.columns[::-1]])


def _dtype_changed_at_predict(rng):
    X = _frame(rng).assign(count=rng.integers(0, 5, 30), colour=pd.Categorical(rng.choice(["red", "blue"], 30)))
    return Data(X, _labels(), X.astype({"count": "float64", "colour": "object"}))


def _empty_predict_frame(rng):
    X = _frame(rng)
    return Data(X, _labels(), X.iloc[:0])


def _scaled(factor):
    def build(rng):
        X = _frame(rng)
        return Data(X * factor, _labels(), X.iloc[:5] * factor)

    return build


def _huge_and_tiny(rng):
    X = _frame(rng, 30, 4)
    X[["f0", "f1"]] *= 1e30
    X["f2"] *= 1e-30
    X["f3"] = X["f3"] * 1e300
    return Data(X, _labels())


def _datetime_and_text(rng):
    X = _frame(rng, 40).assign(
        when=pd.date_range("2021-01-01", periods=40, freq="37h"),
        note=[f"customer {i} said {'great service' if i % 3 else 'slow delivery, will not return'}" for i in range(40)],
    )
    X.loc[5, "when"] = pd.NaT
    return Data(X, _labels(40))


def _nullable_dtypes(with_binary_int: bool):
    def build(rng):
        values = [1, 2, None, 3] if not with_binary_int else [1, None, 1, 1]
        X = _frame(rng, 40).assign(
            count=pd.array(values * 10, dtype="Int64"),
            flag=pd.array([True, None, False, True] * 10, dtype="boolean"),
            word=pd.array(["a", None, "b", "c"] * 10, dtype="string"),
            ratio=pd.array([0.5, None, 1.5, 2.5] * 10, dtype="Float64"),
        )
        return Data(X, _labels(40))

    return build


def _numpy_without_names(rng):
    X = rng.normal(size=(30, 3))
    X[0, 0] = np.nan
    return Data(X, np.arange(30) % 2, rng.normal(size=(4, 3)))


def _numpy_object_array(rng):
    X = np.empty((30, 2), dtype=object)
    X[:, 0] = rng.normal(size=30)
    X[:, 1] = rng.choice(["u", "v"], 30)
    return Data(X, np.arange(30) % 2)


def _sparse_like(rng):
    X = pd.DataFrame(np.where(rng.random((40, 20)) < 0.99, 0.0, rng.normal(size=(40, 20))))
    X.columns = [f"s{i}" for i in range(20)]
    return Data(X, _labels(40))


def _imbalanced(rng):
    y = pd.Series(np.zeros(1001, dtype=int), name=LABEL)
    y.iloc[500] = 1
    return Data(_frame(rng, 1001, 2), y, _frame(rng, 5, 2))


def _integer_coded_categoricals(rng):
    X = _frame(rng, 40).assign(
        zip_code=pd.Categorical(rng.choice([10115, 20095, 80331], 40)),
        level=pd.Series(rng.choice([1, 2, 3], 40)).astype("category"),
    )
    return Data(X, _labels(40), X.iloc[:4].assign(zip_code=pd.Categorical([10115, 99999, None, 80331])))


def _mixed_types(rng):
    X = _frame(rng, 40).assign(
        city=rng.choice(["Oslo", "Lima", "Pune"], 40).astype(object),
        member=rng.random(40) < 0.5,
        size=pd.Categorical(rng.choice(["S", "M", "L"], 40), categories=["S", "M", "L"], ordered=True),
        mixed=[1, "two", 3.0, None] * 10,
    )
    return Data(X, _labels(40))


def _regression(target_change):
    def build(rng):
        X = _frame(rng)
        y = pd.Series(rng.normal(size=30), name=LABEL)
        return Data(X, target_change(y), X.iloc[:5])

    return build


def _regression_nan_inf_features(rng):
    data = _with_inf(rng)
    X = data.X.mask(np.isfinite(data.X) & (data.X > 1.5))  # NaN on top of the +-inf
    return Data(X, pd.Series(rng.normal(size=len(X)), name=LABEL), data.X_test)


def _set_at(position, value):
    def change(y):
        y = y.copy()
        y.iloc[position] = value
        return y

    return change


# ----------------------------------------------------------------------------------------------------- the table
BAG2 = {"num_bag_folds": 2, "num_bag_sets": 1}
CASES: list[Case] = [
    Case("nan_in_features", _with_nan, Works(), Works()),
    Case("inf_in_features", _with_inf, Works(), Works()),
    Case("all_nan_numeric_column", lambda rng: Data(_frame(rng).assign(empty=np.nan), _labels()),
         Works(_same_as_without("empty")), Works()),
    Case("all_nan_categorical_column", _all_nan_categorical, Works(_same_as_without("empty")), Works()),
    Case("all_nan_categorical_in_one_bag_fold", _all_nan_categorical_in_one_bag_fold, Works(),
         Works(_one_fold_saw_all_nan_category), ag_fit_kwargs=BAG2),
    Case("constant_columns", _constant_column, Works(_same_as_without("const", "const_text")), Works()),
    Case("only_constant_columns", _only_constant_columns, Works(_rows_identical),
         # AutoGluon drops every useless feature, then skips models with no features (its documented behaviour).
         Raises("No models were trained", RuntimeError, origin="autogluon")),
    Case("duplicate_column_names", _duplicate_columns, Raises(r"duplicated column names: \['a'\].*rename"),
         Raises("Column names are not unique", origin="autogluon")),
    Case("one_row_per_class", _one_row_per_class, Works(_predicts_labels("cat", "dog", "eel"))),
    Case("two_row_training_set", _two_rows, Works()),
    Case("one_feature", _one_feature, Works(), Works()),
    Case("2000_features", _many_features, Works(), estimator_params={"norm_methods": ("none",), "n_estimators": 1}),
    Case("string_labels", _labels_as(lambda y: y.map({0: "no", 1: "yes"})), Works(_predicts_labels("no", "yes")),
         Works(_predicts_labels("no", "yes"))),
    Case("bool_labels", _labels_as(lambda y: y.astype(bool)), Works(_predicts_labels(False, True)),
         Works(_predicts_labels(False, True))),
    Case("int_labels_non_contiguous", _labels_as(lambda y: y.map({0: 3, 1: 100})), Works(_predicts_labels(3, 100)),
         Works(_predicts_labels(3, 100))),
    Case("float_labels_integral", _labels_as(lambda y: y.astype(float)), Works(_predicts_labels(0.0, 1.0))),
    Case("float_labels_non_integral", _labels_as(lambda y: y + 0.5),
         Raises(r"continuous \(non-integer\) values.*TFMRegressor"),
         Works(_predicts_labels(0.5, 1.5)), ag_problem_type="binary"),
    Case("nullable_labels", _labels_as(lambda y: y.astype("Int64")), Works(_predicts_labels(0, 1))),
    Case("mixed_type_labels", _labels_as(lambda y: pd.Series([1 if v == 0 else "b" for v in y], dtype=object)),
         Raises(r"mixed or unsupported types.*astype\(str\)")),
    Case("labels_with_nan", _labels_with_missing("nan"), Raises(r"1 missing or infinite labels.*rows \[3\]"),
         Raises("label column cannot contain non-finite values", origin="autogluon")),
    Case("labels_with_none", _labels_with_missing("none"), Raises(r"1 missing or infinite labels.*rows \[3\]")),
    Case("12_classes", _many_classes(12, 48), Works(_covers_all_classes(12)), Works(_covers_all_classes(12)),
         ag_problem_type="multiclass"),
    Case("10000_classes", _many_classes(10_000, 10_000), Works(_covers_all_classes(10_000)),
         estimator_params={"n_estimators": 1, "norm_methods": ("none",)}),
    Case("class_only_in_one_bag_fold", _class_only_in_one_fold, Works(_covers_all_classes(3)),
         Works(_oof_covers_missing_class), ag_fit_kwargs=BAG2, ag_problem_type="multiclass",
         # AutoGluon drops classes with < 10 rows by default; keep class 2 and split the folds by group.
         ag_predictor_kwargs={"groups": "group", "learner_kwargs": {"label_count_threshold": 1}}),
    Case("category_unseen_at_training", _unseen_category, Works(), Works()),
    Case("column_missing_at_predict", _column_missing_at_predict, Raises(r"missing columns \['f1'\]"),
         Raises(r"missing columns: \['f1'\]", KeyError, origin="autogluon")),
    # The estimator is strict about the fitted columns; AutoGluon selects the columns it knows and ignores extras.
    Case("column_extra_at_predict", _column_extra_at_predict, Raises(r"unexpected columns \['surprise'\]"),
         Works(_same_as_original_order)),
    Case("columns_in_other_order_at_predict", _columns_reordered, Works(_same_as_original_order),
         Works(_same_as_original_order)),
    Case("dtype_changed_at_predict", _dtype_changed_at_predict, Works(_same_as_original_order),
         Works(_same_as_original_order)),
    Case("empty_predict_frame", _empty_predict_frame, Works(), Works()),
    Case("values_1e300", _scaled(1e300), Works(), Works()),
    Case("values_1e-300", _scaled(1e-300), Works(), Works()),
    Case("values_1e30_and_1e-30_mixed", _huge_and_tiny, Works(), Works()),
    Case("datetime_and_free_text", _datetime_and_text, Works(), Works()),
    Case("nullable_feature_dtypes", _nullable_dtypes(False), Works(), Works()),
    Case("nullable_int_with_one_value_and_na", _nullable_dtypes(True), Works(), Works(),
         ag_xfail="AutoGluon 1.6's AsTypeFeatureGenerator turns an Int64 column of one value and <NA> into bool "
                  "and fails ('cannot convert NA to integer') before any model is fit"),
    Case("numpy_array_without_column_names", _numpy_without_names, Works()),
    Case("numpy_object_array", _numpy_object_array, Works()),
    Case("sparse_like_99pct_zeros", _sparse_like, Works(), Works()),
    Case("imbalanced_1_to_1000", _imbalanced, Works(_covers_all_classes(2))),
    Case("integer_coded_categoricals", _integer_coded_categoricals, Works(), Works()),
    Case("string_bool_category_mixed", _mixed_types, Works(), Works()),
    Case("x_is_a_series", lambda rng: Data(_frame(rng)["f0"], _labels()), Raises(r"Series \(1-D\).*to_frame")),
    Case("x_and_y_lengths_differ", lambda rng: Data(_frame(rng), _labels(29)), Raises("different lengths")),
    Case("single_class", lambda rng: Data(_frame(rng), pd.Series(["a"] * 30)), Raises("single class")),
    # Regression
    Case("regression_constant_target", _regression(lambda y: y * 0 + 3.25), Works(_equals_constant(3.25)),
         Works(_equals_constant(3.25)), task="regression", ag_problem_type="regression"),
    Case("regression_inf_target", _regression(_set_at(4, np.inf)),
         Raises(r"1 missing or infinite targets.*rows \[4\].*drop or impute"),
         Raises("label column cannot contain non-finite values", origin="autogluon"), task="regression",
         ag_problem_type="regression"),
    Case("regression_nan_target", _regression(_set_at(2, np.nan)), Raises(r"missing or infinite targets.*rows \[2\]"),
         task="regression"),
    Case("regression_string_target", _regression(lambda y: y.round(1).astype(str)), Raises("look like class labels"),
         task="regression"),
    Case("regression_target_1e300", _regression(lambda y: y * 1e300), Raises("too large to scale.*rescale y"),
         task="regression"),
    Case("regression_features_1e300", lambda rng: Data(_frame(rng) * 1e300, pd.Series(rng.normal(size=30))), Works(),
         Works(), task="regression", ag_problem_type="regression"),
    Case("regression_nan_inf_features", _regression_nan_inf_features, Works(), Works(), task="regression",
         ag_problem_type="regression"),
    Case("regression_two_rows", lambda rng: Data(_frame(rng, 2), pd.Series([1.0, 2.0]), _frame(rng, 3)), Works(),
         task="regression"),
]


# -------------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def networks() -> dict:
    return {task: make_tiny_network("tabicl", task, seed=0) for task in ("classification", "regression")}


@pytest.fixture(scope="module")
def checkpoint_paths(tmp_path_factory, networks) -> dict:
    folder = tmp_path_factory.mktemp("bad-input-ckpt")
    paths = {}
    for task, network in networks.items():
        paths[task] = str(folder / f"tiny-tabicl-{task}.safetensors")
        save_network(network, paths[task])
    return paths


def _make_estimator(networks: dict, task: str, params: dict):
    estimator_cls = TFMClassifier if task == "classification" else TFMRegressor
    kwargs = {"checkpoint": networks[task], "n_estimators": 2, "device": "cpu", "random_state": 0, **params}
    return estimator_cls(**kwargs)


def _cases(route: str) -> list:
    params = []
    for case in CASES:
        outcome = getattr(case, route)
        if outcome is None:
            continue
        marks = [pytest.mark.xfail(strict=True, reason=case.ag_xfail)] if route == "autogluon" and case.ag_xfail else []
        params.append(pytest.param(case, id=case.name, marks=marks))
    return params


# ---------------------------------------------------------------------------------------------- route: estimator
@pytest.mark.parametrize("case", _cases("estimator"))
def test_estimator(case: Case, networks: dict) -> None:
    data = case.build(np.random.default_rng(0))
    snapshot = copy.deepcopy(data)
    estimator = _make_estimator(networks, case.task, case.estimator_params)

    def fit_predict() -> np.ndarray:
        estimator.fit(data.X, data.y)
        if case.task == "classification":
            return estimator.predict_proba(data.rows_to_predict)
        return estimator.predict(data.rows_to_predict)

    outcome = case.estimator
    if isinstance(outcome, Raises):
        with pytest.raises(outcome.error, match=outcome.match) as excinfo:
            fit_predict()
        _assert_clean_error(excinfo, outcome.origin)
    else:
        out = fit_predict()
        n_rows = len(data.rows_to_predict)
        if case.task == "classification":
            _check_probabilities(out, n_rows, len(estimator.classes_))
            assert set(estimator.predict(data.rows_to_predict)) <= set(estimator.classes_)
        else:
            assert out.shape == (n_rows,) and np.isfinite(out).all()
        if outcome.check is not None:
            outcome.check(SimpleNamespace(route="estimator", model=estimator, data=data, out=out, networks=networks))
    for name in ("X", "y", "X_test"):
        _assert_unchanged(getattr(data, name), getattr(snapshot, name))


# ---------------------------------------------------------------------------------------------- route: AutoGluon
@pytest.fixture
def fit_spy(monkeypatch) -> list:
    """Records (X, y) of every estimator fit inside AutoGluon: what its preprocessing hands our model."""
    fits = []
    for estimator_cls in (TFMClassifier, TFMRegressor):
        original_fit = estimator_cls.fit

        def recording_fit(self, X, y, *args, _original=original_fit, **kwargs):
            fits.append((X.copy(), np.asarray(y).copy()))
            return _original(self, X, y, *args, **kwargs)

        monkeypatch.setattr(estimator_cls, "fit", recording_fit)
    return fits


@pytest.mark.parametrize("case", _cases("autogluon"))
def test_autogluon(case: Case, checkpoint_paths: dict, fit_spy: list, tmp_path) -> None:
    from autogluon.tabular import TabularPredictor

    import autogluon_tfm  # noqa: F401 - registers the TABICL key

    data = case.build(np.random.default_rng(0))
    train = data.X.copy()
    train[LABEL] = np.asarray(data.y)
    train_snapshot, data_snapshot = train.copy(deep=True), copy.deepcopy(data)
    hyperparameters = {"TABICL": {"checkpoint": dict(checkpoint_paths), "n_estimators": 2}}
    outcome = case.autogluon

    def fit_predict():
        predictor = TabularPredictor(
            label=LABEL,
            path=str(tmp_path / "predictor"),
            problem_type=case.ag_problem_type,
            verbosity=0,
            **case.ag_predictor_kwargs,
        ).fit(
            train,
            hyperparameters=hyperparameters,
            fit_weighted_ensemble=False,
            num_cpus=1,
            num_gpus=0,
            **case.ag_fit_kwargs,
        )
        if predictor.problem_type in ("binary", "multiclass"):
            return predictor, predictor.predict_proba(data.rows_to_predict)
        return predictor, predictor.predict(data.rows_to_predict)

    if isinstance(outcome, Raises):
        with pytest.raises(outcome.error, match=outcome.match) as excinfo:
            fit_predict()
        _assert_clean_error(excinfo, outcome.origin)
    else:
        predictor, out = fit_predict()
        expected_model = "TabICL_BAG_L1" if case.ag_fit_kwargs.get("num_bag_folds") else "TabICL"
        assert predictor.model_names() == [expected_model], "the TFM was dropped from the fit"
        assert fit_spy, "the TFM estimator was never fitted"
        n_rows = len(data.rows_to_predict)
        if predictor.problem_type in ("binary", "multiclass"):
            assert list(out.columns) == list(predictor.class_labels)
            out = out.to_numpy()
            _check_probabilities(out, n_rows, len(predictor.class_labels))
        else:
            out = out.to_numpy()
            assert out.shape == (n_rows,) and np.isfinite(out).all()
        if outcome.check is not None:
            outcome.check(SimpleNamespace(route="autogluon", model=predictor, data=data, out=out, fits=fit_spy))
    pd.testing.assert_frame_equal(train, train_snapshot, check_exact=True)
    for name in ("X", "y", "X_test"):
        _assert_unchanged(getattr(data, name), getattr(data_snapshot, name))


# ------------------------------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_same_seed_same_predictions_and_single_row_equals_batch(task: str, networks: dict) -> None:
    rng = np.random.default_rng(1)
    X = _frame(rng, 40).assign(colour=rng.choice(["red", "blue", None], 40))
    y = _labels(40, 3) if task == "classification" else pd.Series(rng.normal(size=40))
    X_test = _frame(rng, 6).assign(colour=["red", "green", None, "blue", "red", "blue"])

    def predict(estimator, rows):
        return estimator.predict_proba(rows) if task == "classification" else estimator.predict(rows)

    first = _make_estimator(networks, task, {"random_state": 7}).fit(X, y)
    second = _make_estimator(networks, task, {"random_state": 7}).fit(X, y)
    batch = predict(first, X_test)
    np.testing.assert_array_equal(batch, predict(second, X_test))
    single = np.concatenate([predict(first, X_test.iloc[[i]]) for i in range(len(X_test))])
    np.testing.assert_allclose(single, batch, atol=1e-5, rtol=0)


def test_the_table_has_enough_cases() -> None:
    assert len(CASES) >= 30
    assert len({case.name for case in CASES}) == len(CASES)
