#!/usr/bin/env bash
# An importable copy of lolcats_lab (kernels/ as lolcats_lab/kernels) at a git revision, for timing two versions of
# the code in one call on the GPU machine, one process each:
#
#   bash benchmarks/baseline_tree.sh d0ae6d0 .ab/base        # here; .ab/ is git-ignored (.gitignore)
#   PYTHONPATH=$PWD/.ab/base python3 benchmarks/graphed_vs_eager.py ...   # there (name .ab in the device tool's carry)
#
# The benchmark scripts come from the working tree either way; only `import lolcats_lab` resolves to the copy
# (a PYTHONPATH entry comes before the editable install's finder). gpu_session.sh's "host" step times both when
# BASELINE names such a folder.
set -euo pipefail
rev=${1:?usage: baseline_tree.sh REV DIR}
dir=${2:?usage: baseline_tree.sh REV DIR}
cd "$(dirname "$0")/.."
rm -rf "$dir"
mkdir -p "$dir"
git archive "$rev" lolcats_lab kernels | tar -x -C "$dir"
mv "$dir/kernels" "$dir/lolcats_lab/kernels"
git rev-parse "$rev" > "$dir/REVISION"
echo "lolcats_lab at $(cat "$dir/REVISION") in $dir"
