"""Real evaluation data for the model zoo, read only from files that installed packages ship.

Nothing is downloaded and nothing is random except the seeded choice of samples in `bitsmith.zoo`.
Each dataset enumerates its `Sample`s cheaply (names, boxes, paths) and renders only the ones asked
for into model inputs:

| dataset        | source on disk                                        | renders                           |
|----------------|-------------------------------------------------------|-----------------------------------|
| `PhotoCrops`   | scikit-image's colour photos + sklearn's sample photos | 224x224 crops, ImageNet-normalized |
| `Sentences`    | docstrings of the Python standard library             | BERT token ids + attention mask    |
| `TextPageViews`| scikit-image `page.png` and `text.png`                | PP-OCR det input (letterboxed)     |
| `TextLines`    | text lines of `page.png`, upright and rotated 180     | PP-OCR cls input, label 0 / 1      |
| `Faces`        | scikit-image `lfw_subset.npy` (100 faces, 100 not)    | MTCNN input, label 1 / 0           |
| `FileBytes`    | real files under /usr/share, /usr/lib/python3*, /etc   | magika byte features, label = ext  |

`split_samples` divides a dataset into disjoint "calib" and "eval" halves by group: samples of one
group (a crop and its mirror image, a text line and its rotation) always land in the same half.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import math
import os
import re
import sysconfig
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from .errors import DataError, UsageError

SPLITS = ("calib", "eval")

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

# Every colour photograph bundled with scikit-image and scikit-learn. Left out on purpose: synthetic
# or drawn images (color.png, chessboard_RGB.png, phantom.png, horse.png, logo.png) and tiny ones
# (multipage_rgb.tif, no_time_for_that_tiny.gif).
SKIMAGE_PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
    "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg",
)
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


@dataclass(frozen=True)
class Sample:
    """One real input. `group` decides its split; `label` is None for unlabelled data."""

    group: str
    spec: Any  # hashable; what the dataset needs to render the sample (path, box, flags)
    label: object = None


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing (running) its code."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {package!r} is not installed; install the project's pinned requirements")
    return Path(spec.submodule_search_locations[0])


def _stable_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def split_samples(samples: Sequence[Sample], split: str) -> list[Sample]:
    """The samples of one split. Groups are ordered by label, then by a stable hash of their name,
    and dealt alternately to "calib" and "eval", so the halves are disjoint, balanced across labels,
    and do not depend on the order in which the files were found."""
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
    first_label: dict[str, str] = {}
    for sample in samples:
        first_label.setdefault(sample.group, str(sample.label))
    ordered = sorted(first_label, key=lambda group: (first_label[group], _stable_hash(group)))
    wanted = {group for index, group in enumerate(ordered) if index % 2 == SPLITS.index(split)}
    return [sample for sample in samples if sample.group in wanted]


# --------------------------------------------------------------------------------------- images


def _grid_anchors(count: int) -> tuple[float, ...]:
    """`count` evenly spaced relative positions in [0, 1]: 0.5 for one, (0, 0.5, 1) for three."""
    return (0.5,) if count == 1 else tuple(i / (count - 1) for i in range(count))


def _resize(image: Image.Image, width: int, height: int) -> Image.Image:
    return image.resize((width, height), Image.Resampling.BILINEAR)


@lru_cache(maxsize=16)
def _load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


@lru_cache(maxsize=8)
def _load_gray(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("L")


def photo_paths() -> list[Path]:
    skimage_data = package_dir("skimage") / "data"
    sklearn_images = package_dir("sklearn") / "datasets" / "images"
    paths = [skimage_data / name for name in SKIMAGE_PHOTOS] + [sklearn_images / name for name in SKLEARN_PHOTOS]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise DataError(f"photos missing from the installed packages: {', '.join(missing)}")
    return paths


def imagenet_normalize(rgb: Image.Image) -> np.ndarray:
    """[3, H, W] float32, as torchvision's ImageNet models expect."""
    pixels = np.asarray(rgb, np.float32) / 255.0
    return ((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


class PhotoCrops:
    """Square crops of real photos at several scales and grid positions, plus their mirror images.

    A crop's side is `scale` times the photo's short side; scale 1.0 slides the square along the
    long side. Each crop is resized to `size` x `size` and ImageNet-normalized: input "input".
    """

    SCALES = (1.0, 0.85, 0.7, 0.55, 0.4)
    POSITIONS_PER_AXIS = 4

    def __init__(self, size: int = 224, input_name: str = "input") -> None:
        self.size = size
        self.input_name = input_name

    @cached_property
    def samples(self) -> list[Sample]:
        samples = []
        for path in photo_paths():
            with Image.open(path) as image:
                width, height = image.size
            boxes = []
            for scale in self.SCALES:
                side = round(scale * min(width, height))
                for ay in _grid_anchors(self.POSITIONS_PER_AXIS):
                    for ax in _grid_anchors(self.POSITIONS_PER_AXIS):
                        left, top = round(ax * (width - side)), round(ay * (height - side))
                        box = (left, top, left + side, top + side)
                        if box not in boxes:
                            boxes.append(box)
            for box in boxes:
                group = f"{path.name}:{box}"
                samples += [Sample(group, (path, box, False)), Sample(group, (path, box, True))]
        return samples

    def render_one(self, spec: tuple) -> np.ndarray:
        path, box, mirrored = spec
        crop = _resize(_load_rgb(path).crop(box), self.size, self.size)
        if mirrored:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return imagenet_normalize(crop)

    def render(self, samples: Sequence[Sample]) -> dict[str, np.ndarray]:
        return {self.input_name: np.stack([self.render_one(s.spec) for s in samples])}

    def center_crop(self, photo_name: str) -> np.ndarray:
        """The largest centred square of one photo (e.g. "chelsea.png"), as a [1, 3, H, W] batch."""
        for path in photo_paths():
            if path.name == photo_name:
                width, height = _load_rgb(path).size
                side = min(width, height)
                left, top = (width - side) // 2, (height - side) // 2
                return self.render_one((path, (left, top, left + side, top + side), False))[None]
        raise UsageError(f"unknown photo {photo_name!r}; known: {', '.join(p.name for p in photo_paths())}")


# ------------------------------------------------------------------------------------ sentences

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_PROSE_CHARS = re.compile(r"[A-Za-z ,.'\-]")


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, OSError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node)
            if docstring:
                yield docstring


def _looks_like_prose(sentence: str) -> bool:
    words = sentence.split()
    return (
        5 <= len(words) <= 60
        and sentence[0].isupper()
        and sentence.endswith(".")
        and "::" not in sentence
        and len(_PROSE_CHARS.findall(sentence)) >= 0.9 * len(sentence)
    )


def sentences_of(docstring: str) -> Iterator[str]:
    """Prose sentences of one docstring; indented blocks (code, doctests, option lists) are skipped."""
    for paragraph in re.split(r"\n\s*\n", docstring):
        lines = paragraph.splitlines()
        if any(line.startswith((" ", "\t", ">>>")) for line in lines):
            continue
        text = " ".join(line.strip() for line in lines)
        for sentence in _SENTENCE_END.split(text):
            if _looks_like_prose(sentence):
                yield sentence


@lru_cache(maxsize=1)
def stdlib_sentences() -> tuple[str, ...]:
    """English sentences from the docstrings of the standard library's top-level modules, deduplicated,
    in a fixed order (file name, then position in the file)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    seen: dict[str, None] = {}
    for path in sorted(stdlib.glob("*.py")):
        for docstring in _docstrings(path):
            for sentence in sentences_of(docstring):
                seen.setdefault(sentence, None)
    return tuple(seen)


class Sentences:
    """Standard-library sentences tokenized for a BERT model, padded / truncated to `seq_len`.

    Renders "input_ids" and "attention_mask", both int64 [N, seq_len].
    """

    def __init__(self, tokenizer_path: Path, seq_len: int = 128) -> None:
        if seq_len < 2:
            raise UsageError(f"sequence length {seq_len} is too short: it must hold [CLS] and [SEP]")
        self.tokenizer_path = tokenizer_path
        self.seq_len = seq_len

    @cached_property
    def samples(self) -> list[Sample]:
        return [Sample(sentence, sentence) for sentence in stdlib_sentences()]

    @cached_property
    def tokenizer(self):
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.tokenizer_path))
        tokenizer.enable_truncation(max_length=self.seq_len)
        tokenizer.enable_padding(length=self.seq_len, pad_id=0, pad_token="[PAD]")
        return tokenizer

    def render(self, samples: Sequence[Sample]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch([s.spec for s in samples])
        return {
            "input_ids": np.array([e.ids for e in encodings], np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], np.int64),
        }


# ------------------------------------------------------------------------------------------ OCR


def rapidocr_normalize(gray: np.ndarray) -> np.ndarray:
    """RapidOCR's det and cls normalization, (x / 255 - 0.5) / 0.5, on a gray image -> [3, H, W]."""
    normalized = (gray.astype(np.float32) / 255.0 - 0.5) / 0.5
    return np.repeat(normalized[None], 3, axis=0)


class TextPageViews:
    """Views of real text images for PP-OCR det, `height` x `width` (multiples of 32), input "x".

    "fit" views scale the whole image into the frame (then smaller, at 3x3 positions) on a black
    letterbox, as RapidOCR pads; "zoom" views fill the frame with a part of the image.
    """

    SOURCES = ("page.png", "text.png")
    FIT_SCALES = (1.0, 0.8, 0.6, 0.45)
    ZOOMS = (1.5, 2.0)
    POSITIONS_PER_AXIS = 3

    def __init__(self, height: int = 320, width: int = 640) -> None:
        if height % 32 or width % 32:
            raise UsageError(f"PP-OCR det needs sides that are multiples of 32, not {height}x{width}")
        self.height, self.width = height, width

    @cached_property
    def samples(self) -> list[Sample]:
        samples: list[Sample] = []
        for name in self.SOURCES:
            path = package_dir("skimage") / "data" / name
            with Image.open(path) as image:
                src_w, src_h = image.size
            fit = min(self.height / src_h, self.width / src_w)
            specs = []
            for scale in self.FIT_SCALES:
                w, h = round(src_w * fit * scale), round(src_h * fit * scale)
                for ay in _grid_anchors(self.POSITIONS_PER_AXIS):
                    for ax in _grid_anchors(self.POSITIONS_PER_AXIS):
                        spec = ("fit", path, (round(ax * (self.width - w)), round(ay * (self.height - h)), w, h))
                        if spec not in specs:
                            specs.append(spec)
            for zoom in self.ZOOMS:
                w, h = round(self.width / fit / zoom), round(self.height / fit / zoom)
                for ay in _grid_anchors(self.POSITIONS_PER_AXIS):
                    for ax in _grid_anchors(self.POSITIONS_PER_AXIS):
                        left, top = round(ax * max(src_w - w, 0)), round(ay * max(src_h - h, 0))
                        spec = ("zoom", path, (left, top, left + w, top + h))
                        if spec not in specs:
                            specs.append(spec)
            samples += [Sample(f"{name}:{spec[0]}:{spec[2]}", spec) for spec in specs]
        return samples

    def render_one(self, spec: tuple) -> np.ndarray:
        kind, path, geometry = spec
        page = _load_gray(path)
        if kind == "fit":
            left, top, w, h = geometry
            frame = Image.new("L", (self.width, self.height), 0)
            frame.paste(_resize(page, w, h), (left, top))
        else:
            frame = _resize(page.crop(geometry), self.width, self.height)
        return rapidocr_normalize(np.asarray(frame))

    def render(self, samples: Sequence[Sample]) -> dict[str, np.ndarray]:
        return {"x": np.stack([self.render_one(s.spec) for s in samples])}


def find_text_lines(gray: np.ndarray, min_height: int = 8, margin: int = 3) -> list[tuple[int, int, int, int]]:
    """Boxes (left, top, right, bottom) of the horizontal text lines of a page photo.

    Ink is what is much darker than the local paper brightness; rows with enough ink form lines.
    """
    from scipy import ndimage

    pixels = gray.astype(np.float32)
    paper = ndimage.uniform_filter(ndimage.maximum_filter(pixels, size=15), size=15)
    ink = (paper - pixels) > 40
    inked_rows = ink.mean(axis=1) > 0.12
    boxes = []
    row = 0
    while row < len(inked_rows):
        if not inked_rows[row]:
            row += 1
            continue
        start = row
        while row < len(inked_rows) and inked_rows[row]:
            row += 1
        if row - start >= min_height:
            top, bottom = max(start - margin, 0), min(row + margin, gray.shape[0])
            columns = np.flatnonzero(ink[start:row].any(axis=0))
            boxes.append((int(columns[0]), top, int(columns[-1]) + 1, bottom))
    return boxes


class TextLines:
    """Pieces of the text lines of `page.png` for PP-OCR cls: input "x" [N, 3, 48, 192].

    Windows of 2, 3, 4 and 6 line-heights slide along each line at half-window strides, plus each
    whole line; each piece comes upright (label 0) and rotated by 180 degrees (label 1), the order
    of the classifier's label_list ['0', '180']. Resizing and padding follow RapidOCR's
    `TextClassifier.resize_norm_img`.
    """

    ASPECTS = (2, 3, 4, 6)

    def __init__(self, height: int = 48, width: int = 192) -> None:
        self.height, self.width = height, width

    @cached_property
    def page(self) -> np.ndarray:
        return np.asarray(_load_gray(package_dir("skimage") / "data" / "page.png"))

    @cached_property
    def samples(self) -> list[Sample]:
        samples = []
        for left, top, right, bottom in find_text_lines(self.page):
            line_height, line_width = bottom - top, right - left
            boxes = [(left, top, right, bottom)]
            for aspect in self.ASPECTS:
                window = aspect * line_height
                if window >= line_width:
                    continue
                stride = window // 2
                for start in range(left, right - window + 1, stride):
                    boxes.append((start, top, start + window, bottom))
            for box in boxes:
                group = f"page.png:{box}"
                samples += [Sample(group, (box, False), label=0), Sample(group, (box, True), label=1)]
        return samples

    def render_one(self, spec: tuple) -> np.ndarray:
        (left, top, right, bottom), rotated = spec
        piece = self.page[top:bottom, left:right]
        if rotated:
            piece = piece[::-1, ::-1]
        resized_w = min(self.width, math.ceil(self.height * piece.shape[1] / piece.shape[0]))
        resized = np.asarray(_resize(Image.fromarray(np.ascontiguousarray(piece)), resized_w, self.height))
        padded = np.zeros((3, self.height, self.width), np.float32)
        padded[:, :, :resized_w] = rapidocr_normalize(resized)
        return padded

    def render(self, samples: Sequence[Sample]) -> dict[str, np.ndarray]:
        return {"x": np.stack([self.render_one(s.spec) for s in samples])}


# ---------------------------------------------------------------------------------------- faces


@lru_cache(maxsize=1)
def lfw_subset() -> np.ndarray:
    """scikit-image's 200 25x25 gray images in [0, 1]: 100 faces, then 100 non-faces."""
    return np.load(package_dir("skimage") / "data" / "lfw_subset.npy", allow_pickle=False)


class Faces:
    """LFW faces (label 1) and non-faces (label 0) for MTCNN, input "input" [N, 3, size, size].

    Each image is resized, made 3-channel, and normalized as facenet-pytorch does,
    (x - 127.5) * 0.0078125 on 0..255 pixels; each also comes mirrored.
    """

    FACES = 100

    def __init__(self, size: int) -> None:
        self.size = size

    @cached_property
    def samples(self) -> list[Sample]:
        samples = []
        for index in range(len(lfw_subset())):
            label = 1 if index < self.FACES else 0
            group = f"lfw_subset:{index}"
            samples += [Sample(group, (index, False), label), Sample(group, (index, True), label)]
        return samples

    def render_one(self, spec: tuple) -> np.ndarray:
        index, mirrored = spec
        pixels = Image.fromarray((lfw_subset()[index] * 255.0).astype(np.float32))
        resized = np.asarray(_resize(pixels, self.size, self.size), np.float32)
        if mirrored:
            resized = resized[:, ::-1]
        return np.repeat(((resized - 127.5) * 0.0078125)[None], 3, axis=0)

    def render(self, samples: Sequence[Sample]) -> dict[str, np.ndarray]:
        return {"input": np.stack([self.render_one(s.spec) for s in samples])}


# ---------------------------------------------------------------------------------------- files

FILE_ROOTS = ("/usr/share", "/usr/lib/python3*", "/etc")


@dataclass(frozen=True)
class MagikaConfig:
    beg_size: int
    end_size: int
    padding_token: int
    block_size: int
    min_file_size_for_dl: int

    @classmethod
    def load(cls, path: Path) -> "MagikaConfig":
        config = json.loads(path.read_text())
        if config["mid_size"] != 0 or config["use_inputs_at_offsets"]:
            raise DataError(f"{path}: mid bytes / offset inputs are not supported (magika itself does not)")
        return cls(config["beg_size"], config["end_size"], config["padding_token"], config["block_size"],
                   config["min_file_size_for_dl"])


def magika_features(content_start: bytes, content_end: bytes, config: MagikaConfig) -> np.ndarray:
    """Magika's features v2: up to `block_size` bytes read from each end of the file, whitespace
    stripped, the first `beg_size` (padded after) and last `end_size` (padded before) bytes."""
    beg = list(content_start.lstrip()[: config.beg_size])
    beg += [config.padding_token] * (config.beg_size - len(beg))
    end_content = content_end.rstrip()
    end = list(end_content[max(len(end_content) - config.end_size, 0):])
    end = [config.padding_token] * (config.end_size - len(end)) + end
    return np.array(beg + end, np.int32)


def read_file_ends(path: Path, block_size: int) -> tuple[bytes, bytes]:
    """At most `block_size` bytes from the start and from the end of a file."""
    with open(path, "rb") as stream:
        size = stream.seek(0, os.SEEK_END)
        length = min(block_size, size)
        stream.seek(0)
        start = stream.read(length)
        stream.seek(size - length)
        return start, stream.read(length)


def _files_by_extension(roots: Sequence[str]) -> dict[str, list[Path]]:
    by_extension: dict[str, list[Path]] = {}
    for pattern in roots:
        for root in sorted(Path("/").glob(pattern.lstrip("/"))):
            for directory, subdirectories, names in os.walk(root):
                subdirectories.sort()
                for name in sorted(names):
                    extension = name.rpartition(".")[2].lower() if "." in name.strip(".") else ""
                    if not extension or extension.isdigit() or not extension.isalnum():
                        continue
                    path = Path(directory, name)
                    if path.is_file() and not path.is_symlink():
                        by_extension.setdefault(extension, []).append(path)
    return by_extension


class FileBytes:
    """Real files on this machine as magika sees them: input "bytes" int32 [N, beg+end]; label = the
    file's extension (lower case, without the dot).

    At most `per_extension` files of each extension are kept (chosen by a stable hash of the path),
    and only files magika would hand to its model: readable, with at least `min_file_size_for_dl`
    bytes left after stripping whitespace. The set depends on what is installed on the machine.
    """

    def __init__(self, config_path: Path, roots: Sequence[str] = FILE_ROOTS, per_extension: int = 128) -> None:
        self.config = MagikaConfig.load(config_path)
        self.roots = tuple(roots)
        self.per_extension = per_extension

    def _goes_to_model(self, path: Path) -> bool:
        try:
            start, end = read_file_ends(path, self.config.block_size)
        except OSError:
            return False
        features = magika_features(start, end, self.config)
        return features[self.config.min_file_size_for_dl - 1] != self.config.padding_token

    @cached_property
    def samples(self) -> list[Sample]:
        samples = []
        for extension, paths in sorted(_files_by_extension(self.roots).items()):
            kept = 0
            for path in sorted(paths, key=lambda p: _stable_hash(str(p))):
                if kept == self.per_extension:
                    break
                if self._goes_to_model(path):
                    samples.append(Sample(str(path), path, extension))
                    kept += 1
        return samples

    def render(self, samples: Sequence[Sample]) -> dict[str, np.ndarray]:
        rows = []
        for sample in samples:
            try:
                start, end = read_file_ends(sample.spec, self.config.block_size)
            except OSError as error:
                raise DataError(f"{sample.spec}: cannot read it any more ({error}); it was listed earlier") from error
            rows.append(magika_features(start, end, self.config))
        return {"bytes": np.stack(rows)}
