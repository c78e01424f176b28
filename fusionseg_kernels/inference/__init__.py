"""Whole-volume inference: CT files in, lesion masks out (``fusionseg predict``).

    Predictor(model_folder, PredictOptions(mode="fast" | "exact", ...))   load once, segment files
    predict(inputs, output_folder, model_folder, options)                 a file or a folder
    load_model_folder(folder, folds)                                      plans, dataset, folds, network
    create_model_folder(folder, network, plans=released_plans(...))       write an nnU-Net model folder
    keep_freed_memory()                                                   glibc: reuse freed memory

See docs/inference.md.
"""
from .malloc import keep_freed_memory
from .model_folder import (RELEASED_TRAINER, ModelBundle, create_model_folder, load_model_folder,
                           released_dataset_json, released_plans)
from .predict import CaseResult, PredictOptions, Predictor, STAGES, format_timings, predict, timings_document

__all__ = ["CaseResult", "ModelBundle", "PredictOptions", "Predictor", "RELEASED_TRAINER", "STAGES",
           "create_model_folder", "format_timings", "keep_freed_memory", "load_model_folder", "predict",
           "released_dataset_json", "released_plans", "timings_document"]
