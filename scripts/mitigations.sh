#!/usr/bin/env bash
# The README's "Mitigations" comparison: curate=none,verifier,tail over seeds 0-2 on linear regression,
# the Gaussian mixture and the default LM (builtin language, the smoke size), then `collapse compare` of each.
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
cp "$root/linreg_compare/metric_param_error.png" "$images/mitigations_linreg_param_error.png"
cp "$root/lm_compare/metric_kl_truth.png" "$images/mitigations_lm_kl_truth.png"
