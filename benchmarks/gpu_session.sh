#!/usr/bin/env bash
# One call on the GPU machine: install, GPU tests, then benchmarks, each step under its own time limit so
# that a stall (a kernel compiling for minutes, a hung test) costs that step only. Results go to $OUT (the
# device tool's output folder; default ./gpu-out). Steps are chosen by name, in the order given:
#
#   bash benchmarks/gpu_session.sh tests kernels decode      # ~8 min on an H100
#   bash benchmarks/gpu_session.sh 8b-train 8b-gen           # ~8 min
#
# Steps:
#   tests     pytest -m gpu (kernels, models), fp32 tests last; one line per test in $OUT/tests.log
#             (tests-half / tests-fp32: one of the two; on a fresh machine run them as two calls: together they
#             pass the device tool's 600 s per call)
#   kernels   bench_attention.py, 1k..64k, ours (Hedgehog staged and fused) + SDPA + fla (when installed), no decode
#   linear    the linear kernels' GPU tests, then bench_attention.py at 1k / 4k / 16k / 64k: SDPA, fla, ours
#   hybrid64  the hybrid with 64-token tiles at 16k / 32k (bench_attention.py provider triton_hybrid_tk_c64)
#   quadratic the hybrid at 8k beside the quadratic PyTorch forms (LoLCATs-style bf16, fp32 reference)
#   decode    the decode step alone: its GPU tests, then bench_attention.py --providers none (tile x DECODE_DOTS sweep);
#             with BASELINE=<baseline_tree.sh folder> the same timing in that tree, its own process (decode-ab: the
#             same step, its name in session 20)
#   profile   profile_kernels.py at 1k and 16k (kernel time vs wall time)
#   profile-split  profile_kernels.py for the hybrid ops, split backward then --single-scan
#   profile-linear  profile_kernels.py for the linear ops at 4k / 16k (kernel time per kernel)
#   direct    kept compiled kernels vs Triton's launch path: GPU tests, bench at 1k / 4k / 16k, profiles on and off
#             (linear, fused Hedgehog, hybrid)
#   tune-hedgehog   bench_attention.py --tune for the fused Hedgehog kernel at 16k
#   fold-split  the staged Hedgehog backward with phi's halves folded by a split (LOLCATS_PHI_FOLD_SPLIT=1; f = 128
#             then takes dz in the kernels): its GPU tests, then flag off / on, each its own process: the op at 4k
#             beside SDPA (graphed_vs_eager) and f = 128 at 1k / 4k / 16k / 64k (~7 min on a warm machine)
#   flags-4k  _tl_helpers.DN_ROUNDED (LOLCATS_DN_ROUNDED=1) and PHI_FOLD_SPLIT: the linear / segment / graph GPU
#             tests with both on, then 4k (graphed_vs_eager: SDPA, linear, Hedgehog) at off/off, dn, split, both,
#             off/off again, each its own process (~8 min)
#   dn-hybrid  the hybrid kernels' GPU tests with the rounded dn (LOLCATS_DN_ROUNDED=1, which since session 19 also
#             governs the hybrid kernels), then the hybrid at 4k / 16k beside SDPA with it 0 and 1 (graphed_vs_eager,
#             each its own process; ~5.5 min on a fresh machine)
#   project-back  hedgehog_project.py's kernel (LOLCATS_PROJECT_BACK_KERNEL=1; the cuBLAS GEMMs otherwise): its
#             tests and the staged op's GPU test with it on, then the Hedgehog op at 4k / 16k (graphed_vs_eager) and
#             its host breakdown at 4k with it off / on, each its own process (~5 min on a fresh machine)
#   project-back-quick  project-back's timings without its tests, then sweep_project_back.py (~4 min)
#   project-back-ab  the op's kernels profiled at 4k / 16k, and with BASELINE=<baseline_tree.sh folder> the
#             Hedgehog op of that tree at 4k / 16k and its host breakdown (~3 min)
#   peak-fused  the fused and staged Hedgehog ops at 16k / 64k (bench_attention.py: ms and peak memory) with
#             LOLCATS_PROJECT_BACK_KERNEL 0 and 1, each its own process (~2 min)
#   project-grouped  sweep_project_back.py with grouped k heads: the 8B shape (32 / 8 heads, K = 128) at 4 and 8
#             warps, then K = 32 with 16 x heads (the build the kernel refuses) with and without dW (~1.5 min)
#   sweep-states  sweep_segment_states.py at 4k: the segment-state kernel by load tile x warps x stages, both
#             modes, beside a copy of the bytes it reads (it ran at about 1.2 TB/s in session 17's profile)
#   tune-4k   bench_attention.py --tune for the default (staged) Hedgehog op at 4k, 32-token tiles: programs per
#             SM (1-8) x shortest segment (256-1024 tokens), i.e. 4-16 segments
#   tune      bench_attention.py --tune at 4k and 8k (tile size x programs per SM x shortest segment)
#   8b-train  bench_8b.py sections a, b, c (teacher, stage 1, stage 2)
#   8b-lora   bench_8b.py section c alone (stage 2, with a per-kernel profile)
#   sweep     sweep_hybrid_plan.py at the 8B stage-2 shape (batch 4, 1k tokens): warps x stages x segment plan, 32-token
#             tiles (sweep64: 64-token tiles, 2 stages; sweep-map: the Hedgehog map kernels at that shape;
#             sweep-map-16k: the map kernels at batch 1, 16k tokens, writing dz as the staged linear op does)
#   tests-hedgehog  the GPU tests of the Hedgehog map, the fused and staged linear ops and the one-op hybrid
#   ncu       Nsight Compute on one call of each Triton kernel of the stage-2 layer (ncu_stage2_kernels.py): speed of
#             light, occupancy, launch stats, warp stalls; text report in $OUT/ncu.log
#   hedgehog-staged  the Hedgehog op three ways, 1k..64k beside SDPA and fla: fused map (phi in registers), staged
#             (the map kernel writes phi once, then the unfused kernels, one op) and two ops (map op, linear op: a
#             converted linear layer until session 12); f = 128 as called (staged); then fused and staged profiled
#             at 4k / 16k
#   staged-quick  the staged Hedgehog op's GPU tests, then it and the fused op beside fla at five lengths (~4 min)
#   f128      the Hedgehog op at f = 128 (staged) beside fla with the same map applied in PyTorch (needs .whl):
#             the issue's 256-feature comparison in one call, 1k / 4k / 16k / 64k
#   hedgehog-configs  the fused Hedgehog op at 6 warps x stages configs, 8k and 16k, beside fla (needs .whl)
#   ncu-hedgehog  the same for the fused Hedgehog op beside the linear op on precomputed features, 16k tokens
#   ncu-decode  the same for the decode step (ncu_stage2_kernels.py --decode): a mid-block and a block-start step
#   8b-gen    bench_8b.py section d at 32k and 2k prompts (eager and CUDA-graph harness)
#   graphed   graphed_vs_eager.py at 1k / 4k / 8k: each op's forward+backward eager, replayed from a CUDA graph, and
#             its host time alone, beside SDPA and fla (how much of the time below 8k is the host)
#   host      the 4k host-time work (session 13, not yet run on a GPU): graphed_vs_eager.py at 1k / 4k for SDPA and our
#             ops, each checked at 2048 tokens first (4 segments, which the kernels fold), then host_breakdown.py at
#             4k (host time without the launcher / without launches, unit costs), then a py-spy profile of the hybrid
#             when py-spy's wheel is in .whl/; with BASELINE=<folder from baseline_tree.sh> the graphed step also
#             runs that code, in its own process, for a same-machine comparison; HOST_LENGTHS=4096 on a short
#             lease (default "1024 4096")
#   tests-fold  the GPU tests of the kernels session 13 changed (graph, hybrid, linear, decode; half precision)
#   tests-rest  the GPU tests tests-fold did not reach in session 15 (Hedgehog staged / fused, decode), ~3 min
#   hedgehog-host  the Hedgehog op at 4k beside SDPA: graphed_vs_eager (BASELINE as in host), host_breakdown,
#             profile_kernels (kernel by kernel), then a py-spy profile of its eager loop when py-spy's wheel is in
#             .whl/, ~4.5 min
#   tests-graph  each training op's forward+backward captured in a CUDA graph and replayed, against eager
#   tests-models  the GPU tests of converted models (Triton forward, transfer gradients and decoding against the
#             PyTorch forms; linear layers take the staged Hedgehog op)
#   dist      stage 1 on an 8B-shaped random model, torchrun on 1 and then on every visible GPU (needs >= 2:
#             the 2-GPU kind), layer-sharded and data parallel, and the throughput ratios from the timing.json
#             files (issue 8: >= 1.8x)
#   dist-lora stage 2 (LoRA) with FSDP on every visible GPU, from dist's checkpoint when present
# Optional: flash-linear-attention wheels in .whl/ (git-ignored) are installed with --no-deps into a
# separate folder on PYTHONPATH (pass `.whl` in the device tool's carry list).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
export OUT
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -2
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

run() {  # run LIMIT_S NAME CMD...: one step under its time limit, its output in $OUT/NAME.log
    local limit=$1 name=$2
    shift 2
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    grep -v -i "warn" "$OUT/$name.log" | tail -25
    echo "== $name rc=$rc"
}

graphed_ab() {  # graphed_ab LIMIT_S NAME ARGS...: graphed_vs_eager.py, then with BASELINE the same in that tree
    local limit=$1 name=$2
    shift 2
    run "$limit" "$name" python3 benchmarks/graphed_vs_eager.py "$@" --out "$OUT/$name.json"
    if [ -n "${BASELINE:-}" ]; then  # its own process, the benchmark scripts from this tree
        PYTHONPATH=$PWD/$BASELINE${PYTHONPATH:+:$PYTHONPATH} run "$limit" "$name-baseline" \
            python3 benchmarks/graphed_vs_eager.py "$@" --out "$OUT/$name-baseline.json"
    fi
}

project_back_flags() {  # the Hedgehog op at 4k / 16k beside SDPA and its host breakdown at 4k, with
    # hedgehog_project.PROJECT_BACK_KERNEL 0 and 1, each its own process
    local flag
    for flag in 0 1; do
        LOLCATS_PROJECT_BACK_KERNEL=$flag run 80 "project-back-$flag" python3 benchmarks/graphed_vs_eager.py \
            --lengths 4096 16384 --check-t 2048 --providers sdpa triton_hedgehog_f64 \
            --out "$OUT/project-back-$flag.json"
        LOLCATS_PROJECT_BACK_KERNEL=$flag run 50 "project-back-host-$flag" python3 benchmarks/host_breakdown.py \
            --T 4096 --ops sdpa hedgehog --out "$OUT/project-back-host-$flag.json"
    done
}

GPU_TESTS="tests/kernels tests/models/test_models_gpu.py tests/models/test_triton_decode_cache.py"
for step in "$@"; do
    case $step in
        tests|tests-half)
            # a fresh machine compiles every kernel: 33 half-precision tests took over 300 s in session 12
            run 450 tests-half python3 -m pytest -m gpu $GPU_TESTS -k "not fp32" --timeout 90 -p no:cacheprovider -rA -q
            [ "$step" = tests ] && run 300 tests-fp32 python3 -m pytest -m gpu $GPU_TESTS -k "fp32" --timeout 90 \
                -p no:cacheprovider -rA -q ;;
        tests-fp32)
            run 240 tests-fp32 python3 -m pytest -m gpu $GPU_TESTS -k "fp32" --timeout 90 -p no:cacheprovider -rA -q ;;
        kernels)
            run 330 kernels python3 benchmarks/bench_attention.py --no-decode --out "$OUT/kernels.json" \
                --providers sdpa fla_chunk triton_linear triton_hedgehog_f64 triton_hedgehog_fused_f64 triton_hybrid_tk ;;
        linear)  # the linear kernels alone: their GPU tests, then 1k / 4k / 16k / 64k beside SDPA and fla
            run 200 linear-tests python3 -m pytest -m gpu tests/kernels/test_linear_attn_kernel.py \
                tests/kernels/test_segments.py --timeout 90 -p no:cacheprovider -rA -q
            run 330 linear python3 benchmarks/bench_attention.py --no-decode --lengths 1024 4096 16384 65536 \
                --providers sdpa fla_chunk triton_linear triton_hedgehog_f64 --out "$OUT/linear.json" ;;
        hybrid64)
            run 90 hybrid64 python3 benchmarks/bench_attention.py --no-decode --lengths 16384 32768 \
                --providers triton_hybrid_tk triton_hybrid_tk_c64 --out "$OUT/hybrid64.json" ;;
        quadratic)  # the 50x comparison at 8k: LoLCATs-style bf16 quadratic hybrid and the fp32 reference vs ours
            run 200 quadratic python3 benchmarks/bench_attention.py --no-decode --lengths 8192 \
                --providers triton_hybrid_tk lolcats_quadratic_tk naive_hybrid_tk --out "$OUT/quadratic.json" ;;
        decode|decode-ab)
            run 150 decode-tests python3 -m pytest -m gpu tests/kernels/test_decode_kernel.py \
                tests/models/test_triton_decode_cache.py --timeout 90 -p no:cacheprovider -rA -q
            run 150 decode python3 benchmarks/bench_attention.py --providers none --out "$OUT/decode.json"
            if [ -n "${BASELINE:-}" ]; then
                PYTHONPATH=$PWD/$BASELINE${PYTHONPATH:+:$PYTHONPATH} run 150 decode-baseline \
                    python3 benchmarks/bench_attention.py --providers none --out "$OUT/decode-baseline.json"
            fi ;;
        profile)
            run 200 profile python3 benchmarks/profile_kernels.py --lengths 1024 16384 --host --out "$OUT/profile.json" ;;
        profile-split)  # the hybrid backward split (window kernels + state scans) against its single-scan kernels
            run 150 profile-split python3 benchmarks/profile_kernels.py --lengths 1024 16384 \
                --ops triton_hybrid_tk stage2_layer stage2_sdpa --out "$OUT/profile-split.json"
            run 150 profile-single python3 benchmarks/profile_kernels.py --lengths 1024 16384 --single-scan \
                --ops triton_hybrid_tk stage2_layer --out "$OUT/profile-single.json"
            run 150 profile-narrow python3 benchmarks/profile_kernels.py --lengths 1024 16384 --narrow-scans \
                --ops triton_hybrid_tk stage2_layer --out "$OUT/profile-narrow.json" ;;
        profile-linear)  # per-kernel GPU time of the linear ops at 4k / 16k
            run 150 profile-linear python3 benchmarks/profile_kernels.py --lengths 4096 16384 \
                --ops triton_linear triton_hedgehog_f64 --out "$OUT/profile-linear.json" ;;
        direct)  # kept compiled kernels (_launch.DIRECT_LAUNCH) against Triton's launch path: tests, then 1k / 4k
            run 240 direct-tests python3 -m pytest -m gpu tests/kernels/test_launch.py \
                tests/kernels/test_linear_attn_kernel.py tests/kernels/test_hybrid_attn_kernel.py \
                tests/kernels/test_hedgehog_hybrid_kernel.py tests/kernels/test_hedgehog_map_kernel.py \
                tests/kernels/test_segments.py tests/kernels/test_decode_kernel.py -k "not fp32" \
                --timeout 90 -p no:cacheprovider -rA -q
            run 150 direct-bench python3 benchmarks/bench_attention.py --no-decode --lengths 1024 4096 16384 \
                --providers sdpa triton_linear triton_hedgehog_f64 triton_hybrid_tk --out "$OUT/direct-bench.json"
            run 90 direct-profile python3 benchmarks/profile_kernels.py --lengths 1024 4096 --host \
                --ops triton_linear triton_hedgehog_f64 triton_hybrid_tk --out "$OUT/direct-profile.json"
            run 90 direct-profile-off python3 benchmarks/profile_kernels.py --lengths 1024 4096 --host \
                --no-direct-launch --ops triton_linear triton_hedgehog_f64 triton_hybrid_tk \
                --out "$OUT/direct-profile-off.json" ;;
        hedgehog-staged)
            run 480 hedgehog-staged python3 benchmarks/bench_attention.py --no-decode --out "$OUT/hedgehog-staged.json" \
                --providers sdpa fla_chunk triton_linear triton_hedgehog_fused_f64 triton_hedgehog_staged_f64 \
                triton_hedgehog_two_op_f64 triton_hedgehog_f128
            run 150 hedgehog-staged-profile python3 benchmarks/profile_kernels.py --lengths 4096 16384 \
                --ops triton_hedgehog_fused_f64 triton_hedgehog_staged_f64 --out "$OUT/hedgehog-staged-profile.json" ;;
        staged-quick)  # the staged Hedgehog op's GPU tests, then fused / staged beside fla at 1k / 4k / 8k / 16k / 64k
            run 150 staged-quick-tests python3 -m pytest -m gpu tests/kernels/test_linear_attn_kernel.py -k staged \
                --timeout 90 -p no:cacheprovider -rA -q
            run 200 staged-quick python3 benchmarks/bench_attention.py --no-decode --lengths 1024 4096 8192 16384 65536 \
                --providers fla_chunk triton_hedgehog_fused_f64 triton_hedgehog_staged_f64 --out "$OUT/staged-quick.json" ;;
        f128)  # the Hedgehog op at f = 128 (256 features, the issue's shape) beside fla with the same map in PyTorch.
            # Session 15 on a fresh H100: ours and fla_chunk took the whole 240 s, fla_hedgehog_f128 never ran; so
            # fla_chunk (timed in many calls before) is left out and the limit raised
            run 330 f128 python3 benchmarks/bench_attention.py --no-decode --lengths 1024 4096 16384 65536 \
                --providers fla_hedgehog_f128 triton_hedgehog_f128 --out "$OUT/f128.json" ;;
        hedgehog-configs)  # the fused Hedgehog op at each warps x stages config, 8k and 16k, beside fla
            run 300 hedgehog-configs python3 benchmarks/sweep_hedgehog_configs.py --lengths 8192 16384 \
                --out "$OUT/hedgehog-configs.json" ;;
        tune-hedgehog)  # the fused Hedgehog kernel's tile and segment plan at 16k
            run 240 tune-hedgehog python3 benchmarks/bench_attention.py --tune --lengths 16384 \
                --providers triton_hedgehog_fused_f64 --out "$OUT/tune-hedgehog.json" ;;
        fold-split)  # _tl_helpers.PHI_FOLD_SPLIT (LOLCATS_PHI_FOLD_SPLIT=1): its GPU tests, then off / on at 4k and f = 128
            LK=tests/kernels/test_linear_attn_kernel.py
            LOLCATS_PHI_FOLD_SPLIT=1 run 150 fold-split-tests python3 -m pytest -m gpu \
                "$LK::test_gpu_hedgehog_staged_large" "tests/kernels/test_cuda_graph_training.py" -k "64 or 128 or staged" \
                --timeout 90 -p no:cacheprovider -rA -q
            for flag in 0 1; do
                LOLCATS_PHI_FOLD_SPLIT=$flag run 60 "fold-split-4k-$flag" python3 benchmarks/graphed_vs_eager.py \
                    --lengths 4096 --check-t 2048 --providers sdpa triton_hedgehog_f64 --out "$OUT/fold-split-4k-$flag.json"
                LOLCATS_PHI_FOLD_SPLIT=$flag run 120 "fold-split-f128-$flag" python3 benchmarks/bench_attention.py --no-decode \
                    --lengths 1024 4096 16384 65536 --providers triton_hedgehog_f128 --out "$OUT/fold-split-f128-$flag.json"
            done ;;
        flags-4k)  # DN_ROUNDED and PHI_FOLD_SPLIT: GPU tests with both on, then the four settings at 4k, each its own
            # process (graphed_vs_eager: eager, replayed, host; SDPA in every process), the first setting again last
            LK=tests/kernels/test_linear_attn_kernel.py
            LOLCATS_DN_ROUNDED=1 LOLCATS_PHI_FOLD_SPLIT=1 run 170 flags-tests python3 -m pytest -m gpu "$LK" \
                tests/kernels/test_segments.py tests/kernels/test_cuda_graph_training.py -k "not fp32" \
                --timeout 90 -p no:cacheprovider -rA -q
            for flags in 00 10 01 11 00b; do
                LOLCATS_DN_ROUNDED=${flags:0:1} LOLCATS_PHI_FOLD_SPLIT=${flags:1:1} run 75 "flags-4k-$flags" \
                    python3 benchmarks/graphed_vs_eager.py --lengths 4096 --check-t 2048 \
                    --providers sdpa triton_linear triton_hedgehog_f64 --out "$OUT/flags-4k-$flags.json"
            done ;;
        dn-hybrid)  # DN_ROUNDED in the hybrid kernels: their GPU tests with it on, then off / on at 4k and 16k
            LOLCATS_DN_ROUNDED=1 run 170 dn-hybrid-tests python3 -m pytest -m gpu \
                tests/kernels/test_hybrid_attn_kernel.py tests/kernels/test_hedgehog_hybrid_kernel.py -k "not fp32" \
                --timeout 120 -p no:cacheprovider -rA -q
            for flag in 0 1; do
                LOLCATS_DN_ROUNDED=$flag run 80 "dn-hybrid-$flag" python3 benchmarks/graphed_vs_eager.py \
                    --lengths 4096 16384 --check-t 2048 --providers sdpa triton_hybrid_tk \
                    --out "$OUT/dn-hybrid-$flag.json"
            done ;;
        project-back)  # hedgehog_project.PROJECT_BACK_KERNEL: its GPU tests and the staged op's with it on, then
            # the Hedgehog op at 4k / 16k beside SDPA with it 0 and 1 (each its own process), host time and kernels
            LK=tests/kernels/test_linear_attn_kernel.py
            LOLCATS_PROJECT_BACK_KERNEL=1 run 240 project-back-tests python3 -m pytest -m "gpu or not gpu" \
                tests/kernels/test_hedgehog_project_kernel.py "$LK::test_gpu_hedgehog_staged_large" \
                tests/kernels/test_hedgehog_hybrid_kernel.py::test_gpu_bf16_recipe_shape \
                --timeout 120 -p no:cacheprovider -rA -q
            project_back_flags ;;
        project-back-quick)  # on a short lease: the A/B and host breakdowns of project-back, no tests (the op is
            # checked against the fp32 reference at 2048 tokens in each process), then the kernel's configs
            project_back_flags
            run 100 sweep-project-back python3 benchmarks/sweep_project_back.py --lengths 4096 16384 \
                --out "$OUT/sweep-project-back.json" ;;
        project-back-ab)  # then: the profile with the kernel on, and with BASELINE the tree before (same lengths)
            LOLCATS_PROJECT_BACK_KERNEL=1 run 60 project-back-profile python3 benchmarks/profile_kernels.py \
                --lengths 4096 16384 --ops triton_hedgehog_f64 --out "$OUT/project-back-profile.json"
            if [ -n "${BASELINE:-}" ]; then
                PYTHONPATH=$PWD/$BASELINE${PYTHONPATH:+:$PYTHONPATH} run 80 project-back-baseline \
                    python3 benchmarks/graphed_vs_eager.py --lengths 4096 16384 --check-t 2048 \
                    --providers sdpa triton_hedgehog_f64 --out "$OUT/project-back-baseline.json"
                PYTHONPATH=$PWD/$BASELINE${PYTHONPATH:+:$PYTHONPATH} run 50 project-back-host-baseline \
                    python3 benchmarks/host_breakdown.py --T 4096 --ops sdpa hedgehog \
                    --out "$OUT/project-back-host-baseline.json"
            fi ;;
        peak-fused)  # whether hedgehog_project's kernel moved the fused op's peak memory (session 20's table)
            for flag in 0 1; do
                LOLCATS_PROJECT_BACK_KERNEL=$flag run 100 "peak-fused-$flag" python3 benchmarks/bench_attention.py \
                    --no-decode --lengths 16384 65536 --providers triton_hedgehog_fused_f64 triton_hedgehog_f64 \
                    --out "$OUT/peak-fused-$flag.json"
            done ;;
        project-grouped)  # the projection kernel with grouped x heads: 8B shape by warps; the narrow build's dx
            run 80 project-grouped python3 benchmarks/sweep_project_back.py --lengths 4096 16384 --kv-heads 8 \
                --grouped-warps 4 8 --out "$OUT/project-grouped.json"
            run 60 project-narrow python3 benchmarks/sweep_project_back.py --lengths 4096 --kv-heads 16 --head-dim 32 \
                --allow-narrow --grouped-warps 4 --out "$OUT/project-narrow.json"
            run 60 project-narrow-nodw python3 benchmarks/sweep_project_back.py --lengths 4096 --kv-heads 16 \
                --head-dim 32 --allow-narrow --no-dw --grouped-warps 4 --out "$OUT/project-narrow-nodw.json" ;;
        sweep-states)  # the segment-state sums at 4k: load tile x warps x stages, forward and reverse, vs a copy
            run 150 sweep-states python3 benchmarks/sweep_segment_states.py --T 4096 --out "$OUT/sweep-states.json" ;;
        tune-4k)  # the default (staged) Hedgehog op's tile and segment plan at 4k, where it trails SDPA
            run 200 tune-4k python3 benchmarks/bench_attention.py --tune --lengths 4096 --providers triton_hedgehog_f64 \
                --tune-chunks 32 --tune-per-sm 1 2 4 8 --tune-min-tokens 256 512 1024 --out "$OUT/tune-4k.json" ;;
        tune)
            run 300 tune python3 benchmarks/bench_attention.py --tune --lengths 4096 8192 --out "$OUT/tune.json" ;;
        8b-train)
            run 420 8b-train python3 benchmarks/bench_8b.py --sections a,b,c --budget-s 400 --out "$OUT/8b-train.json" ;;
        8b-lora)  # stage 2 alone (section c), with its per-kernel profile
            run 240 8b-lora python3 benchmarks/bench_8b.py --sections c --budget-s 200 --out "$OUT/8b-lora.json" ;;
        sweep)
            run 300 sweep python3 benchmarks/sweep_hybrid_plan.py --chunks 32 --out "$OUT/sweep.json" ;;
        sweep64)
            run 150 sweep64 python3 benchmarks/sweep_hybrid_plan.py --chunks 64 --stages 2 --segment-chunks 0 8 \
                --out "$OUT/sweep64.json" ;;
        sweep-map)
            run 200 sweep-map python3 benchmarks/sweep_hybrid_plan.py --map --out "$OUT/sweep-map.json" ;;
        sweep-map-16k)  # the map kernels as the staged linear op runs them: batch 1, 16k tokens, dz written
            run 300 sweep-map-16k python3 benchmarks/sweep_hybrid_plan.py --map --map-write-dz --batch 1 --length 16384 \
                --out "$OUT/sweep-map-16k.json" ;;
        tests-hedgehog)  # the GPU tests of the Hedgehog ops: the map, fused and staged linear, one-op hybrid
            run 240 tests-hedgehog python3 -m pytest -m gpu tests/kernels/test_linear_attn_kernel.py \
                tests/kernels/test_hedgehog_map_kernel.py tests/kernels/test_hedgehog_hybrid_kernel.py \
                tests/kernels/test_segments.py --timeout 90 -p no:cacheprovider -rA -q ;;
        ncu)
            NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
            run 240 ncu "$NCU" --clock-control none --profile-from-start off --kernel-name regex:"hybrid|hedgehog" \
                --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
                --section MemoryWorkloadAnalysis python3 benchmarks/ncu_stage2_kernels.py ;;
        ncu-hedgehog)  # Nsight Compute on the fused Hedgehog op and the linear op at 16k; text report in $OUT/ncu-hedgehog.log
            NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
            run 300 ncu-hedgehog "$NCU" --clock-control none --profile-from-start off --kernel-name regex:"linear_attn|segment" \
                --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
                --section MemoryWorkloadAnalysis python3 benchmarks/ncu_stage2_kernels.py --hedgehog 16384 ;;
        ncu-decode)  # Nsight Compute on a mid-block and a block-start decode step; text report in $OUT/ncu-decode.log
            NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
            run 180 ncu-decode "$NCU" --clock-control none --profile-from-start off --kernel-name regex:"decode" \
                --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
                --section MemoryWorkloadAnalysis python3 benchmarks/ncu_stage2_kernels.py --decode ;;
        graphed)
            run 360 graphed python3 benchmarks/graphed_vs_eager.py --lengths 1024 4096 8192 --out "$OUT/graphed.json" ;;
        host)
            HOST_OPS="sdpa triton_linear triton_hedgehog_f64 triton_hybrid_tk"
            HOST_LENGTHS=${HOST_LENGTHS:-1024 4096}
            graphed_ab 200 host-graphed --lengths $HOST_LENGTHS --check-t 2048 --providers $HOST_OPS
            run 90 host-breakdown python3 benchmarks/host_breakdown.py --T 4096 --out "$OUT/host-breakdown.json"
            if [ -x /tmp/site/bin/py-spy ]; then
                # session 15: at 500 samples/s with --native py-spy fell seconds behind and the step timed out
                run 90 host-pyspy /tmp/site/bin/py-spy record --native -r 100 -f raw -o "$OUT/pyspy-hybrid.txt" -- \
                    python3 benchmarks/host_breakdown.py --loop 6 --op hybrid
            fi ;;
        tests-fold)  # the GPU tests of the kernels session 13 changed (folded segment states at 2048 tokens, the
            # window logit in the hybrid and decode kernels), half precision: a quicker check than tests-half
            # session 15 on a fresh H100: 11 of its 18 tests passed in 200 s (compiling), so a call of its own
            run 420 tests-fold python3 -m pytest -m gpu tests/kernels/test_cuda_graph_training.py \
                tests/kernels/test_hybrid_attn_kernel.py tests/kernels/test_linear_attn_kernel.py \
                tests/kernels/test_decode_kernel.py -k "not fp32" --timeout 90 -p no:cacheprovider -rA -q ;;
        tests-rest)  # what tests-fold did not reach in session 15: the Hedgehog ops (staged f = 64 / 128, which take
            # project_back's cuBLAS fp32-output GEMMs since session 16; fused) and the decode step, half precision
            LK=tests/kernels/test_linear_attn_kernel.py
            run 200 tests-rest python3 -m pytest -m gpu "$LK::test_gpu_hedgehog_staged_large" \
                "$LK::test_gpu_hedgehog_fused_large" tests/kernels/test_decode_kernel.py \
                -k "not fp32" --timeout 80 -p no:cacheprovider -rA -q ;;
        hedgehog-host)  # the Hedgehog op at 4k beside SDPA: eager / replayed / host (with BASELINE also that tree, in
            # its own process), where its host time goes, and its kernels one by one (session 16's project_back)
            graphed_ab 60 hedgehog-host --lengths 4096 --check-t 2048 --providers sdpa triton_hedgehog_f64
            run 50 hedgehog-host-breakdown python3 benchmarks/host_breakdown.py --T 4096 --ops sdpa hedgehog \
                --out "$OUT/hedgehog-host-breakdown.json"
            run 60 hedgehog-profile-4k python3 benchmarks/profile_kernels.py --lengths 4096 \
                --ops triton_hedgehog_f64 sdpa --out "$OUT/hedgehog-profile-4k.json"
            if [ -x /tmp/site/bin/py-spy ]; then  # where the host time goes, Python and native frames
                run 60 hedgehog-pyspy /tmp/site/bin/py-spy record --native -r 100 -f raw \
                    -o "$OUT/pyspy-hedgehog.txt" -- python3 benchmarks/host_breakdown.py --loop 6 --op hedgehog
            fi ;;
        tests-graph)
            run 300 tests-graph python3 -m pytest -m gpu tests/kernels/test_cuda_graph_training.py --timeout 120 \
                -p no:cacheprovider -rA -q ;;
        tests-models)
            run 240 tests-models python3 -m pytest -m gpu tests/models/test_models_gpu.py \
                tests/models/test_triton_decode_cache.py --timeout 120 -p no:cacheprovider -rA -q ;;
        8b-gen)
            run 330 8b-gen python3 benchmarks/bench_8b.py --sections d --gen-prompts 32768,2048 --budget-s 300 \
                --out "$OUT/8b-gen.json" ;;
        dist)
            n_gpu=$(nvidia-smi -L | wc -l)
            # warm-up: fills Triton's on-disk compile cache, so neither timed run pays for compiling
            run 200 dist-warmup python3 -m torch.distributed.run --standalone --nproc-per-node 1 \
                -m lolcats_lab.scale.distributed transfer --model random:llama3-8b --data random --num-layers 2 \
                --train-sequences 8 --batch-size 4 --steps 2 --out "$OUT/dist-warmup"
            for n in 1 "$n_gpu"; do  # 64 cached sequences, 40 steps per layer: ~0.2 teacher forward per trained layer
                run 300 "dist-$n" python3 -m torch.distributed.run --standalone --nproc-per-node "$n" \
                    -m lolcats_lab.scale.distributed transfer --model random:llama3-8b --data random \
                    --train-sequences 64 --batch-size 4 --steps 40 --out "$OUT/dist-$n"
            done
            # data parallel: every rank the 1-GPU run's work (64 sequences, batch 4, 40 steps), gradients averaged
            run 300 "dist-$n_gpu-data" python3 -m torch.distributed.run --standalone --nproc-per-node "$n_gpu" \
                -m lolcats_lab.scale.distributed transfer --model random:llama3-8b --data random --shard data \
                --train-sequences $((64 * n_gpu)) --batch-size 4 --steps 40 --out "$OUT/dist-$n_gpu-data"
            python3 - "$OUT/dist-1/timing.json" "$OUT/dist-$n_gpu/timing.json" "$OUT/dist-$n_gpu-data/timing.json" <<'PY'
import json, os, sys
one, *many = (json.load(open(p)) for p in sys.argv[1:])
summary = dict(one_gpu=one, runs=many)
for m in many:
    m["throughput_ratio"] = round(m["trained_tokens_per_s"] / one["trained_tokens_per_s"], 3)
    print(f"stage 1, {m['shard']} sharding on {m['world_size']} GPUs: {m['trained_tokens_per_s']:.0f} trained tok/s "
          f"against {one['trained_tokens_per_s']:.0f} on 1 ({m['seconds']} s vs {one['seconds']} s): "
          f"{m['trained_tokens_per_s'] / one['trained_tokens_per_s']:.2f}x")
json.dump(summary, open(os.path.join(os.environ["OUT"], "dist-summary.json"), "w"), indent=1)
PY
            rm -rf "$OUT/dist-warmup"
            ;;
        dist-lora)  # stage 2 with FSDP on every visible GPU, from the 'dist' step's transfer checkpoint
            n_gpu=$(nvidia-smi -L | wc -l)
            ckpt=()
            [ -d "$OUT/dist-$n_gpu/checkpoint" ] && ckpt=(--checkpoint "$OUT/dist-$n_gpu/checkpoint")
            run 300 "dist-lora-$n_gpu" python3 -m torch.distributed.run --standalone --nproc-per-node "$n_gpu" \
                -m lolcats_lab.scale.distributed lora --model random:llama3-8b --data random "${ckpt[@]}" \
                --train-sequences 32 --batch-size 4 --steps 8 --out "$OUT/dist-lora-$n_gpu"
            cat "$OUT/dist-lora-$n_gpu/timing.json" 2>/dev/null
            rm -rf "$OUT"/dist-*/checkpoint "$OUT"/dist-lora-*/lora.safetensors ;;  # large: not brought back
        *)
            echo "unknown step: $step (see the header of $0)"; exit 2 ;;
    esac
done
