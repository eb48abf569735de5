"""The deployable artifact: a directory with manifest.json, the compiled library and the weights.

    manifest.json        versions, target, input/output specs, parameter order, SHA-256 of every file
    model.so             the Relax VM executable for the target (main(*inputs, *params))
    weights.safetensors  the parameters, in the order manifest["params"] lists them
    graph.json           the compiled IR's structure (for inspect and reports; no tensors)

Writing is atomic: everything goes to a hidden temporary directory beside the destination, which is
flushed to disk and swapped into place in one rename only when complete (`write_artifact`). Loading
verifies every hash before any code is loaded.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
from safetensors.numpy import load_file as st_load_file, save as st_save

from .errors import ArtifactError, BuildError, DataError, OutputError

if TYPE_CHECKING:
    from .report import Report

FORMAT = "bitsmith-artifact"
VERSION = 1
MANIFEST = "manifest.json"
LIBRARY = "model.so"
WEIGHTS = "weights.safetensors"
GRAPH = "graph.json"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "TensorSpec":
        return TensorSpec(d["name"], tuple(d["shape"]), d["dtype"])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def write_artifact(out_dir: str | Path, *, manifest: dict[str, Any], export_library: Callable[[Path], None],
                   params: Mapping[str, np.ndarray], extra_files: Mapping[str, str | bytes] = {}) -> Path:
    """Write an artifact atomically; return its final path.

    `manifest` is completed with the parameter order and the hash of every file written. The files go
    to a hidden temporary directory beside `out_dir`, are flushed to disk, and the directory replaces
    `out_dir` in one atomic rename (an exchange with the previous artifact, where there is one): a
    compile killed at any moment leaves `out_dir` absent, the previous artifact, or the new one, whole.
    Temporary directories left by killed compiles are removed by the next write to the same place.
    """
    out_dir = Path(out_dir).resolve()
    check_output_dir(out_dir)
    _remove_stale_temporaries(out_dir)
    created = _missing_ancestors(out_dir.parent)
    tmp = _make_temp_dir(out_dir)
    try:
        _export_in_child(export_library, tmp / LIBRARY, out_dir)
        _write_file(tmp / WEIGHTS, st_save({k: np.ascontiguousarray(v) for k, v in params.items()}))
        for name, content in extra_files.items():
            _check_member_name(name)
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_file(target, content.encode() if isinstance(content, str) else content)
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        manifest = {**manifest, "format": FORMAT, "version": VERSION, "library": LIBRARY, "weights": WEIGHTS,
                    "params": list(params), "files": {f: sha256_file(tmp / f) for f in files}}
        _write_file(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
        _sync_directory(tmp)
        _move_into_place(tmp, out_dir)
    except OSError as exc:
        _discard(tmp, created)
        raise OutputError(f"cannot write artifact {out_dir}: {_write_failure(exc)}; nothing was written. "
                          "Free space or choose another output directory (-o).") from None
    except BaseException:
        _discard(tmp, created)
        raise
    return out_dir


def check_output_dir(out_dir: str | Path) -> None:
    """OutputError now, before any work, if an artifact cannot be written to `out_dir`: it is a file,
    a directory holding something other than an artifact, or under a path that is not a writable
    directory."""
    out_dir = Path(out_dir).resolve()
    if out_dir.exists():
        if not out_dir.is_dir():
            raise OutputError(f"{out_dir} is a file, not a directory; choose a new or empty directory (-o).")
        if not (out_dir / MANIFEST).is_file() and any(out_dir.iterdir()):
            raise OutputError(f"{out_dir} exists and is not a bitsmith artifact; refusing to replace it. "
                              "Choose an empty or new directory (-o).")
    ancestor = out_dir.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"cannot create the output directory {out_dir}: {ancestor} is a file; "
                          "choose a writable location (-o).")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create the output directory {out_dir}: {ancestor} is not writable; "
                          "choose a writable location (-o).")


def _write_failure(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full (or over quota)"
    if exc.errno == errno.EFBIG:
        return "a file exceeds the file size limit (ulimit -f)"
    return str(exc)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sync_directory(directory: Path) -> None:
    """Flush every file of `directory` (the library was written by the linker) and the directory."""
    for path in directory.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# A failed write inside LLVM (which emits the library's object code) is a fatal error that aborts the
# whole process: measured here with a file size limit, `LLVM ERROR: IO failure on output stream: File
# too large`, and no Python exception. So the library is exported by a forked child, whose death the
# parent reports as an OutputError (or a BuildError when no write failed).
_WRITE_FAILURES = ("IO failure", "No space left", "File too large", "Disk quota", "Read-only file system")


def _export_in_child(export_library: Callable[[Path], None], path: Path, out_dir: Path) -> None:
    if not hasattr(os, "fork"):
        export_library(path)
        return
    scratch = Path(tempfile.mkdtemp(prefix="bitsmith-export-"))  # the exporter's object files
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: export, report on the pipe (its stderr too), never return
        code = 1
        try:
            os.close(read_fd)
            os.dup2(write_fd, 2)
            tempfile.tempdir = str(scratch)
            export_library(path)
            code = 0
        except BaseException as exc:  # noqa: B036 - reported to the parent, which raises
            os.write(write_fd, f"{type(exc).__name__}: {exc}".encode(errors="replace")[-4000:])
            code = 9 if isinstance(exc, (OSError, OutputError)) else 8
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        output = pipe.read().decode(errors="replace").strip()
    _, status = os.waitpid(pid, 0)
    shutil.rmtree(scratch, ignore_errors=True)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        if output:
            print(output, file=sys.stderr)
        return
    how = (f"was killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
           else f"exited with status {os.WEXITSTATUS(status)}")
    detail = output.splitlines()[-1] if output else "no message"
    if (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 9) or any(w in output for w in _WRITE_FAILURES):
        raise OutputError(f"cannot write artifact {out_dir}: writing {path.name} failed ({detail}); nothing was "
                          "written. Free space (or raise the file size limit) or choose another output directory (-o).")
    raise BuildError(f"exporting the compiled library failed: the exporter {how} ({detail})")


def _temp_prefix(out_dir: Path, kind: str) -> str:
    """`.NAME.tmp-HOST-PID-`: the writer is known, so a later write can tell a dead writer's leftovers
    from a live one's."""
    return f".{out_dir.name}.{kind}-{socket.gethostname()}-{os.getpid()}-"


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Remove the temporary directories that killed writers (this host, process gone) left beside `out_dir`."""
    if not out_dir.parent.is_dir():
        return
    host = socket.gethostname()
    for kind in ("tmp", "old"):
        marker = f".{out_dir.name}.{kind}-{host}-"
        for path in out_dir.parent.glob(f"{glob.escape(marker)}*"):
            pid = path.name[len(marker):].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _missing_ancestors(directory: Path) -> list[Path]:
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    return missing


def _make_temp_dir(out_dir: Path) -> Path:
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(out_dir, "tmp"), dir=parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the artifact gets the usual permissions
        return tmp
    except OSError as exc:
        raise OutputError(f"cannot create the output directory {out_dir}: {exc.strerror or exc}; "
                          "choose a writable location (-o).") from None


def _discard(tmp: Path, created: list[Path]) -> None:
    """Remove a failed write's temporary directory and the parent directories it created."""
    shutil.rmtree(tmp, ignore_errors=True)
    for directory in created:  # deepest first
        try:
            directory.rmdir()
        except OSError:
            break


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        if not (out_dir / MANIFEST).is_file() and any(out_dir.iterdir()):
            raise OutputError(f"{out_dir} exists and is not a bitsmith artifact; refusing to replace it. "
                              "Choose an empty or new directory (-o).")
        if _exchange(tmp, out_dir):  # out_dir is now the new artifact, tmp the previous one
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = Path(tempfile.mkdtemp(prefix=_temp_prefix(out_dir, "old"), dir=out_dir.parent))
        os.rename(out_dir, old / "artifact")
        os.rename(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out_dir)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux renameat2 with RENAME_EXCHANGE); False where the
    system or file system cannot, and the caller falls back on two renames."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _check_member_name(name: str, root: Path | None = None) -> None:
    path = Path(name)
    if path.is_absolute() or ".." in path.parts or not name:
        if root is None:
            raise ArtifactError(f"artifact member name {name!r} is absolute or escapes the artifact directory")
        raise ArtifactError(f"artifact {root}: member name {name!r} is absolute or escapes the artifact directory; "
                            "refusing to read it. The manifest was tampered with: recompile the artifact")


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def read_verified_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the artifact at `path`, after checking the SHA-256 of every file it lists."""
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"{root} is not an artifact directory (it does not exist or is a file)")
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{root} has no {MANIFEST}: not a bitsmith artifact, or incomplete") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{root / MANIFEST} is not valid JSON ({exc}); the artifact is corrupt") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ArtifactError(f"{root} is not a bitsmith artifact of version {VERSION} "
                            f"(format={manifest.get('format')!r}, version={manifest.get('version')!r})")
    files = manifest.get("files") or {}
    for required in (manifest.get("library"), manifest.get("weights")):
        if required not in files:
            raise ArtifactError(f"{root / MANIFEST} does not list {required!r} among its hashed files")
    for name, expected in sorted(files.items()):
        _check_member_name(name, root)
        member = root / name
        if not member.is_file():
            raise ArtifactError(f"artifact {root} is missing {name}; recompile it")
        if sha256_file(member) != expected:
            raise ArtifactError(f"artifact file {member} was modified (SHA-256 mismatch); refusing to load it. "
                                "Recompile, or restore the original file.")
    return manifest


class Artifact:
    """A compiled, verified model. `Artifact.load(path)` checks every hash before loading code."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self.inputs = [TensorSpec.from_json(d) for d in manifest["inputs"]]
        self.outputs = [TensorSpec.from_json(d) for d in manifest["outputs"]]
        self._runner: Any = None
        self._params: list[np.ndarray] = []

    @classmethod
    def load(cls, path: str | Path) -> "Artifact":
        root = Path(path).resolve()
        artifact = cls(root, read_verified_manifest(root))
        artifact._load_code()
        return artifact

    def _load_code(self) -> None:
        from .backends.runner import TVMRunner  # the backend is imported only once hashes are verified

        weights = st_load_file(str(self.path / self.manifest["weights"]))
        self._params = [weights[name] for name in self.manifest["params"]]
        self._runner = TVMRunner(str(self.path / self.manifest["library"]), device=self.manifest.get("device", "cpu"))

    @property
    def target(self) -> str:
        return str(self.manifest["target"]["name"])

    def _ordered_inputs(self, feeds: Mapping[str, np.ndarray] | Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
        if isinstance(feeds, np.ndarray):
            feeds = [feeds]
        if isinstance(feeds, Mapping):
            missing = [s.name for s in self.inputs if s.name not in feeds]
            extra = [k for k in feeds if k not in {s.name for s in self.inputs}]
            if missing or extra:
                raise DataError(f"artifact {self.path.name} takes inputs {[s.name for s in self.inputs]}; "
                                f"missing {missing}, unexpected {extra}")
            arrays = [np.asarray(feeds[s.name]) for s in self.inputs]
        else:
            arrays = [np.asarray(x) for x in feeds]
            if len(arrays) != len(self.inputs):
                raise DataError(f"artifact {self.path.name} takes {len(self.inputs)} inputs, got {len(arrays)}")
        for spec, array in zip(self.inputs, arrays):
            if tuple(array.shape) != spec.shape or array.dtype.name != spec.dtype:
                raise DataError(f"input {spec.name!r} must be {spec.dtype}{list(spec.shape)}, "
                                f"got {array.dtype.name}{list(array.shape)}")
        return arrays

    def run(self, feeds: Mapping[str, np.ndarray] | Sequence[np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        """Run the model; inputs by name (dict), by position (list) or a single array."""
        outputs = self._runner.run(self._ordered_inputs(feeds), self._params)
        return {spec.name: out for spec, out in zip(self.outputs, outputs)}

    def time(self, feeds: Mapping[str, np.ndarray] | Sequence[np.ndarray] | np.ndarray, repeat: int = 20,
             warmup: int = 3) -> list[float]:
        """Milliseconds of each of `repeat` runs after `warmup` runs."""
        return list(self._runner.time(self._ordered_inputs(feeds), self._params, repeat=repeat, warmup=warmup))

    def save(self, path: str | Path) -> "Artifact":
        """Copy this artifact to `path` (atomically) and return the copy, verified."""
        dest = Path(path).resolve()
        if dest == self.path:
            return self
        tmp = _make_temp_dir(dest)
        try:
            shutil.copytree(self.path, tmp, dirs_exist_ok=True)
            _move_into_place(tmp, dest)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise OutputError(f"cannot save artifact to {dest}: {exc}") from None
        return Artifact.load(dest)

    def report(self, data: Sequence[Mapping[str, np.ndarray]] | None = None, *, fp32_model: str | Path | None = None,
               calibration: Sequence[Mapping[str, np.ndarray]] | None = None,
               eval_fn: Callable[[Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]], float] | None = None,
               repeat: int = 50, quiet: bool = True) -> "Report":
        """A bitsmith.report.Report of this artifact on its target: with evaluation `data` (feeds) and
        its `fp32_model` (ONNX) the accuracy against FP32 too, with `calibration` ONNX Runtime INT8
        beside it. `.save(dir)` writes report.json / .md / .html."""
        from .bench import BenchSettings, artifact_report

        return artifact_report(self, list(data) if data is not None else None, fp32_model=fp32_model,
                               calibration=calibration, eval_fn=eval_fn,
                               settings=BenchSettings(repeat=repeat, quiet=quiet))

    def size_bytes(self) -> int:
        return sum((self.path / f).stat().st_size for f in self.manifest["files"])

    def __repr__(self) -> str:
        return f"Artifact({str(self.path)!r}, target={self.target!r})"
