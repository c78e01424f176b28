"""Whole-volume inference: CT files in, lesion masks out (``fusionseg predict``).

    Predictor(model_folder, PredictOptions(mode="fast" | "exact", ...))   load once, segment files
    predict(inputs, output_folder, model_folder, options)                 a file or a folder
    load_model_folder(folder, folds)                                      plans, dataset, folds, network
    create_model_folder(folder, network, plans=released_plans(...))       write an nnU-Net model folder
    keep_freed_memory()                                                   glibc: reuse freed memory
    start_reading(path)                                                   read a case on a thread (no torch)

Names load their modules when first used, so `reading` (image files only) runs while torch is
still being imported. See docs/inference.md.
"""
from __future__ import annotations

from .._imports import lazy_exports

# public name -> the module that defines it
_LAZY = {
    "keep_freed_memory": ".malloc",
    **{name: ".model_folder" for name in ("RELEASED_TRAINER", "ModelBundle", "create_model_folder",
                                          "load_model_folder", "released_dataset_json", "released_plans")},
    **{name: ".predict" for name in ("CaseResult", "PredictOptions", "Predictor", "STAGES", "format_timings",
                                     "predict", "timings_document")},
    "start_reading": ".reading",
}

__all__ = list(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
