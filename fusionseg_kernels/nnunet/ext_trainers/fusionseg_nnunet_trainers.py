"""Imported by nnU-Net from the ``nnUNet_extTrainer`` folder: re-exports this package's trainers so
that nnU-Net uses the classes defined in `fusionseg_kernels.nnunet.trainers` themselves."""
from fusionseg_kernels.nnunet.trainers import *  # noqa: F401,F403
from fusionseg_kernels.nnunet.trainers import __all__  # noqa: F401
