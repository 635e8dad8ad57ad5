#!/usr/bin/env bash
# The README's "Mitigations" comparison: curate=none,verifier,tail over seeds 0-2 on linear regression,
# the Gaussian mixture and the default LM (builtin language, the smoke size), then `collapse compare` of each;
# then the four-arm LM comparison (curate=none,verifier,tail,watermark, as `lm4`).
#   bash scripts/mitigations.sh outputs/mitigations      # ~1 min for linreg + GMM, ~10 min for the LM (2 cores)
# A sweep folder that exists is compared, not run again (delete it to run anew). The compare reports
# (tables, metrics.csv, report.html, one PNG per metric) go to <root>/<family>_compare/; the README's
# figures are copied from there into docs/img/.
set -u
root=${1:-outputs/mitigations}
images=$(dirname "$0")/../docs/img
declare -A metrics=([linreg]=param_error,test_mse,tail_coverage
                    [gmm]=nll_test,tail_coverage,component_std,l2_to_truth
                    [lm]=ppl_test,kl_truth,tail_coverage)
for family in linreg gmm lm; do
  sweep=$root/$family
  if [ ! -d "$sweep" ]; then
    # Exit 2 where runs fail (curate=tail on linreg loses rank): compare reports them as failed.
    collapse run -m +experiment=mitigations_$family curate=none,verifier,tail seed=0,1,2 threads=1 \
      hydra.sweep.dir="$sweep" > "$root.$family.log" 2>&1
  fi
  collapse compare "$sweep" --metrics "${metrics[$family]}" --out "${sweep}_compare" | tee "${sweep}_compare.txt"
done
# The one comparison on the default LM (builtin language): all four arms in one sweep, at a size that
# fits a 2-core CPU (~15 min): 250 blocks of 64 tokens, 2 generations. curate=watermark turns the mark on.
sweep=$root/lm4
if [ ! -d "$sweep" ]; then
  collapse run -m curate=none,verifier,tail,watermark seed=0,1,2 generations=2 dataset.train_tokens=16000 \
    dataset.valid_tokens=3200 dataset.test_tokens=8000 threads=1 hydra.sweep.dir="$sweep" > "$root.lm4.log" 2>&1
fi
collapse compare "$sweep" --metrics ppl_test,kl_truth,tail_coverage,watermark_tpr,watermark_fpr,curate_kept_distinct \
  --out "${sweep}_compare" | tee "${sweep}_compare.txt"
cp "$root/lm4_compare/metric_kl_truth.png" "$images/mitigations_lm4_kl_truth.png"
cp "$root/linreg_compare/metric_param_error.png" "$images/mitigations_linreg_param_error.png"
cp "$root/lm_compare/metric_kl_truth.png" "$images/mitigations_lm_kl_truth.png"
