#!/usr/bin/env bash
# Training step, sync and executor times by batch size and slots, one warm-up shared by
# every run (built-in small policy, reverse, max_staleness 2, a checkpoint only at the
# end). Each line: the medians of a 60-update run after its first 8 updates. Round 7
# of the fidelity study (docs/simulator.md) ran it on an H200:
#     bash benchmarks/step_by_batch.sh
# DEVICE=cpu MODEL=tiny STEPS=12 WARMUP=5 runs it small on a CPU.
set -e
T="python3 -m engine.cli train --task reverse --model-size ${MODEL:-small} --device ${DEVICE:-cuda} --group-size 4 --seed 0 --no-progress"
$T --steps 1 --batch-size 16 --max-concurrent 64 --warmup-steps ${WARMUP:-300} --run-dir ${OUT:-runs/step_by_batch}/warm >/dev/null 2>&1
i=0
for spec in "16 2" "16 4" "16 8" "8 4" "8 8" "32 2" "32 4" "24 4" "48 2" "64 2" "16 4"; do set -- $spec; i=$((i+1)); D=${OUT:-runs/step_by_batch}/b$1c$2-$i
  $T --steps ${STEPS:-60} --batch-size $1 --max-concurrent $(($1*$2)) --max-staleness 2 --init ${OUT:-runs/step_by_batch}/warm/final.safetensors --warmup-steps 0 --checkpoint-every 1000 --run-dir $D >/dev/null 2>&1
  python3 - $D $1 $2 <<'PY'
import json,sys,statistics as st
L=[json.loads(l) for l in open(sys.argv[1]+'/metrics.jsonl')][8:]
m=lambda k: st.median(l.get(k,0) for l in L)*1000
print(f"batch {sys.argv[2]:>3} conc {sys.argv[3]} slots {L[0]['slots']:4d} seqs {L[0]['sequences']:4d} step {m('step_s'):6.2f} train {m('train_s'):6.2f} sync {m('sync_s'):5.2f} gc {m('gc_s'):5.2f} ledger {m('ledger_s'):5.2f} store {m('store_s'):5.2f} wait {m('wait_s'):6.2f} tokens {st.mean(l['trained_tokens'] for l in L):.0f}", flush=True)
PY
done
