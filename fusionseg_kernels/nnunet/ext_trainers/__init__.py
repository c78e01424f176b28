"""The folder named in ``nnUNet_extTrainer``: nnU-Net imports each module here by its file name."""
