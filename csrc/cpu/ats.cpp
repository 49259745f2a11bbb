// ATS inverse-transform sampling on the CPU (reference: tokred/reference/ats.py).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common.h"

namespace tokred::cpu {
namespace {

// One image: CDF of the clamped scores in float64, then one sweep over the ascending quantiles.
template <typename T>
void ats_image(const T* scores, const bool* mask, int64_t n, int64_t k, bool nearest, int64_t* ids, bool* kept,
               int64_t* count) {
  std::vector<double> cdf(n);
  double total = 0;
  for (int64_t j = 0; j < n; ++j) total += mask[j] ? std::max(static_cast<double>(scores[j]), 0.0) : 0.0;
  const double norm = total + 1e-6;
  double running = 0;
  int64_t last_valid = -1;
  for (int64_t j = 0; j < n; ++j) {
    if (mask[j]) {
      running += std::max(static_cast<double>(scores[j]), 0.0) / norm;
      last_valid = j;
    }
    cdf[j] = running;
  }
  int64_t used = 0;
  if (last_valid >= 0) {
    int64_t hi = 0;            // first valid token whose CDF reaches q (n when none does)
    int64_t lo = -1;           // the valid token before hi
    int64_t lo_run_start = -1; // first valid token with lo's CDF value (argmin's first index on ties)
    for (int64_t i = 0; i < k; ++i) {
      const double q = static_cast<double>(2 * i + 1) / static_cast<double>(2 * (k + 1));
      for (; hi < n && (!mask[hi] || cdf[hi] < q); ++hi) {
        if (!mask[hi]) continue;
        if (lo < 0 || cdf[hi] != cdf[lo]) lo_run_start = hi;
        lo = hi;
      }
      int64_t pick;
      if (!nearest) {
        pick = hi < n ? hi : last_valid;
      } else if (hi == n) {
        pick = lo_run_start;
      } else if (lo < 0) {
        pick = hi;
      } else {
        pick = (q - cdf[lo] <= cdf[hi] - q) ? lo_run_start : hi;
      }
      if (used == 0 || ids[used - 1] != pick) ids[used++] = pick;
    }
  }
  for (int64_t i = 0; i < k; ++i) {
    kept[i] = i < used;
    if (i >= used) ids[i] = -1;
  }
  *count = used;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ats_sample_cpu(const at::Tensor& scores_in, const at::Tensor& mask_in,
                                                              int64_t num_samples, c10::string_view rule) {
  check_ats_args(scores_in, mask_in, num_samples);
  const bool nearest = ats_nearest(rule);
  const auto scores = scores_in.contiguous();
  const auto mask = mask_in.contiguous();
  const int64_t b = scores.size(0), n = scores.size(1);
  auto ids = at::empty({b, num_samples}, scores.options().dtype(at::kLong));
  auto kept = at::empty({b, num_samples}, scores.options().dtype(at::kBool));
  auto counts = at::empty({b}, scores.options().dtype(at::kLong));
  TOKRED_DISPATCH_FLOATING(scores.scalar_type(), "ats_sample_cpu", [&] {
    const auto* s = scores.const_data_ptr<scalar_t>();
    const auto* m = mask.const_data_ptr<bool>();
    auto* out_ids = ids.mutable_data_ptr<int64_t>();
    auto* out_kept = kept.mutable_data_ptr<bool>();
    auto* out_counts = counts.mutable_data_ptr<int64_t>();
    at::parallel_for(0, b, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        ats_image(s + i * n, m + i * n, n, num_samples, nearest, out_ids + i * num_samples,
                  out_kept + i * num_samples, out_counts + i);
    });
  });
  return {ids, kept, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(tokred, CPU, m) { m.impl("ats_sample", &ats_sample_cpu); }

}  // namespace tokred::cpu
