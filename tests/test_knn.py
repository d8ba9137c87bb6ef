"""k-NN on frozen features (DINO's knn_classifier): the vote against a numpy transcription of
the protocol on 1 and 8 devices, during tiny pre-training, and stand-alone through the evaluate
CLI (configs/knn.py) on any checkpoint of the encoder."""
import json

import jax
import numpy as np
import pytest

from configs import knn
from multimae_jax.evaluate import CheckpointMismatchError, evaluate
from multimae_jax.train import sharding
from multimae_jax.train.evaluators import knn as knn_module
from multimae_jax.train.evaluators.knn import KnnEvaluator
from multimae_jax.train.loop import train
from train_helpers import SMALL, small_config

NUM_CLASSES, DIM = 5, 6


def dino_knn(train_features, train_labels, test_features, test_labels, k, t, num_classes):
    """DINO eval_knn.py: knn_classifier, transcribed to numpy (one chunk): (top1, top5) in
    percent."""
    train_features = train_features / np.linalg.norm(train_features, axis=1, keepdims=True)
    test_features = test_features / np.linalg.norm(test_features, axis=1, keepdims=True)
    similarity = test_features @ train_features.T
    indices = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    distances = np.take_along_axis(similarity, indices, axis=1)
    candidates = train_labels[indices]
    retrieval_one_hot = np.eye(num_classes)[candidates]
    probs = (retrieval_one_hot * np.exp(distances / t)[..., None]).sum(1)
    predictions = np.argsort(-probs, axis=1, kind="stable")
    correct = predictions == test_labels[:, None]
    return (100 * correct[:, :1].sum() / len(test_labels),
            100 * correct[:, :min(5, k)].sum() / len(test_labels))


def batches_of(features, labels, batch, first_id=0):
    """() -> iterator of padded batches {'rgb': features as (B, 1, D) 'tokens', 'label',
    'valid', 'image': uint8 (B, 2, 2, 3) holding first_id + the row's index} (the tokens pass
    through the identity predict_fn below)."""
    n = len(labels)
    padded = -(-n // batch) * batch
    index = np.arange(padded) % n

    def iterate():
        for start in range(0, padded, batch):
            rows = index[start:start + batch]
            yield {"rgb": features[rows][:, None, :].astype(np.float32),
                   "label": labels[rows].astype(np.int32),
                   "valid": np.arange(start, start + batch) < n,
                   "image": np.broadcast_to((first_id + rows).astype(np.uint8)[:, None, None, None],
                                            (len(rows), 2, 2, 3)).copy()}
    return iterate


def knn_case(devices, k=4):
    """(evaluator, state, the bank, its labels, the queries, their labels)."""
    r = np.random.default_rng(0)
    bank, bank_labels = r.normal(size=(45, DIM)), r.integers(0, NUM_CLASSES, 45)
    # queries near bank rows (so that the vote is decisive) plus pure noise
    queries = np.concatenate([bank[:20] + 0.3 * r.normal(size=(20, DIM)), r.normal(size=(7, DIM))])
    query_labels = np.concatenate([bank_labels[:20], r.integers(0, NUM_CLASSES, 7)])
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1}, devices)
    ev = KnnEvaluator(lambda params, buffers, batch: batch["rgb"], mesh,
                      batches_of(queries, query_labels, 8, first_id=100),
                      reference_batches=batches_of(bank, bank_labels, 16),
                      num_classes=NUM_CLASSES, target="label", picture_input="image", k=k,
                      temperature=0.07)
    return ev, {"params": {}}, bank, bank_labels, queries, query_labels


def run_knn(devices, k=4):
    ev, state, bank, bank_labels, queries, query_labels = knn_case(devices, k)
    want = dino_knn(bank, bank_labels, queries, query_labels, k, 0.07, NUM_CLASSES)
    return ev.run(state), want


@pytest.mark.parametrize("num_devices", [1, 8])
def test_knn_equals_the_dino_protocol(num_devices):
    got, (top1, top5) = run_knn(jax.devices()[:num_devices])
    assert got["samples"] == 27  # the padding of both sets left out
    assert got["acc1"] == pytest.approx(top1) and got["acc5"] == pytest.approx(top5)
    assert 50 < top1 < 100  # the case is neither trivial nor hopeless


@pytest.mark.parametrize("num_devices", [1, 8])
def test_picture_shows_the_nearest_reference_images(num_devices, monkeypatch):
    shown = []
    monkeypatch.setattr(knn_module, "panel_grid", lambda rows, columns: shown.append(rows))
    ev, state, bank, bank_labels, queries, query_labels = knn_case(jax.devices()[:num_devices])
    ev.run(state)
    ev.pictures(state, 3)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    nearest = np.argsort(-unit(queries[:3]) @ unit(bank).T, axis=1, kind="stable")[:, :5]
    (rows,) = shown
    assert len(rows) == 3
    for q, (label, panels) in enumerate(rows):
        # each panel is uniform grey: the query's id (100 + q), then its neighbours' bank rows
        ids = [int(p[0, 0, 0]) for p in panels]
        assert ids == [100 + q] + list(nearest[q])
        same = int((bank_labels[nearest[q]] == query_labels[q]).sum())
        assert label == f"{query_labels[q]} {same}/5"


def test_each_set_is_read_once_per_run():
    ev, state, *_ = knn_case(jax.devices()[:1])
    opened = []
    for attr in ("batches", "reference_batches"):
        make = getattr(ev, attr)
        setattr(ev, attr, lambda make=make, attr=attr: opened.append(attr) or make())
    ev.run(state)
    ev.pictures(state, 2)  # drawn from the run: nothing read again
    assert sorted(opened) == ["batches", "reference_batches"]


def test_k_above_the_rows_of_a_device():
    # 48 padded rows over 8 devices: 6 per device, fewer than k
    got, (top1, top5) = run_knn(jax.devices()[:8], k=20)
    assert got["acc1"] == pytest.approx(top1) and got["acc5"] == pytest.approx(top5)
    with pytest.raises(ValueError, match="k=50 exceeds the 48 reference rows"):
        run_knn(jax.devices()[:8], k=50)


KNN_SMALL = {"evals.knn.data.reference_samples": 64, "evals.knn.data.query_samples": 24,
             "evals.knn.data.eval_batch_size": 16, "evals.knn.every": 2}


def knn_config(config):
    config.evals.knn = knn.get_config("tiny").evals.knn
    config.update_from_flattened_dict(KNN_SMALL)
    return config


def test_pretraining_reports_knn_accuracy(tmp_path):
    c = knn_config(small_config(**{"train.num_steps": 2}))
    train(c, tmp_path / "run")
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [e["step"] for e in history] == [2]
    result = history[0]["knn"]
    assert result["samples"] == 24 and 0 <= result["acc1"] <= result["acc5"] <= 100
    assert (tmp_path / "run" / "best_knn").is_dir()


def stand_alone_config():
    c = knn_config(knn.get_config("tiny"))
    c.update_from_flattened_dict({k: v for k, v in SMALL.items() if k in (
        "model.image_size", "model.overrides.depth")})
    return c


def test_cli_evaluates_any_checkpoint_of_the_encoder(finished_run, tmp_path):
    results = evaluate(stand_alone_config(), finished_run, tmp_path)
    assert results["knn"]["samples"] == 24
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["step"] == 8 and report["knn"] == results["knn"]


def test_cli_refuses_an_encoder_of_another_size(finished_run, tmp_path):
    c = stand_alone_config()
    c.model.overrides.dim_tokens = 64
    c.model.overrides.num_heads = 2
    with pytest.raises(CheckpointMismatchError, match="encoder.0"):
        evaluate(c, finished_run, tmp_path)
