#!/usr/bin/env bash
# Pruning on the default corpus (issue #26; README "Pruning"): validation loss of a trained gpt-tiny
# before and after pruning (depth, width, hidden size), after a short recovery fine-tune from the pruned weights
# (training.init_from), and of the same shape trained from scratch for the same tokens.
#   WORK=/tmp/prune_bench bench/bench_prune.sh   # WORK holds base/ (a gpt-tiny run dir, seq 128) and
#                                                # data/stdlib/ (its .bin/.idx and tokenizer, as recorded)
set -euo pipefail
WT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-python}
STEPS=${STEPS:-50}
cd "$WORK"
export PYTHONPATH=$WT
cat > ds.json <<JSON
{"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
 "optimizer": {"type": "Adam", "params": {"lr": 0.001, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1}},
 "scheduler": {"type": "WarmupStableDecay", "params": {"warmup_num_steps": 5, "total_num_steps": $STEPS,
               "decay_style": "cosine", "min_lr_ratio": 0.1}},
 "bf16": {"enabled": false}, "zero_optimization": {"stage": 0}}
JSON
loss() { nice -n 5 $PY -m mtds.evaluate --load "$1" --json --no-progress 2>/dev/null | $PY -c "import json,sys; print(round(json.load(sys.stdin)['loss'], 4))"; }
train() {  # run dir, then [model] flags and --training.init_from
  local out=$1; shift
  rm -rf "$out"
  nice -n 5 $PY "$WT/mtds/pretrain.py" --deepspeed_config ds.json --run-dir "$out" --model.preset=gpt-tiny \
      --data.paths data/stdlib/stdlib_text_document --data.tokenizer_model data/stdlib/tokenizer.model \
      --data.seq_length=128 --data.split=969,30,1 --training.train_iters=$STEPS --training.eval_interval=$STEPS \
      --training.eval_iters=10 --training.progress_bar=false "$@" > "$out.log" 2>&1
  grep "^validation at iter $STEPS" "$out.log" | sed 's/.*| loss \([0-9.]*\).*/\1/'
}
echo "base: $(loss base)"
rm -rf depth width
nice -n 5 $PY -m mtds.prune --load base --out depth --num-layers 2 2>&1 | grep '^pruned'
nice -n 5 $PY -m mtds.prune --load base --out width --ffn-hidden-size 352 --num-attention-heads 2 2>&1 | grep '^pruned'
DEPTH=(--model.num_layers=2)
WIDTH=(--model.ffn_hidden_size=352 --model.num_attention_heads=2 --model.kv_channels=64)
echo "depth 4->2 pruned: $(loss depth)"
echo "width ffn 704->352, heads 4->2 pruned: $(loss width)"
echo "depth, fine-tuned $STEPS steps from the pruned weights: $(train depth_ft "${DEPTH[@]}" --training.init_from=depth)"
echo "depth, from scratch $STEPS steps: $(train depth_scratch "${DEPTH[@]}")"
echo "width, fine-tuned $STEPS steps from the pruned weights: $(train width_ft "${WIDTH[@]}" --training.init_from=width)"
echo "width, from scratch $STEPS steps: $(train width_scratch "${WIDTH[@]}")"
# Recovery by distillation from the unpruned model (training.teacher, mtds/train/distill.py): the same
# steps from the same pruned weights, the parent's logits as the target (alpha 1, T 1).
echo "depth, distilled $STEPS steps from the pruned weights (teacher: base): $(train depth_kd "${DEPTH[@]}" --training.init_from=depth --training.teacher=base)"
echo "width, distilled $STEPS steps from the pruned weights (teacher: base): $(train width_kd "${WIDTH[@]}" --training.init_from=width --training.teacher=base)"
# Embedding channels (--hidden-size): 256 -> 192 everywhere on the residual stream; the FFN (704) and the head
# dimension (64) stay, so the recovery and scratch runs pin them.
rm -rf hidden
nice -n 5 $PY -m mtds.prune --load base --out hidden --hidden-size 192 2>&1 | grep '^pruned'
HIDDEN=(--model.hidden_size=192 --model.ffn_hidden_size=704 --model.kv_channels=64)
echo "hidden 256->192 pruned: $(loss hidden)"
echo "hidden, fine-tuned $STEPS steps from the pruned weights: $(train hidden_ft "${HIDDEN[@]}" --training.init_from=hidden)"
echo "hidden, from scratch $STEPS steps: $(train hidden_scratch "${HIDDEN[@]}")"
