// ATS inverse-transform sampling on the CPU (reference: tokred/reference/ats.py).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <bit>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "../common.h"
#include "cpu_math.h"

namespace tokred::cpu {
namespace {

// Images whose CDFs are summed together: each sum runs in token order (as the reference's cumsum), one chain of
// dependent additions per image, and four interleaved chains keep the adder busy.
constexpr int64_t kGroup = 4;

// A token's mass: its score clamped at 0, or 0 if it is masked (valid = 0). In integer operations, which GCC
// vectorises (under -ftrapping-math it does not turn a floating-point comparison into a select): a set sign bit
// clears the score.
template <typename T>
T clamped_mass(T score, uint8_t valid) {
  using Bits = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  const Bits bits = std::bit_cast<Bits>(score);
  return std::bit_cast<T>(bits & ~(bits >> (8 * sizeof(Bits) - 1)) & -static_cast<Bits>(valid));
}

// The CDFs rows[kGroup, N] of `size` <= kGroup images scores[size, N] (rows beyond `size` hold stale values, summed
// and ignored): each clamped mass divided by its image's total, then summed in token order. A masked token adds 0,
// so its CDF value is that of the valid token before it.
template <typename T>
void cdf_rows(const T* __restrict scores, const uint8_t* __restrict mask, int64_t size, int64_t n,
              double* __restrict rows) {
  for (int64_t b = 0; b < size; ++b) {
    double* row = rows + b * n;
    for (int64_t j = 0; j < n; ++j) row[j] = static_cast<double>(clamped_mass(scores[b * n + j], mask[b * n + j]));
    const double norm = lane_sum(row, n) + 1e-6;
    for (int64_t j = 0; j < n; ++j) row[j] /= norm;
  }
  double running[kGroup] = {};
  for (int64_t j = 0; j < n; ++j)
    for (int64_t b = 0; b < kGroup; ++b) {
      running[b] += rows[b * n + j];
      rows[b * n + j] = running[b];
    }
}

// The sweep compares CDF values by their bit patterns, which order non-negative doubles as their values, in integer
// instructions (a floating-point comparison branches on NaN too). A masked token's key, -inf's, is below every
// quantile; the key one past the last token, +inf's, above.
constexpr int64_t kMaskedKey = std::bit_cast<int64_t>(-std::numeric_limits<double>::infinity());
constexpr int64_t kEndKey = std::bit_cast<int64_t>(std::numeric_limits<double>::infinity());

// One image's sample from its CDF cdf[N]: one sweep over the ascending quantiles q[K]. key[N + 1] is scratch.
void sample(const double* __restrict cdf, const uint8_t* __restrict mask, int64_t n, const double* __restrict q,
            int64_t k, bool nearest, int64_t* __restrict key, int64_t* __restrict ids, bool* __restrict kept,
            int64_t* __restrict count) {
  for (int64_t j = 0; j < n; ++j) key[j] = mask[j] ? std::bit_cast<int64_t>(cdf[j]) : kMaskedKey;
  key[n] = kEndKey;
  int64_t last_valid = n - 1;
  while (last_valid >= 0 && !mask[last_valid]) --last_valid;
  int64_t used = 0;
  if (last_valid >= 0) {
    int64_t hi = 0;             // first valid token whose CDF reaches q (n when none does)
    int64_t lo = -1;            // the valid token before hi
    int64_t lo_key = -1;        // its key (no CDF value has it)
    int64_t lo_run_start = -1;  // first valid token with lo's CDF value (argmin's first index on ties)
    int64_t last_pick = -1;
    for (int64_t i = 0; i < k; ++i) {
      for (const int64_t q_key = std::bit_cast<int64_t>(q[i]); key[hi] < q_key; ++hi) {
        if (key[hi] == kMaskedKey) continue;
        lo_run_start = key[hi] != lo_key ? hi : lo_run_start;
        lo_key = key[hi];
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
        pick = (q[i] - cdf[lo] <= cdf[hi] - q[i]) ? lo_run_start : hi;
      }
      if (pick != last_pick) ids[used++] = last_pick = pick;
    }
  }
  for (int64_t i = 0; i < k; ++i) {
    kept[i] = i < used;
    ids[i] = i < used ? ids[i] : -1;
  }
  *count = used;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ats_sample_cpu(const at::Tensor& scores_in, const at::Tensor& mask_in,
                                                              int64_t num_samples, c10::string_view rule) {
  check_ats_args(scores_in, mask_in, num_samples);
  const bool nearest = ats_nearest(rule);
  // float16 and bfloat16 scores are exact in float; the CDF is float64 either way
  const auto scores = (scores_in.scalar_type() == at::kDouble ? scores_in : scores_in.to(at::kFloat)).contiguous();
  const auto mask = mask_in.contiguous();
  const int64_t b = scores.size(0), n = scores.size(1), k = num_samples;
  auto ids = at::empty({b, k}, scores.options().dtype(at::kLong));
  auto kept = at::empty({b, k}, scores.options().dtype(at::kBool));
  auto counts = at::empty({b}, scores.options().dtype(at::kLong));
  // the study's quantile grid q_i = (2i + 1) / (2 (K + 1)), computed as the reference computes it
  std::vector<double> q(k);
  for (int64_t i = 0; i < k; ++i) q[i] = static_cast<double>(2 * i + 1) / static_cast<double>(2 * (k + 1));
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "ats_sample_cpu", [&] {
    const auto* s = scores.const_data_ptr<scalar_t>();
    const auto* m = reinterpret_cast<const uint8_t*>(mask.const_data_ptr<bool>());
    auto* out_ids = ids.mutable_data_ptr<int64_t>();
    auto* out_kept = kept.mutable_data_ptr<bool>();
    auto* out_counts = counts.mutable_data_ptr<int64_t>();
    at::parallel_for(0, b, 16, [&](int64_t begin, int64_t end) {
      std::vector<double> rows(kGroup * n, 0.0);
      std::vector<int64_t> key(n + 1);
      for (int64_t first = begin; first < end; first += kGroup) {
        const int64_t size = std::min(kGroup, end - first);
        cdf_rows(s + first * n, m + first * n, size, n, rows.data());
        for (int64_t i = first; i < first + size; ++i)
          sample(rows.data() + (i - first) * n, m + i * n, n, q.data(), k, nearest, key.data(), out_ids + i * k,
                 out_kept + i * k, out_counts + i);
      }
    });
  });
  return {ids, kept, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(tokred, CPU, m) { m.impl("ats_sample", &ats_sample_cpu); }

}  // namespace tokred::cpu
