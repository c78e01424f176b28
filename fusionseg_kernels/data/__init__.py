"""Data helpers: synthetic whole-body CT cases and nnU-Net raw datasets (`synth`)."""
from fusionseg_kernels.data.synth import SyntheticCase, synthesize_ct, write_case, write_dataset

__all__ = ["SyntheticCase", "synthesize_ct", "write_case", "write_dataset"]
