"""User data files for the command line: an .npz of samples -> feeds of the compiled input shapes.

    bitsmith compile model.onnx --recipe w8a8 --calibration calib.npz -o out
    bitsmith bench model.onnx --target x86-avx2 --data eval.npz

The .npz holds one array per model input, keyed by input name, each with a leading sample axis of
the same length N. It is read with allow_pickle=False (object arrays are refused). Two layouts fit
an input of compiled shape (B, ...):

- arrays of shape (N, B, ...): one feed per sample, each sample a whole input batch;
- arrays of shape (N, ...): rows grouped B at a time into N // B feeds (a remainder is dropped,
  with a warning); for B = 1 this is one feed per sample.

A dynamic input dimension without an --input-shape hint takes its size from the data.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

from .errors import DataError, ModelError

log = logging.getLogger("bitsmith")

Feed = dict[str, np.ndarray]
Shape = tuple[int, ...]
DeclaredShape = tuple[int | None, ...]


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file (no pickled objects), checked to share one sample count."""
    path = Path(path)
    if path.is_file() and not zipfile.is_zipfile(path):  # np.load takes any other file for a pickle
        raise DataError(f"data file {path} is not an .npz archive; write it with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise DataError(f"data file {path} does not exist") from None
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise DataError(f"data file {path} holds an array that needs pickle ({exc}); save plain numeric "
                        "arrays with numpy.savez") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"data file {path} is not a readable .npz archive ({exc}); write it with numpy.savez") from None
    if not arrays:
        raise DataError(f"data file {path} holds no arrays; save one array per model input, keyed by input name")
    scalars = [name for name, array in arrays.items() if array.ndim == 0]
    if scalars:
        raise DataError(f"data file {path}: arrays {scalars} have no leading sample axis")
    counts = {name: array.shape[0] for name, array in arrays.items()}
    if len(set(counts.values())) != 1:
        raise DataError(f"data file {path}: arrays disagree on the number of samples (leading axis): {counts}")
    return arrays


def declared_inputs(model: str | Path) -> dict[str, tuple[DeclaredShape, str]]:
    """{input name: (declared shape with None for dynamic dims, numpy dtype name)} of an ONNX file,
    read without loading external weights."""
    import onnx

    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"cannot read {model} as an ONNX model ({exc})") from None
    initializers = {t.name for t in proto.graph.initializer}
    declared = {}
    for info in proto.graph.input:
        if info.name in initializers:
            continue
        tensor = info.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim)
        declared[info.name] = (dims, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name)
    return declared


def fill_dynamic_dims(declared: Mapping[str, tuple[DeclaredShape, str]], hints: Mapping[str, Shape] | None,
                      arrays: Mapping[str, np.ndarray], source: str) -> dict[str, Shape]:
    """Static shapes for every input: the hint if given, the declared shape if static, else the
    declared shape with its dynamic dimensions taken from one sample of the data (batch 1 when the
    samples lack the batch axis)."""
    shapes: dict[str, Shape] = {}
    for name, (dims, _) in declared.items():
        if hints and name in hints:
            shapes[name] = tuple(hints[name])
        elif all(d is not None for d in dims):
            shapes[name] = tuple(int(d) for d in dims)  # type: ignore[arg-type]
        elif name in arrays:
            shapes[name] = _shape_from_sample(name, dims, arrays[name].shape[1:], source)
        else:
            raise DataError(f"{source} has no array for input {name!r}, whose shape is dynamic "
                            f"{list(dims)}; add the array or give --input-shape {name}=1x...")
    return shapes


def _shape_from_sample(name: str, dims: DeclaredShape, sample: Shape, source: str) -> Shape:
    if len(sample) == len(dims) - 1:
        sample = (1, *sample)
    if len(sample) != len(dims) or any(d is not None and d != s for d, s in zip(dims, sample)):
        raise DataError(f"{source}: a sample of {name!r} has shape {list(sample)}, which does not fit the "
                        f"declared shape {[d if d is not None else '?' for d in dims]}")
    return tuple(int(s) for s in sample)


def feeds_from_samples(arrays: Mapping[str, np.ndarray], shapes: Mapping[str, Shape],
                       dtypes: Mapping[str, str], source: str) -> list[Feed]:
    """Split sample arrays into feeds of the compiled `shapes` and `dtypes` (see the module doc)."""
    missing = [name for name in shapes if name not in arrays]
    extra = [name for name in arrays if name not in shapes]
    if missing or extra:
        raise DataError(f"{source} must hold one array per model input {list(shapes)}; "
                        f"missing {missing}, unexpected {extra}")
    per_input = {name: _split(name, arrays[name], shapes[name], dtypes[name], source) for name in shapes}
    counts = {len(feeds) for feeds in per_input.values()}
    if len(counts) != 1:
        raise DataError(f"{source}: the inputs give different numbers of feeds "
                        f"{ {name: len(f) for name, f in per_input.items()} }; use one layout for all inputs")
    count = counts.pop()
    return [{name: per_input[name][i] for name in shapes} for i in range(count)]


def _split(name: str, array: np.ndarray, shape: Shape, dtype: str, source: str) -> list[np.ndarray]:
    array = _cast(name, array, dtype, source)
    if tuple(array.shape[1:]) == tuple(shape):
        return [np.ascontiguousarray(sample) for sample in array]
    if tuple(array.shape[1:]) == tuple(shape[1:]) and len(shape) >= 1:
        batch = shape[0]
        count = array.shape[0] // batch
        if count == 0:
            raise DataError(f"{source}: input {name!r} has {array.shape[0]} samples, fewer than one batch of {batch}")
        if array.shape[0] % batch:
            log.warning("%s: %d samples of %r do not fill a last batch of %d; they are left out",
                        source, array.shape[0] % batch, name, batch)
        return [np.ascontiguousarray(array[i * batch:(i + 1) * batch]) for i in range(count)]
    raise DataError(f"{source}: array {name!r} has shape {list(array.shape)}; for the compiled input shape "
                    f"{list(shape)} it must be [N, {', '.join(map(str, shape))}] (one feed per sample) or "
                    f"[N, {', '.join(map(str, shape[1:]))}] (rows batched {shape[0]} at a time)")


def _cast(name: str, array: np.ndarray, dtype: str, source: str) -> np.ndarray:
    if array.dtype.name == dtype:
        return array
    if not np.can_cast(array.dtype, dtype, casting="same_kind"):
        raise DataError(f"{source}: array {name!r} is {array.dtype.name}, the model input is {dtype}; "
                        f"save it as {dtype}")
    return array.astype(dtype)


def load_feeds(path: str | Path, model: str | Path | None = None, *, shapes: Mapping[str, Shape] | None = None,
               dtypes: Mapping[str, str] | None = None,
               hints: Mapping[str, Shape] | None = None) -> tuple[list[Feed], dict[str, Shape]]:
    """Feeds from an .npz for an ONNX `model` (its declared inputs, dynamic dims from `hints` or the
    data) or for known `shapes` and `dtypes` (an artifact's). Returns (feeds, the static input shapes)."""
    arrays = load_npz(path)
    source = f"data file {path}"
    if model is not None:
        declared = declared_inputs(model)
        shapes = fill_dynamic_dims(declared, hints, arrays, source)
        dtypes = {name: dtype for name, (_, dtype) in declared.items()}
    if shapes is None or dtypes is None:
        raise ValueError("load_feeds needs a model or both shapes and dtypes")
    return feeds_from_samples(arrays, shapes, dtypes, source), dict(shapes)
