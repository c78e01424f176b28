"""Whole-volume prediction: image files in, one uint8 mask per case out.

`Predictor` loads an nnU-Net model folder once and segments files one at a time, in one of two modes:

- ``exact``: nnU-Net v2's predictor, reproduced — its preprocessing, its sliding window (float16
  accumulators, Gaussian importance map), the logits resampled back to the original geometry
  with its export function, then the argmax. Gives the masks ``nnUNetPredictor`` gives.
- ``fast`` (default): preprocessing on the device with ``F.interpolate`` and no crop,
  float16/bfloat16 autocast and float16 accumulators on a GPU, the argmax at network resolution,
  and the label map resized to the original grid by nearest neighbour.

Each case's stage times (read, preprocess, network, postprocess, write) are recorded.
"""
from __future__ import annotations

import contextlib
import sys
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from fusionseg_kernels.errors import EnvironmentSetupError, FusionsegError, InputImageError, ModelFolderError
from fusionseg_kernels.parameters import check_step, check_threads

from fusionseg_kernels import imageio as io

from .export import export_mask
from .memory import check_fits_in_memory
from .reading import LoadedCase, ReadAhead, load_case, run_in_thread
from .model_folder import ModelBundle, load_model_folder
from .preprocessing import exact_preprocess, fast_preprocess, new_shape, normalization_of, require_nnunetv2
from .sliding_window import (is_oom, predict_labels_fast, predict_logits_exact, tile_slices, pad_amounts,
                             upsample_labels)

STAGES = ("read", "preprocess", "network", "postprocess", "write")
_AMP = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}


@dataclass
class PredictOptions:
    device: str | None = None          # "cuda", "cpu"; None: cuda when available
    backend: str = "auto"              # InceptionDWConv3d backend
    mode: str = "fast"                 # "fast" or "exact"
    folds: Sequence[str] | None = None  # None: every fold with a checkpoint
    tta: bool = False                  # mirroring over the checkpoint's allowed axes
    step: float = 0.5                  # tile step as a fraction of the patch
    quiet: bool = False                # no progress bars
    precision: str = "fp16"            # fast mode on a GPU: autocast dtype ("fp16", "bf16", "fp32")
    compression_level: int | None = None  # ISA-L gzip level (0-3) of .nii.gz masks; None: 1
    threads: int | None = None         # torch CPU threads (None: leave torch's setting)
    replace_non_finite: float | None = None  # HU for NaN/inf voxels; None: refuse such images


@dataclass
class CaseResult:
    case: str
    input: str
    output: str
    status: str = "ok"                 # "ok", "failed", "interrupted"
    error: str | None = None
    shape_zyx: list | None = None
    spacing_zyx: list | None = None
    network_shape: list | None = None
    tiles: int | None = None
    results_device: str | None = None
    timings: dict = field(default_factory=dict)
    started: float = field(default=0.0, repr=False)   # perf_counter() when its segmentation began

    def as_dict(self) -> dict:
        d = asdict(self)
        del d["started"]
        return d


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Clock:
    def __init__(self, device: torch.device, timings: dict):
        self.device, self.timings = device, timings

    @contextlib.contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            _sync(self.device)
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EnvironmentSetupError("--device cuda was requested but no CUDA GPU is available here "
                                    "(torch.cuda.is_available() is False); use --device cpu.")
    if dev.type not in ("cuda", "cpu"):
        raise EnvironmentSetupError(f"device {name!r} is not supported; use cuda or cpu.")
    return dev


class Predictor:
    """Segments CT volumes with the network of an nnU-Net model folder."""

    def __init__(self, model_folder: str | Path | ModelBundle, options: PredictOptions | None = None):
        self.options = options or PredictOptions()
        o = self.options
        if o.mode not in ("fast", "exact"):
            raise ValueError(f"mode must be 'fast' or 'exact', got {o.mode!r}")
        if o.precision not in _AMP:
            raise ValueError(f"precision must be one of {', '.join(_AMP)}, got {o.precision!r}")
        o.step = check_step(o.step)
        if o.mode == "exact":
            require_nnunetv2()
        if o.threads is not None:
            torch.set_num_threads(check_threads(o.threads))
        self.device = resolve_device(o.device)
        #: seconds spent before any case: creating the CUDA context, reading the model folder
        self.setup_timings: dict[str, float] = {}
        t0 = time.perf_counter()
        if self.device.type == "cuda":
            torch.empty(1, device=self.device)   # the context, created now rather than inside a case
            torch.cuda.synchronize(self.device)
        self.setup_timings["device_init"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.bundle = (model_folder if isinstance(model_folder, ModelBundle)
                       else load_model_folder(model_folder, o.folds, backend=o.backend))
        b = self.bundle
        if hasattr(b.network, "set_backend"):
            b.network.set_backend(o.backend)
        b.network.to(self.device).eval()
        _sync(self.device)
        self.setup_timings["model_load"] = time.perf_counter() - t0
        self.mirror_axes = (b.mirroring_axes if b.mirroring_axes is not None else (0, 1, 2)) if o.tta else None
        if o.mode == "fast":
            self.norm_scheme, self.norm_params = normalization_of(b.plans, b.configuration)
        if self.device.type == "cuda":
            # nnU-Net's predictor turns cuDNN's autotuner on; its trial workspaces stay in torch's
            # cache and count in the device's used memory, so fast mode leaves it off
            torch.backends.cudnn.benchmark = o.mode == "exact"

    # ------------------------------------------------------------------------------------------
    #: the spacing (mm) this package resamples from, per axis: CT is acquired between about 0.1
    #: and 10 mm; anything far outside is a broken header, not a scan
    SPACING_RANGE_MM = (0.01, 100.0)

    def check_geometry(self, header: io.ImageHeader) -> None:
        """Refuses (`InputImageError`, one sentence) a spacing outside `SPACING_RANGE_MM` or one
        that resamples the image to an empty volume at the model's spacing."""
        low, high = self.SPACING_RANGE_MM
        spacing = header.spacing_zyx_as_written
        if not all(low <= s <= high for s in spacing):
            raise InputImageError(f"{header.path} declares a spacing (z, y, x) of {tuple(spacing)} mm; this model "
                                  f"resamples images whose spacing is between {low} and {high:g} mm on every axis.")
        b = self.bundle
        tf = b.transpose_forward
        shape = new_shape([header.shape_zyx[i] for i in tf], [header.spacing_zyx[i] for i in tf], b.target_spacing)
        if min(shape) < 1:
            raise InputImageError(f"{header.path}: at its spacing (z, y, x) of {tuple(spacing)} mm the image "
                                  f"resamples to an empty volume at the model's spacing {b.target_spacing} mm; "
                                  f"spacings between {low} and {high:g} mm with at least one resampled voxel per "
                                  f"axis are accepted.")

    def _finite(self, voxels: np.ndarray, header: io.ImageHeader) -> np.ndarray:
        """The voxels, or an error naming how many are NaN or infinite (replaced by the option's HU
        when it is given)."""
        bad = io.nonfinite_voxels(header, voxels)
        if bad is None:
            return voxels
        value = self.options.replace_non_finite
        if value is None:
            raise InputImageError(f"{header.path} holds {int(bad.sum())} voxels that are NaN or infinite; pass "
                                  f"--replace-non-finite HU to segment it with those voxels set to HU.")
        replaced = np.array(voxels)   # ITK's array is read-only (and may hold 0 where the file has NaN)
        replaced[bad] = value
        return replaced

    def memory_needed(self, header: io.ImageHeader) -> int:
        """A generous estimate of the host memory one case needs, from its header."""
        b = self.bundle
        n = header.n_voxels
        tf = b.transpose_forward
        shape = [header.shape_zyx[i] for i in tf]
        spacing = [header.spacing_zyx[i] for i in tf]
        n_res = int(np.prod(new_shape(shape, spacing, b.target_spacing), dtype=np.int64))
        c = b.num_classes
        if self.options.mode == "fast":
            per = header.bytes_per_voxel + 1
            res = 4 * (2 + c) if self.device.type == "cpu" else 0
        else:  # float32 copies of the image, the probabilities at full resolution, the mask
            per = header.bytes_per_voxel + 8 + 4 * c + 2
            res = 8 + 6 * c
        return n * per + n_res * res + (1 << 30)

    # ------------------------------------------------------------------------------------------
    def _check_header(self, header: io.ImageHeader) -> None:
        """The checks made from a header before any voxel is read."""
        self.check_geometry(header)
        check_fits_in_memory(header, self.memory_needed(header))

    def read_case(self, src: str | Path) -> LoadedCase:
        return load_case(Path(src), self._check_header)

    def predict_file(self, src: str | Path, dst: str | Path,
                     on_tile: Callable[[], None] | None = None) -> CaseResult:
        """Segments one image file into ``dst`` (written atomically). Raises on failure."""
        result, mask, header = self.segment(src, dst, None, on_tile)
        self.write(result, mask, header)
        return result

    def segment(self, src: str | Path, dst: str | Path, reading: Future | None = None,
                on_tile: Callable[[], None] | None = None) -> tuple[CaseResult, np.ndarray, io.ImageHeader]:
        """(the case's result so far, its mask, its header) for one image: its voxels from
        `reading` (a `LoadedCase` future, read ahead on another thread) or read now."""
        src, dst = Path(src), Path(dst)
        result = CaseResult(case=io.case_name(src), input=str(src), output=str(dst))
        result.started = time.perf_counter()
        clock = _Clock(self.device, result.timings)
        with clock("waited_for_read"):
            if reading is None:
                loaded = self.read_case(src)
            else:
                loaded = reading.result()
                self._check_header(loaded.header)   # read before the model was known: its checks now
            header = loaded.header
            result.timings["read"] = loaded.seconds
            voxels = self._finite(loaded.voxels, header)
            del loaded
        result.shape_zyx = list(header.shape_zyx)
        result.spacing_zyx = header.spacing_zyx_as_written
        try:
            # the voxels are let go of once preprocessed: the dict that holds the only reference to
            # them is emptied there
            full_resolution = {"voxels": voxels}
            del voxels
            if self.options.mode == "exact":
                mask = self._exact(full_resolution, header, result, clock, on_tile)
            else:
                mask = self._fast(full_resolution, header, result, clock, on_tile)
            if tuple(mask.shape) != tuple(header.shape_zyx):
                raise RuntimeError(f"mask shape {mask.shape} differs from the image's {header.shape_zyx}")
        finally:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        return result, mask, header

    def write(self, result: CaseResult, mask: np.ndarray, header: io.ImageHeader) -> None:
        """Writes a case's mask (atomically) and completes its timings."""
        t0 = time.perf_counter()
        io.write_mask(mask, None, Path(result.output), geometry=header.geometry,
                      compression_level=self.options.compression_level)
        result.timings["write"] = time.perf_counter() - t0
        result.timings["total"] = time.perf_counter() - result.started

    def _progress(self, total: int, desc: str, on_tile):
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit="tile", disable=self.options.quiet, leave=False,
                   file=sys.stderr, dynamic_ncols=True)

        def tick():
            bar.update()
            if on_tile is not None:
                on_tile()
        return bar, tick

    # ------------------------------------------------------------------------------------------
    def _exact(self, full_resolution, header, result, clock, on_tile) -> np.ndarray:
        from nnunetv2.configuration import default_num_processes

        b, o = self.bundle, self.options
        spacing, origin, direction = header.geometry
        geometry = {"spacing": spacing, "origin": origin, "direction": direction}
        with clock("preprocess"):
            data, props, pm, cm = exact_preprocess(full_resolution, header.spacing_zyx, geometry, b.plans,
                                                   b.dataset_json, b.configuration_name)
            data = torch.from_numpy(data)
        result.network_shape = list(data.shape[1:])
        padded = [max(s, p) for s, p in zip(data.shape[1:], b.patch_size)]
        n_tiles = len(tile_slices(padded, b.patch_size, o.step))
        result.tiles = n_tiles
        bar, tick = self._progress(n_tiles * len(b.fold_weights), result.case, on_tile)
        n_threads = torch.get_num_threads()
        torch.set_num_threads(min(default_num_processes, n_threads))
        try:
            with clock("network"), torch.inference_mode():
                prediction = None
                for weights in b.fold_weights:
                    b.network.load_state_dict(weights)
                    logits = self._exact_one(data, tick, bar, result).to("cpu")
                    if prediction is None:
                        prediction = logits
                    else:
                        prediction += logits
                    del logits
                if len(b.fold_weights) > 1:
                    prediction /= len(b.fold_weights)
        finally:
            torch.set_num_threads(n_threads)
            bar.close()
        del data
        with clock("postprocess"):
            # nnU-Net's export, slab by slab (the same mask in a fraction of the memory)
            return export_mask(prediction, pm, cm, pm.get_label_manager(b.dataset_json), props)

    def _exact_one(self, data, tick, bar, result) -> torch.Tensor:
        b, o = self.bundle, self.options
        on_device = self.device.type == "cuda"
        result.results_device = self.device.type
        if on_device:
            try:
                return predict_logits_exact(b.network, data, b.patch_size, b.num_classes, o.step,
                                            self.mirror_axes, self.device, True, tick)
            except RuntimeError:
                # what nnU-Net does: retry with the results arrays on the CPU
                torch.cuda.empty_cache()
                bar.reset()
                result.results_device = "cpu (after a failure on the device)"
        return predict_logits_exact(b.network, data, b.patch_size, b.num_classes, o.step,
                                    self.mirror_axes, self.device, False, tick)

    # ------------------------------------------------------------------------------------------
    def _fast(self, full_resolution, header, result, clock, on_tile) -> np.ndarray:
        b, o = self.bundle, self.options
        tf, tb = b.transpose_forward, b.transpose_backward
        image_t = full_resolution["voxels"].transpose(tf)
        spacing_t = [header.spacing_zyx[i] for i in tf]
        on_gpu = self.device.type == "cuda"
        with clock("preprocess"):
            try:
                volume = fast_preprocess(image_t, spacing_t, b.target_spacing, self.norm_scheme, self.norm_params,
                                         self.device, torch.float16 if on_gpu else torch.float32)
            except RuntimeError as err:
                if not (on_gpu and is_oom(err)):
                    raise
                torch.cuda.empty_cache()
                volume = fast_preprocess(image_t, spacing_t, b.target_spacing, self.norm_scheme, self.norm_params,
                                         torch.device("cpu"), torch.float32)
            del image_t
            full_resolution.clear()   # the full-resolution voxels are not needed any more
        result.network_shape = list(volume.shape)
        padded = [s + p0 + p1 for s, (p0, p1) in zip(volume.shape, pad_amounts(volume.shape, b.patch_size))]
        n_tiles = len(tile_slices(padded, b.patch_size, o.step))
        result.tiles = n_tiles
        weights = b.fold_weights if len(b.fold_weights) > 1 else None
        bar, tick = self._progress(n_tiles * len(b.fold_weights), result.case, on_tile)
        amp = _AMP[o.precision]
        try:
            with clock("network"):
                try:
                    result.results_device = self.device.type
                    labels = predict_labels_fast(weights, b.network, volume, b.patch_size, b.num_classes, o.step,
                                                 self.mirror_axes, self.device, amp, True, tick)
                except RuntimeError as err:
                    if not (on_gpu and is_oom(err)):
                        raise
                    torch.cuda.empty_cache()
                    bar.reset()
                    result.results_device = "cpu (after running out of GPU memory)"
                    labels = predict_labels_fast(weights, b.network, volume, b.patch_size, b.num_classes, o.step,
                                                 self.mirror_axes, self.device, amp, False, tick)
        finally:
            bar.close()
        del volume
        with clock("postprocess"):
            mask = upsample_labels(labels, header.shape_zyx, tb)
            del labels
        return mask

    # ------------------------------------------------------------------------------------------
    def predict_paths(self, sources: Iterable[Path], output_folder: str | Path,
                      report: Callable[[str], None] | None = None,
                      on_tile: Callable[[], None] | None = None) -> list[CaseResult]:
        """Segments every file into `output_folder` (see `predict_plan`); the run is refused up
        front when two files would write one mask or a mask would overwrite an input."""
        sources = list(sources)
        plan = io.plan_outputs(sources, output_folder)
        io.check_output_folder(output_folder)
        return self.predict_plan(plan, report, on_tile)

    def predict_plan(self, plan: Sequence[tuple[Path, Path]], report: Callable[[str], None] | None = None,
                     on_tile: Callable[[], None] | None = None, first: Future | None = None) -> list[CaseResult]:
        """Segments each (input, mask file) pair of `imageio.plan_outputs`; a failing case is
        reported (one line) and skipped, an interruption stops the run after the current case's
        partial output is removed.

        Cases overlap in one process: the next case is read (`ReadAhead`) and the previous mask
        written, each on a thread, while the current case is segmented — at most one case ahead
        and one mask behind. `first` is case 0 already being read (`reading.start_reading`)."""
        report = report or (lambda line: print(line, file=sys.stderr))
        results: list[CaseResult] = []
        sources = [src for src, _ in plan]
        reads = ReadAhead(sources, self._check_header, self.memory_needed, first)
        writing: tuple[CaseResult, Future] | None = None
        try:
            for i, (src, dst) in enumerate(plan):
                try:
                    result, mask, header = self.segment(src, dst, reads.take(i), on_tile)
                    reads.done(i)
                    self._finish_write(writing, report)   # one mask waits to be written at a time
                    writing = (result, run_in_thread(lambda r=result, m=mask, h=header: self.write(r, m, h),
                                                     f"write {result.case}", daemon=False))
                    results.append(result)
                    del mask
                except KeyboardInterrupt:
                    results.append(CaseResult(io.case_name(src), str(src), str(dst), "interrupted",
                                              "interrupted; no mask written"))
                    report(f"{src}: interrupted; no mask written for case {io.case_name(src)}"
                           + (f", {len(sources) - i - 1} case(s) not started" if i + 1 < len(sources) else ""))
                    break
                except Exception as err:  # a failure inside one case must not stop the others
                    results.append(self._failed(src, dst, err, report))
                finally:
                    reads.done(i)
        finally:
            reads.cancel()
            self._finish_write(writing, report)
        return results

    @staticmethod
    def _failed(src: Path, dst: Path, err: Exception, report: Callable[[str], None]) -> CaseResult:
        case = io.case_name(src)
        if isinstance(err, FusionsegError):
            report(f"case {case}: {err}")
            return CaseResult(case, str(src), str(dst), "failed", str(err))
        msg = " ".join(str(err).split())[:300]
        report(f"case {case}: {src} failed ({type(err).__name__}: {msg})")
        return CaseResult(case, str(src), str(dst), "failed", f"{type(err).__name__}: {msg}")

    def _finish_write(self, writing: tuple[CaseResult, Future] | None, report: Callable[[str], None]) -> None:
        """Waits for a mask being written; a failed write fails its case."""
        if writing is None:
            return
        result, future = writing
        try:
            future.result()
        except Exception as err:
            failed = self._failed(Path(result.input), Path(result.output), err, report)
            result.status, result.error = failed.status, failed.error


def format_timings(results: Sequence[CaseResult]) -> str:
    """A table of the stage times (seconds) of every case."""
    head = f"{'case':<28}" + "".join(f"{s:>12}" for s in (*STAGES, "total")) + "  status"
    lines = [head]
    for r in results:
        cells = "".join(f"{r.timings[s]:>12.2f}" if s in r.timings else f"{'-':>12}" for s in (*STAGES, "total"))
        lines.append(f"{r.case[:28]:<28}{cells}  {r.status}")
    return "\n".join(lines)


def timings_document(results: Sequence[CaseResult], predictor: Predictor, allocator: str,
                     process: dict | None = None) -> dict:
    """The ``--timings`` JSON: settings, the stages, every case's result; `process` holds the
    command's milestones (wall-clock ``time.time()`` stamps) and set-up times."""
    o = predictor.options
    b = predictor.bundle
    return {
        "settings": {"mode": o.mode, "device": str(predictor.device), "backend": o.backend,
                     "network_backend": getattr(b.network, "backend", None),
                     "precision": o.precision if predictor.device.type == "cuda" and o.mode == "fast" else "fp32",
                     "tta": o.tta, "mirror_axes": list(predictor.mirror_axes or []), "step": o.step,
                     "folds": b.folds, "model_folder": str(b.folder), "network": type(b.network).__name__,
                     "patch_size": list(b.patch_size), "target_spacing": list(b.target_spacing),
                     "torch_threads": torch.get_num_threads(), "allocator": allocator,
                     "torch": torch.__version__},
        "stages": list(STAGES),
        "process": {**(process or {}), **{f"{k}_s": v for k, v in predictor.setup_timings.items()}},
        "cases": [r.as_dict() for r in results],
    }


def predict(inputs: str | Path, output_folder: str | Path, model_folder: str | Path,
            options: PredictOptions | None = None) -> list[CaseResult]:
    """Segments a file or every image of a folder into ``output_folder``; see `Predictor`."""
    sources = io.list_inputs(inputs)
    return Predictor(model_folder, options).predict_paths(sources, output_folder)


__all__ = ["CaseResult", "PredictOptions", "Predictor", "STAGES", "format_timings", "predict",
           "resolve_device", "timings_document", "ModelFolderError"]
