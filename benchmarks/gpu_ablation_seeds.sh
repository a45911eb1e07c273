#!/bin/bash
# Many seeds of the decoupled-vs-PPO ablation at once on one GPU (the tiny model leaves it mostly idle).
# usage (from the repository root): benchmarks/gpu_ablation_seeds.sh STEPS SEEDS OUTDIR
# writes OUTDIR/seedS/results.json per seed and OUTDIR/summary.json (ablation_summary.py --save)
steps=$1; seeds=$2; out=$3
mkdir -p $out
for s in $(seq 0 $((seeds-1))); do
  python3 benchmarks/gpu_async.py --device cuda --task copy --model-size tiny --warmup-steps 40 --concurrency 9 \
    --minibatches 4 --eval-size 256 --staleness 0,8 --ablation 8 --lr 5e-4 --steps $steps --seed $s --out $out/seed$s > $out/seed$s.log 2>&1 &
done
wait
ls $out/seed*/results.json | wc -l
python3 benchmarks/ablation_summary.py $out/seed*/results.json --save $out/summary.json
