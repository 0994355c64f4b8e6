"""Model packages: one folder holding everything a vehicle needs to run a segmentation model.

::

    PKG/
      manifest.json        format + version, library versions, sha256 and size of every file, the
                           training config the model came from, the compiled forms and what they were
                           built for (TensorRT version, GPU)
      model.json           backbone preset and widths, voxel grid and point-to-voxel rule, input fields
                           and their normalisation, class names / palette / ignore id, limits
      weights.safetensors  the state dict (no pickle), loadable by the torch and spconv backends
      network.onnx         (formats: onnx) the graph of :mod:`lidar_ssl_core.deploy.onnx_graph`, summing
                           by scatter-add (what ONNX Runtime runs)
      network.gather.onnx  (formats: tensorrt) the same graph summing by Gather + ReduceSum (TensorRT
                           has no scatter-add); a new GPU rebuilds its engine from it
      network.<prec>.plan  (formats: tensorrt) the serialized TensorRT engine

A package is written into a temporary sibling folder and renamed into place, so a half-written package
never exists under its name. Loading verifies the manifest first: a missing or modified file, or a
package of a newer format, is a :class:`~lidar_ssl_core.errors.ModelPackageError` naming the file.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file

from lidar_ssl_core import __version__
from lidar_ssl_core.deploy.spec import ModelSpec, spec_from_parts
from lidar_ssl_core.errors import ModelPackageError
from lidar_ssl_core.fileio import sha256_of

log = logging.getLogger(__name__)

PACKAGE_FORMAT = "lidar_ssl.model_package"
PACKAGE_VERSION = 1
MANIFEST = "manifest.json"
MODEL_JSON = "model.json"
WEIGHTS = "weights.safetensors"
ONNX = "network.onnx"
TRT_ONNX = "network.gather.onnx"
Format = Literal["onnx", "tensorrt"]
Precision = Literal["fp32", "fp16"]


def library_versions() -> dict[str, str]:
    """Versions of what produced (or runs) a package; absent optional runtimes are left out."""
    versions = {"lidar_ssl": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for name in ("numpy", "onnx", "onnxruntime", "tensorrt", "safetensors"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        versions[name] = str(getattr(module, "__version__", "unknown"))
    return versions


@dataclass(frozen=True)
class ModelPackage:
    """A verified package: its folder, manifest and model description."""

    path: Path
    manifest: dict[str, Any]
    spec: ModelSpec

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def tensorrt(self) -> dict[str, Any] | None:
        entry = self.manifest.get("tensorrt")
        return entry if isinstance(entry, dict) else None


def _contiguous_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def export_package(
    spec: ModelSpec,
    out: Path | str,
    *,
    formats: tuple[Format, ...] = ("onnx",),
    precision: Precision = "fp16",
    overwrite: bool = False,
    trt_max_voxels: int = 300_000,
    trt_opt_voxels: int = 40_000,
) -> ModelPackage:
    """Write the package of ``spec`` at ``out`` (atomically) and return it verified.

    ``precision`` is that of the TensorRT engine (the ONNX graph is fp32, as its CPU use needs);
    ``tensorrt`` needs CUDA and the tensorrt package here, and implies ``onnx`` (the engine is built from
    the graph, and the graph lets another GPU rebuild it).
    """
    dst = Path(out)
    if dst.exists() and not overwrite:
        raise ModelPackageError(f"{dst} exists already; pass --overwrite to replace it")
    wanted: set[str] = set(formats)
    unknown = wanted - {"onnx", "tensorrt"}
    if unknown:
        raise ModelPackageError(f"unknown --formats {sorted(unknown)}; choose from onnx, tensorrt")
    if "tensorrt" in wanted:
        from lidar_ssl_core.deploy.trt_backend import check_tensorrt_available

        if not 1 <= trt_opt_voxels <= trt_max_voxels:
            raise ModelPackageError(
                f"the TensorRT profile needs 1 <= --trt-opt-voxels ({trt_opt_voxels}) <= --trt-max-voxels "
                f"({trt_max_voxels})"
            )

        check_tensorrt_available()  # before anything is written
        wanted.add("onnx")
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        manifest = _write_contents(spec, tmp, wanted, precision, trt_max_voxels, trt_opt_voxels)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        for p in tmp.iterdir():
            p.chmod(0o644)  # safetensors writes 0600; a package is read by other users (the node)
        _publish(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote model package %s (%s)", dst, ", ".join(sorted(manifest["files"])))
    return load_package(dst)


def _write_contents(
    spec: ModelSpec, folder: Path, wanted: set[str], precision: str, max_voxels: int, opt_voxels: int
) -> dict[str, Any]:
    save_file(_contiguous_state(spec.state), str(folder / WEIGHTS), metadata={"format": PACKAGE_FORMAT})
    (folder / MODEL_JSON).write_text(json.dumps(spec.describe(), indent=2, sort_keys=True))
    manifest: dict[str, Any] = {
        "format": PACKAGE_FORMAT,
        "format_version": PACKAGE_VERSION,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "libraries": library_versions(),
        "source": {"model": spec.source, "preset": spec.backbone.preset, "classes": spec.num_classes},
        "config": spec.config,
        "formats": ["torch", *sorted(wanted)],
    }
    if "onnx" in wanted:
        from lidar_ssl_core.deploy.onnx_graph import build_onnx

        (folder / ONNX).write_bytes(build_onnx(spec, "scatter"))
        if "tensorrt" in wanted:
            from lidar_ssl_core.deploy.trt_backend import build_engine_file

            onnx_bytes = build_onnx(spec, "gather")
            (folder / TRT_ONNX).write_bytes(onnx_bytes)
            manifest["tensorrt"] = build_engine_file(
                onnx_bytes, folder, precision, max_voxels, opt_voxels, spec.backbone.in_channels
            )
    manifest["files"] = {
        p.name: {"sha256": sha256_of(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file()
    }
    return manifest


def _publish(tmp: Path, dst: Path) -> None:
    """Rename the finished folder into place; an existing package is replaced only after that works."""
    for p in tmp.iterdir():
        with p.open("rb") as fh:
            os.fsync(fh.fileno())
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        dst.rename(old)
    try:
        tmp.rename(dst)
    except BaseException:
        if old is not None:
            old.rename(dst)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a package folder, its format and version checked."""
    path = folder / MANIFEST
    if not path.is_file():
        raise ModelPackageError(f"{folder} is not a model package: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelPackageError(f"{path} cannot be read: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != PACKAGE_FORMAT:
        raise ModelPackageError(f"{path} is not a {PACKAGE_FORMAT} manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > PACKAGE_VERSION:
        raise ModelPackageError(
            f"{path}: package format version {version!r} is newer than this library reads "
            f"({PACKAGE_VERSION}); upgrade lidar_ssl or re-export the model with this version"
        )
    if not isinstance(manifest.get("files"), dict):
        raise ModelPackageError(f"{path} lists no files")
    return manifest


def verify_files(folder: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists exists with its recorded size and sha256, and the folder holds no
    other file (a backend reads e.g. ``network.onnx`` when present: an unlisted one would run unverified).
    """
    unlisted = sorted(
        p.name for p in folder.iterdir() if p.name != MANIFEST and p.name not in manifest["files"]
    )
    if unlisted:
        raise ModelPackageError(
            f"{folder} holds {unlisted[0]!r}, which {MANIFEST} does not list (so it cannot be verified); "
            "remove it or re-export the package"
        )
    for name, entry in sorted(manifest["files"].items()):
        path = folder / name
        if Path(name).name != name:
            raise ModelPackageError(f"{folder / MANIFEST} lists a file outside the package: {name!r}")
        if not isinstance(entry, dict):
            raise ModelPackageError(f"{folder / MANIFEST}: the entry of {name} is not a size and sha256")
        if not path.is_file():
            raise ModelPackageError(f"{path} is missing from the package (listed in {MANIFEST})")
        if path.stat().st_size != entry.get("bytes") or sha256_of(path) != entry.get("sha256"):
            raise ModelPackageError(
                f"{path} does not match its sha256 in {MANIFEST}: the file was modified or damaged; "
                "re-export the package"
            )
    for required in (MODEL_JSON, WEIGHTS):
        if required not in manifest["files"]:
            raise ModelPackageError(f"{folder / MANIFEST} does not list {required}")


def load_package(path: Path | str) -> ModelPackage:
    """Verify and load a package folder (manifest, hashes, model description, weights)."""
    folder = Path(path)
    manifest = read_manifest(folder)
    verify_files(folder, manifest)
    try:
        description = json.loads((folder / MODEL_JSON).read_text())
        state = load_file(str(folder / WEIGHTS))
    except Exception as err:  # safetensors / json raise several types for a damaged file
        raise ModelPackageError(f"{folder}: cannot read the model ({type(err).__name__}: {err})") from err
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else None
    spec = spec_from_parts(description, dict(state), str(folder), config)
    return ModelPackage(folder, manifest, spec)
