"""Speed levers of inference: TabICL's encode/ICL split and train-side cache, shared row embeddings for hierarchical
many-class prediction (checked against the official tabicl), memory-aware batching and reduced precision."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from autogluon_tfm.checkpoints import make_tiny_network
from autogluon_tfm.inference import TFMClassifier, TFMRegressor
from autogluon_tfm.nn.tabicl import TabICL, mixed_radix_bases

torch.set_num_threads(1)

SMALL = dict(
    embed_dim=32, col_num_blocks=2, col_num_inds=8, row_num_blocks=2, row_num_cls=2, icl_num_blocks=2, col_nhead=4,
    row_nhead=4, icl_nhead=4,
)
CONFIGS = {
    "v2-clf": SMALL,
    "v1": dict(
        SMALL, col_affine=True, col_feature_group=False, col_target_aware=False, col_ssmax="none", icl_ssmax="none",
        row_rope_interleaved=True,
    ),
    "v2-reg": dict(SMALL, max_classes=0, bias_free_ln=True),
    "post-norm": dict(SMALL, norm_first=False),
}


def _random_tabicl(config: dict, seed: int = 0) -> TabICL:
    torch.manual_seed(seed)
    net = TabICL(**config).eval()
    with torch.no_grad():  # the official init zeroes residual branches: every row would get the same output
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net


class Uncached(torch.nn.Module):
    """The same network behind the plain protocol only: the estimator takes its generic (uncached) path."""

    arch = "tabicl"

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self.max_classes = net.max_classes
        self.num_quantiles = net.num_quantiles
        self.n_out = net.n_out
        self.config = net.config

    def forward(self, X: torch.Tensor, y_train: torch.Tensor) -> torch.Tensor:
        return self.net(X, y_train)


# ------------------------------------------------------------------------------------------------- network API
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_train_cache_gives_the_forward_outputs(name):
    net = _random_tabicl(CONFIGS[name])
    gen = torch.Generator().manual_seed(1)
    n, m = 40, 13
    X = torch.randn(3, n + m, 7, generator=gen)
    y = torch.randint(0, 5, (3, n), generator=gen).float() if net.max_classes else torch.randn(3, n, generator=gen)
    with torch.no_grad():
        expected = net(X, y)
        cache = net.build_train_cache(X[:, :n], y, col_chunk=5, row_chunk=9)
        got = torch.cat([net.forward_with_cache(X[:, n + i : n + i + 5], cache, col_chunk=4) for i in (0, 5, 10)], 1)
    assert expected.std(dim=1).min() > 1e-3  # rows differ: the comparison is not vacuous
    scale = float(expected.abs().max().clamp(min=1))  # regression quantiles of random weights are large
    torch.testing.assert_close(got, expected, atol=1e-5 * scale, rtol=1e-4)
    assert cache.nbytes > 0 and len(cache.icl_states) == len(net.icl_predictor.tf_icl.blocks)


def test_training_rows_do_not_depend_on_test_rows():
    """The premise of the cache, v2 target-aware column embedding included: change the test rows, R_train stays."""
    net = _random_tabicl(CONFIGS["v2-clf"])
    gen = torch.Generator().manual_seed(2)
    X = torch.randn(2, 50, 6, generator=gen)
    y = torch.randint(0, 4, (2, 30), generator=gen).float()
    other = X.clone()
    other[:, 30:] = 5 * torch.randn(2, 20, 6, generator=gen)
    with torch.no_grad():
        R, R_other = net.encode_rows(X, y), net.encode_rows(other, y)
    torch.testing.assert_close(R[:, :30], R_other[:, :30], atol=1e-6, rtol=0)
    assert (R[:, 30:] - R_other[:, 30:]).abs().max() > 1e-2


def test_mixed_radix_bases_match_official():
    embedding = pytest.importorskip("tabicl._model.embedding")
    official = embedding.ColEmbedding.__new__(embedding.ColEmbedding)
    for max_classes in (2, 3, 10):
        official.max_classes = max_classes
        for n_classes in [*range(2, 130), 999, 1000, 1001, 12345]:
            assert mixed_radix_bases(n_classes, max_classes) == official._compute_mixed_radix_bases(n_classes)


# ---------------------------------------------------------------------------------------------- estimator cache
def _table(n_rows: int, n_features: int = 5, n_classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, n_features))
    y = np.digitize(X[:, 0] + 0.5 * X[:, 1], np.linspace(-1.5, 1.5, n_classes - 1))
    return X, y


def test_cached_predict_equals_uncached_and_is_reused():
    net = _random_tabicl(CONFIGS["v2-clf"])
    X, y = _table(120)
    params = dict(device="cpu", precision="fp32", n_estimators=4, batch_size=3)
    cached = TFMClassifier(checkpoint=net, **params).fit(X[:80], y[:80])
    plain = TFMClassifier(checkpoint=Uncached(net), **params).fit(X[:80], y[:80])
    first = cached.predict_proba(X[80:100])
    assert len(cached.train_cache_) == 2  # one cache per member batch (3 + 1 members)
    calls = []
    original = net.build_train_cache
    net.build_train_cache = lambda *a, **k: calls.append(1) or original(*a, **k)
    second = cached.predict_proba(X[100:])
    del net.build_train_cache  # back to the class's method
    assert not calls  # the repeated predict ran the test rows only
    np.testing.assert_allclose(first, plain.predict_proba(X[80:100]), atol=1e-5)
    np.testing.assert_allclose(second, plain.predict_proba(X[100:]), atol=1e-5)
    assert first.std(axis=0).max() > 1e-3

    restored = pickle.loads(pickle.dumps(cached))  # the cache does not travel with the pickle
    assert "train_cache_" not in restored.__dict__ and len(cached.train_cache_) == 2
    np.testing.assert_allclose(restored.predict_proba(X[100:]), second, atol=1e-6)
    cached.fit(X[:60], y[:60])  # a new fit forgets the old training rows
    assert cached.train_cache_ == {}


def test_cache_budget_and_memory_plan_do_not_change_results():
    net = _random_tabicl(CONFIGS["v2-clf"])
    X, y = _table(150)
    reference = TFMClassifier(checkpoint=net, device="cpu", precision="fp32", n_estimators=4).fit(X[:100], y[:100])
    expected = reference.predict_proba(X[100:])
    tight = TFMClassifier(checkpoint=net, device="cpu", precision="fp32", n_estimators=4).fit(X[:100], y[:100])
    tight.train_cache_max_bytes = 0  # nothing is kept
    tight.memory_budget_bytes = 200_000  # one member per call, small column/row/test chunks
    assert tight._member_batch_size(net, 100, 5) == 1
    assert tight._test_chunk_rows(net, 1, 5) == 256
    np.testing.assert_allclose(tight.predict_proba(X[100:]), expected, atol=1e-5)
    assert tight.train_cache_ == {}


def test_regressor_cached_predict_equals_uncached():
    net = make_tiny_network("tabicl", "regression", seed=0)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(90, 4))
    y = X[:, 0] - 2 * X[:, 1] + 0.1 * rng.normal(size=90)
    params = dict(device="cpu", precision="fp32", n_estimators=3)
    cached = TFMRegressor(checkpoint=net, **params).fit(X[:60], y[:60])
    plain = TFMRegressor(checkpoint=Uncached(net), **params).fit(X[:60], y[:60])
    expected = plain.predict(X[60:])
    np.testing.assert_allclose(cached.predict(X[60:]), expected, atol=1e-5)
    np.testing.assert_allclose(cached.predict(X[60:]), expected, atol=1e-5)  # from the kept cache
    assert len(cached.train_cache_) == 2  # one per normalisation method


# ------------------------------------------------------------------------------------------------ many classes
def _official_tiny(tmp_path):
    from tabicl._model.tabicl import TabICL as OfficialTabICL

    config = dict(
        max_classes=10, embed_dim=16, col_num_blocks=1, col_nhead=2, col_num_inds=4, row_num_blocks=2, row_nhead=2,
        row_num_cls=2, icl_num_blocks=1, icl_nhead=2, ff_factor=2,
    )
    torch.manual_seed(0)
    network = OfficialTabICL(**config).eval()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    path = tmp_path / "tiny.ckpt"
    torch.save({"config": config, "state_dict": network.state_dict()}, path)
    return path


@pytest.mark.parametrize("n_classes", [13, 25])
def test_hierarchical_matches_official_tabicl(tmp_path, n_classes):
    """More classes than max_classes: one mixed-radix encode per member, ICL per tree node, as the official."""
    tabicl = pytest.importorskip("tabicl")
    path = _official_tiny(tmp_path)
    X, _ = _table(4 * n_classes + 20, n_features=4, seed=n_classes)
    y = np.arange(len(X)) % n_classes
    X[:, 0] += y / n_classes  # the classes are learnable
    n_train = 4 * n_classes
    official = tabicl.TabICLClassifier(
        model_path=path, device="cpu", use_amp=False, use_fa3=False, random_state=42, n_estimators=4
    ).fit(X[:n_train], y[:n_train])
    ours = TFMClassifier(checkpoint=str(path), device="cpu", precision="fp32", random_state=42, n_estimators=4)
    ours.many_class_encoding = "mixed_radix"
    ours.fit(X[:n_train], y[:n_train])
    assert ours.class_tree_ is not None
    proba = ours.predict_proba(X[n_train:])
    assert proba.std(axis=0).max() > 1e-3
    np.testing.assert_allclose(proba, official.predict_proba(X[n_train:]), atol=1e-5)


def test_hierarchical_encodes_rows_once_per_member_and_keeps_node_states():
    net = _random_tabicl(CONFIGS["v2-clf"])
    X, _ = _table(90, seed=4)
    y = np.arange(90) % 15
    clf = TFMClassifier(checkpoint=net, device="cpu", precision="fp32", n_estimators=2).fit(X[:60], y[:60])
    clf.many_class_encoding = "mixed_radix"
    counts = {"encode": 0, "icl_states": 0}
    build, states = net.build_train_cache, net.icl_train_states
    net.build_train_cache = lambda *a, **k: counts.__setitem__("encode", counts["encode"] + 1) or build(*a, **k)
    net.icl_train_states = lambda *a, **k: counts.__setitem__("icl_states", counts["icl_states"] + 1) or states(*a, **k)
    first = clf.predict_proba(X[60:75])
    n_nodes = clf.class_tree_.count_nodes() - sum(len(leaf.classes) == 1 for leaf in clf.class_tree_.leaves())
    # Every node of every member shares its member's encoding.
    assert counts == {"encode": 2, "icl_states": 2 * n_nodes}
    second = clf.predict_proba(X[75:])
    assert counts == {"encode": 2, "icl_states": 2 * n_nodes}  # encodings and node states are kept: test rows only
    del net.build_train_cache, net.icl_train_states
    fresh = TFMClassifier(checkpoint=net, device="cpu", precision="fp32", n_estimators=2).fit(X[:60], y[:60])
    fresh.many_class_encoding = "mixed_radix"
    np.testing.assert_allclose(second, fresh.predict_proba(X[75:]), atol=1e-6)
    np.testing.assert_allclose(first, fresh.predict_proba(X[60:75]), atol=1e-6)
    assert second.std(axis=0).max() > 1e-3
    np.testing.assert_allclose(second.sum(axis=1), 1.0, atol=1e-12)


# --------------------------------------------------------------------------------------------------- precision
def test_bf16_agrees_with_fp32_on_shipped_weights():
    X, y = _table(400, n_features=6, seed=5)
    proba = {
        precision: TFMClassifier(device="cpu", precision=precision, n_estimators=2, random_state=0)
        .fit(X[:300], y[:300])
        .predict_proba(X[300:])
        for precision in ("fp32", "bf16")
    }
    agreement = (proba["fp32"].argmax(1) == proba["bf16"].argmax(1)).mean()
    assert agreement >= 0.97 and np.abs(proba["fp32"] - proba["bf16"]).mean() <= 0.01


def test_explicit_bf16_warns_only_on_a_cpu_that_emulates_it(monkeypatch, caplog):
    import autogluon_tfm.inference.base as base

    cpu = torch.device("cpu")
    for fast in (False, True):
        base._warn_slow_low_precision.cache_clear()
        monkeypatch.setattr(base, "cpu_has_fast_bf16", lambda fast=fast: fast)
        caplog.clear()
        with caplog.at_level("WARNING", logger=base.logger.name):
            assert base.resolve_precision("bf16", cpu) == "bf16"
            assert base.resolve_precision("fp32", cpu) == "fp32"
        warned = [r for r in caplog.records if "without native bf16" in r.getMessage()]
        assert len(warned) == (0 if fast else 1)
    base._warn_slow_low_precision.cache_clear()


# ------------------------------------------------------------------------------------------------- memory guard
@pytest.mark.parametrize("arch", ["tabicl", "tabpfn_v2", "mitra"])
def test_prediction_that_cannot_fit_in_ram_raises_a_clear_memory_error(arch, monkeypatch):
    import autogluon_tfm.inference.base as base

    X, y = _table(120, n_features=6)
    X_before = X.copy()
    model = {"tabicl": "tabicl", "tabpfn_v2": "tabpfnv2", "mitra": "mitra"}[arch]
    clf = TFMClassifier(model=model, checkpoint=make_tiny_network(arch), device="cpu", n_estimators=2)
    clf.fit(X[:100], y[:100])
    monkeypatch.setattr(base, "_available_memory_bytes", lambda: 64 * 1024)  # 64 KB free
    with pytest.raises(MemoryError, match=r"100 training .*6 features.*GB are available.*fewer training rows"):
        clf.predict_proba(X[100:])
    monkeypatch.setattr(base, "_available_memory_bytes", lambda: 64 * 1024**3)
    assert clf.predict_proba(X[100:]).shape == (20, len(np.unique(y[:100])))
    np.testing.assert_array_equal(X, X_before)


# ---------------------------------------------------------------------------------------- TabPFN v2 train cache
def _tabpfn_table(seed: int, n_train: int = 40, n_test: int = 25, n_features: int = 7):
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(3, n_train + n_test, n_features, generator=generator)
    X[:, :, 2] = 1.5  # constant over all rows
    X[0, 5, 4] = float("nan")  # missing cells in training and test rows
    X[1, n_train + 3, 0] = float("nan")
    X[2, :, 6] = torch.where(torch.arange(n_train + n_test) % 2 == 0, float("nan"), 0.7)  # NaN or one value
    return X


@pytest.mark.parametrize("max_classes", [10, 0])
def test_tabpfn_v2_kv_cache_gives_the_forward_outputs(max_classes):
    from autogluon_tfm.nn.tabpfn_v2 import TabPFNv2

    torch.manual_seed(0)
    net = TabPFNv2(max_classes=max_classes, num_buckets=16, embed_dim=16, nhead=4, num_blocks=2).eval()
    for block in net.blocks:  # non-zero residual branches, so every stage matters
        torch.nn.init.normal_(block.feature_attn.out_proj.weight, std=0.2)
        torch.nn.init.normal_(block.item_block.attn.out_proj.weight, std=0.2)
        torch.nn.init.normal_(block.item_block.linear2.weight, std=0.2)
    X = _tabpfn_table(0)
    n = 40
    y = torch.randint(0, 3, (3, n)).float() if max_classes else torch.randn(3, n)
    with torch.no_grad():
        expected = net(X, y)
        cache = net.build_kv_cache(X[:, :n], y)
        calls = []
        net.forward = lambda *a, **k: calls.append(1) or type(net).forward(net, *a, **k)
        got = torch.cat([net.forward_with_kv_cache(X[:, n + i : n + i + 10], cache) for i in (0, 10, 20)], dim=1)
        assert not calls  # test rows only: no full call
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert expected.std(dim=1).max() > 1e-3
        # The first head's keys/values of every block are a num_heads-th of the full ones.
        assert len(cache.kv) == 2 and cache.kv[0][0].shape == (3 * 5, 1, n, 4)

        # A feature constant over the training rows that varies in the test rows: the network falls back to the
        # full call, whose constancy check sees all rows.
        X_new = X.clone()
        X_new[1, n + 2, 2] = -3.0
        reference = net(X_new, y)
        assert not torch.allclose(reference, expected)
        calls.clear()
        torch.testing.assert_close(net.forward_with_kv_cache(X_new[:, n:], cache), reference, atol=1e-5, rtol=1e-5)
        assert calls == [1]
        with pytest.raises(ValueError, match="does not match the cached training rows"):
            net.forward_with_kv_cache(X[:2, n:], cache)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_mitra_kv_cache_gives_the_forward_outputs(task):
    from autogluon_tfm.nn.mitra import Mitra

    torch.manual_seed(0)
    net = Mitra(dim=16, dim_output=10 if task == "classification" else 1, n_layers=2, n_heads=4, task=task).eval()
    generator = torch.Generator().manual_seed(1)
    X = torch.randn(3, 65, 6, generator=generator)
    X[:, :, 2] = 0.5  # constant
    X[:, 40:, 3] = 9.0  # beyond every training quantile
    y = torch.randint(0, 3, (3, 40), generator=generator).float() if task == "classification" else torch.rand(3, 40)
    with torch.no_grad():
        expected = net(X, y)
        cache = net.build_kv_cache(X[:, :40], y)
        got = torch.cat([net.forward_with_kv_cache(X[:, start : start + 10], cache) for start in (40, 50, 60)], 1)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert expected.std(dim=1).max() > 1e-3
        assert len(cache.kv) == 2 and cache.kv[0][0].shape == (3 * 7, 4, 40, 4)  # 6 features + the label token
        with pytest.raises(ValueError, match="does not match the cached training rows"):
            net.forward_with_kv_cache(X[:, 40:, :5], cache)


@pytest.mark.parametrize("arch", ["tabpfn_v2", "mitra"])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_kv_cached_estimators_reuse_the_cache_and_match_the_uncached_path(arch, task, monkeypatch):
    import autogluon_tfm.inference.base as inference_base

    net = make_tiny_network(arch, task, seed=0)
    X, y = _table(130)
    estimator_cls = TFMClassifier if task == "classification" else TFMRegressor
    target = y if task == "classification" else X[:, 0] - X[:, 1]
    params = dict(model={"tabpfn_v2": "tabpfnv2", "mitra": "mitra"}[arch], checkpoint=net, device="cpu", precision="fp32", n_estimators=4, batch_size=2)
    cached = estimator_cls(**params).fit(X[:90], target[:90])
    predict = cached.predict_proba if task == "classification" else cached.predict
    first = predict(X[90:110])
    # Kept for the next prediction: one entry per batch of 2 members (Mitra's regressor has a single member).
    assert len(cached.train_cache_) == -(-len(cached.members_) // 2)
    calls = []
    original = net.build_kv_cache
    net.build_kv_cache = lambda *a, **k: calls.append(1) or original(*a, **k)
    second = predict(X[110:])
    del net.build_kv_cache
    assert not calls  # the repeated predict ran the test rows only

    monkeypatch.setattr(inference_base, "supports_kv_cache", lambda network: False)
    plain = estimator_cls(**params).fit(X[:90], target[:90])
    plain_predict = plain.predict_proba if task == "classification" else plain.predict
    np.testing.assert_allclose(first, plain_predict(X[90:110]), atol=1e-5)
    np.testing.assert_allclose(second, plain_predict(X[110:]), atol=1e-5)
    assert not plain.__dict__.get("train_cache_")  # the generic path keeps nothing


def test_kv_cache_is_skipped_when_it_would_not_fit_the_memory_budget():
    net = make_tiny_network("mitra", "classification", seed=0)
    X, y = _table(100)
    params = dict(model="mitra", checkpoint=net, device="cpu", precision="fp32", n_estimators=2)
    reference = TFMClassifier(**params).fit(X[:70], y[:70])
    expected = reference.predict_proba(X[70:])
    assert reference.train_cache_  # the tiny network's cache fits
    tight = TFMClassifier(**params).fit(X[:70], y[:70])
    tight.memory_budget_bytes = net.kv_cache_nbytes(1, 70, 5) - 1  # one member per call
    np.testing.assert_allclose(tight.predict_proba(X[70:]), expected, atol=1e-5)
    assert not tight.__dict__.get("train_cache_")  # the whole-table path ran


@pytest.mark.parametrize("arch", ["tabpfn_v2", "mitra"])
def test_class_tree_nodes_keep_their_kv_caches_across_predictions(arch, monkeypatch):
    import autogluon_tfm.inference.base as inference_base

    net = make_tiny_network(arch, "classification", seed=0)
    X, y = _table(130, n_classes=4)
    params = dict(
        model={"tabpfn_v2": "tabpfnv2", "mitra": "mitra"}[arch], checkpoint=net, device="cpu", precision="fp32",
        n_estimators=2, max_classes_per_call=2,
    )
    cached = TFMClassifier(**params).fit(X[:90], y[:90])
    assert cached.class_tree_ is not None  # 4 classes, 2 per call: a root and two leaves
    first = cached.predict_proba(X[90:110])
    assert len(cached.train_cache_) == 2 * 3  # every member's every node
    calls = []
    original = net.build_kv_cache
    net.build_kv_cache = lambda *a, **k: calls.append(1) or original(*a, **k)
    second = cached.predict_proba(X[110:])
    del net.build_kv_cache
    assert not calls  # the repeated predict ran the test rows only

    monkeypatch.setattr(inference_base, "supports_kv_cache", lambda network: False)
    plain = TFMClassifier(**params).fit(X[:90], y[:90])
    np.testing.assert_allclose(first, plain.predict_proba(X[90:110]), atol=1e-5)
    np.testing.assert_allclose(second, plain.predict_proba(X[110:]), atol=1e-5)
