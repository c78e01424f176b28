#!/bin/sh
# The FLARE submission's entry point. FLARE runs, once per case,
#   docker container run --gpus "device=0" -m 28G --rm -v inputs:/workspace/inputs \
#       -v outputs:/workspace/outputs <team>:latest /bin/bash -c "sh predict.sh"
# with one <case>_0000.nii.gz in /workspace/inputs and expects /workspace/outputs/<case>.nii.gz.
# FUSIONSEG_INPUTS, FUSIONSEG_OUTPUTS and FUSIONSEG_MODEL replace the three folders (to run this
# script outside the container); extra arguments go to `fusionseg predict`.
set -eu
exec fusionseg predict \
    -i "${FUSIONSEG_INPUTS:-/workspace/inputs}" \
    -o "${FUSIONSEG_OUTPUTS:-/workspace/outputs}" \
    -m "${FUSIONSEG_MODEL:-/workspace/model}" \
    --mode fast --quiet "$@"
