"""The dev zoo: every model loads, checks and runs in onnxruntime on its real inputs, the torch
exports match torch, the data behaves (sizes, disjoint splits, determinism, sensible predictions)."""

from __future__ import annotations

import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from bitsmith import zoo, zoo_data
from bitsmith.errors import UsageError

TORCH_MODELS = ("mobilenet_v2", "minilm_l6", "mtcnn_rnet", "mtcnn_onet")
TABBY, TIGER_CAT, PERSIAN, SIAMESE, EGYPTIAN_CAT = 281, 282, 283, 284, 285
ESPRESSO = 967


def session(name: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the machine's cores are shared
    return ort.InferenceSession(str(zoo.onnx_path(name)), options, providers=["CPUExecutionProvider"])


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("name", zoo.ZOO_MODELS)
def test_model_checks_and_runs_on_real_inputs(name):
    model = onnx.load(zoo.onnx_path(name))
    onnx.checker.check_model(model)
    shapes = zoo.input_shapes(name)
    feeds = zoo.inputs(name, 2)
    assert len(feeds) == 2
    sess = session(name)
    assert {i.name for i in sess.get_inputs()} == set(shapes)
    for feed in feeds:
        assert {k: v.shape for k, v in feed.items()} == shapes
        for output in sess.run(None, feed):
            assert output.shape[0] == 1
            assert np.isfinite(output).all()


@pytest.mark.parametrize("name", TORCH_MODELS)
def test_export_matches_torch_at_batch_2(name):
    sess = session(name)
    feed = zoo.inputs(name, 1, batch=2, seed=3)[0]
    module = zoo.torch_module(name)
    with torch.no_grad():
        expected = module(*(torch.from_numpy(feed[i.name]) for i in sess.get_inputs()))
    expected = expected if isinstance(expected, tuple) else (expected,)
    for got, want in zip(sess.run(None, feed), expected, strict=True):
        want = want.numpy()
        assert got.shape == want.shape
        assert np.abs(got - want).max() / np.abs(want).max() < 1e-4


def test_mobilenet_recognises_the_cat_and_the_espresso():
    sess = session("mobilenet_v2")
    photos = zoo_data.PhotoCrops()
    cat = softmax(sess.run(None, {"input": photos.center_crop("chelsea.png")})[0][0])
    assert TABBY <= cat.argmax() <= EGYPTIAN_CAT  # measured: 285 Egyptian cat, p = 0.80
    assert cat[TABBY:EGYPTIAN_CAT + 1].sum() > 0.9  # measured: 0.99 over the five cat classes
    coffee = softmax(sess.run(None, {"input": photos.center_crop("coffee.png")})[0][0])
    assert coffee.argmax() == ESPRESSO and coffee.max() > 0.9  # measured: p = 0.99


@pytest.mark.parametrize("name", ["mtcnn_rnet", "mtcnn_onet"])
def test_mtcnn_tells_faces_from_non_faces(name):
    count = zoo.available(name, "eval")
    feed = zoo.inputs(name, 1, batch=count)[0]
    truth = zoo.labels(name, 1, batch=count)[0]
    face_probability = session(name).run(None, feed)[-1][:, 1]
    assert ((face_probability > 0.5) == truth).mean() > 0.95  # measured: 1.0 for both nets


def test_ppocr_cls_tells_upright_from_rotated_text():
    count = zoo.available("ppocr_cls", "eval")
    feed = zoo.inputs("ppocr_cls", 1, batch=count)[0]
    truth = zoo.labels("ppocr_cls", 1, batch=count)[0]
    predicted = session("ppocr_cls").run(None, feed)[0].argmax(axis=1)
    assert (predicted == truth).mean() > 0.8  # measured: 0.89 on 280 line pieces


def test_enough_real_data():
    def total(name):
        return zoo.available(name, "calib") + zoo.available(name, "eval")

    assert total("mobilenet_v2") >= 500
    assert total("minilm_l6") >= 1000
    assert total("magika") >= 2000
    assert total("mtcnn_rnet") == 400  # 200 lfw_subset images and their mirror images
    assert len(zoo_data.photo_paths()) >= 11


@pytest.mark.parametrize("name", zoo.ZOO_MODELS)
def test_calib_and_eval_are_disjoint_halves(name):
    samples = zoo._dataset(name, None).samples
    calib, evaluation = (zoo_data.split_samples(samples, split) for split in zoo_data.SPLITS)
    assert {s.group for s in calib}.isdisjoint({s.group for s in evaluation})
    assert len(calib) + len(evaluation) == len(samples)
    assert abs(len(calib) - len(evaluation)) <= 0.1 * len(samples)


@pytest.mark.parametrize("name", ["mobilenet_v2", "minilm_l6", "mtcnn_onet", "magika"])
def test_calib_and_eval_inputs_share_no_row(name):
    def rows(split):
        feed = zoo.inputs(name, 1, batch=16, split=split)[0]
        first = next(iter(feed.values()))
        return {first[i].tobytes() for i in range(len(first))}

    calib, evaluation = rows("calib"), rows("eval")
    assert len(calib) == len(evaluation) == 16
    assert calib.isdisjoint(evaluation)


def test_inputs_are_deterministic_and_seeded():
    def first(seed):
        return zoo.inputs("mobilenet_v2", 2, batch=3, seed=seed)

    a, b, c = first(0), first(0), first(1)
    assert all(np.array_equal(x["input"], y["input"]) for x, y in zip(a, b))
    assert not np.array_equal(a[0]["input"], c[0]["input"])
    assert zoo.labels("magika", 2, batch=4, seed=5)[1].tolist() == zoo.labels("magika", 2, batch=4, seed=5)[1].tolist()


def test_minilm_sequence_length_and_tokens():
    feed = zoo.inputs("minilm_l6", 1, batch=4, seq_len=32)[0]
    assert zoo.input_shapes("minilm_l6", 4, seq_len=32) == {k: v.shape for k, v in feed.items()}
    assert feed["input_ids"].dtype == np.int64 and (feed["input_ids"][:, 0] == 101).all()  # [CLS]
    assert ((feed["input_ids"] != 0) == (feed["attention_mask"] == 1)).all()


def test_magika_features_follow_magika():
    config = zoo._dataset("magika", None).config
    features = zoo_data.magika_features(b"  \nhello world\n\n", b"  \nhello world\n\n", config)
    assert features.shape == (2048,) and features.dtype == np.int32
    assert bytes(features[:13].tolist()) == b"hello world\n\n" and (features[13:1024] == 256).all()
    assert bytes(features[-14:].tolist()) == b"  \nhello world" and (features[1024:-14] == 256).all()


def test_export_is_cached_and_atomic(tmp_path, monkeypatch):
    monkeypatch.setenv("BITSMITH_CACHE", str(tmp_path))
    path = zoo.onnx_path("mtcnn_rnet")
    assert path.parent == tmp_path and path.name.startswith("mtcnn_rnet-")
    started = time.perf_counter()
    assert zoo.onnx_path("mtcnn_rnet") == path
    assert time.perf_counter() - started < 0.5
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_extras_for_control_flow_and_pre_quantized_imports():
    silero = onnx.load(zoo.onnx_path("silero_vad"))
    assert "If" in {node.op_type for node in silero.graph.node}
    dddd = onnx.load(zoo.onnx_path("ddddocr_common_old"))
    assert {"ConvInteger", "DynamicQuantizeLinear"} <= {node.op_type for node in dddd.graph.node}
    assert zoo.input_shapes("ddddocr_common_old") == {"input1": (1, 1, 64, zoo.DDDDOCR_WIDTH)}
    with pytest.raises(UsageError, match="'silero_vad' has no evaluation data; models with it: mobilenet_v2"):
        zoo.inputs("silero_vad", 1)


def test_bad_arguments_are_usage_errors():
    with pytest.raises(UsageError, match="known: mobilenet_v2, minilm_l6"):
        zoo.onnx_path("resnet50")
    with pytest.raises(UsageError, match="resnet50"):
        zoo.input_shapes("resnet50")
    with pytest.raises(UsageError, match="no labelled data; models with it: ppocr_cls"):
        zoo.labels("mobilenet_v2", 1)
    with pytest.raises(UsageError, match="split"):
        zoo.inputs("mtcnn_rnet", 1, split="train")
    with pytest.raises(UsageError, match="holds 200"):
        zoo.inputs("mtcnn_rnet", 201)
    with pytest.raises(UsageError, match="seq_len"):
        zoo.inputs("magika", 1, seq_len=64)
