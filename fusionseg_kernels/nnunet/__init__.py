"""nnU-Net v2 integration: trainers for the three networks, the network rule, a plans rewriter and
the environment.

    architecture             which network (trainer name, plans configuration) describe: the one rule
                             of the trainers, the plans rewriter and ``fusionseg predict``
    trainers                 nnUNetTrainernew (the release's recipe) and its variants; imports nnunetv2
    plans.rewrite_plans      a dataset's nnUNetPlans.json -> a plan whose 3d_fullres network is one of
                             this package's (``fusionseg nnunet-plans``)
    env.shell_lines          ``export nnUNet_extTrainer=...`` (``fusionseg nnunet-env``)

See docs/nnunet.md.
"""
from fusionseg_kernels.errors import PlansError

from .env import (backend_from_env, ext_trainer_dir, ext_trainer_value, shell_lines, threads_from_env,
                  training_length_from_env)
from .plans import fusionseg_architecture, rewrite_plans

__all__ = ["PlansError", "backend_from_env", "ext_trainer_dir", "ext_trainer_value", "threads_from_env",
           "fusionseg_architecture", "rewrite_plans", "shell_lines", "training_length_from_env"]
