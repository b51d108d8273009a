// Branch-free tanh for the CPU epilogues, written so the compiler vectorizes it
// (the loops that call it are cloned per instruction set with target_clones).
//
// From one evaluation of expm1(r), r = y - k ln2 with y = -2|x| and |r| <= ln2/2 (a
// Taylor polynomial whose truncation error is below the evaluation's rounding), it forms
// expm1(y) (and exp(y) for a double result) and the well-conditioned formula for tanh|x|.
//
// Always evaluated in double: in float the formulas' few roundings left up to 2.2 ulps (0.38
// on average) where torch.tanh is within 0.51 (0.25 on average), and a result summed from many
// cancelling terms (a gradient of hidden size 1, an input gradient of one feature) carried the
// difference. Rounded once from double, a float result is the correctly rounded one but for
// the rare inputs within 2^-35 of a tie (measured: at most 0.500 ulp, 0.245 on average;
// torch.tanh 0.51 / 0.245).
#pragma once

#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace rnn_fused::cpu {

// {1/1!, 1/2!, ..., 1/n!}, computed at compile time.
template <typename scalar_t, int n>
constexpr std::array<scalar_t, n> inverse_factorials() {
  std::array<scalar_t, n> c{};
  double factorial = 1;
  for (int i = 1; i <= n; ++i) {
    factorial *= i;
    c[i - 1] = static_cast<scalar_t>(1.0 / factorial);
  }
  return c;
}

// sum_{i<terms} c[i+1] r^i by Horner's rule, unrolled at compile time.
template <typename scalar_t, int n, std::size_t... i>
inline scalar_t horner(scalar_t r, std::index_sequence<i...>) {
  constexpr auto c = inverse_factorials<scalar_t, n>();
  constexpr std::size_t last = sizeof...(i);
  scalar_t acc = scalar_t(0);
  ((acc = acc * r + c[last - i]), ...);
  return acc;
}

// tanh(x) of a float (kFloatResult) or double x, evaluated in double.
template <bool kFloatResult>
inline double tanh_in_double(double x) {
  constexpr int kTerms = kFloatResult ? 9 : 16;
  using bits_t = int64_t;
  constexpr int mantissa_bits = 52, exponent_bias = 1023;
  constexpr double clamp = 20.0;                       // tanh(20) rounds to 1
  constexpr double ln2_hi = 0.693145751953125;         // few mantissa bits: k*ln2_hi is exact
  constexpr double ln2_lo = 1.42860682030941723212e-6;
  constexpr double inv_ln2 = 1.44269504088896340736;
  const double ax = std::fabs(x);
  const double clamped = ax < clamp ? ax : clamp;  // NaN is restored at the end
  const double y = -2 * clamped;
  // Nearest integer k to y / ln2 by the magic-number trick: adding 1.5 * 2^mantissa
  // rounds to an integer held in the low mantissa bits. Unlike a float-to-int cast it
  // is defined for every input, so the compiler may evaluate it for all lanes.
  constexpr double magic = 1.5 * double(bits_t(1) << mantissa_bits);
  const double shifted = y * inv_ln2 + magic;
  const double kf = shifted - magic;
  const bits_t k = std::bit_cast<bits_t>(shifted) - std::bit_cast<bits_t>(magic);
  const double r = (y - kf * ln2_hi) - kf * ln2_lo;
  // expm1(r) = r + r^2 (1/2! + r (1/3! + ...)), Horner from the highest term: r^(n+1)/(n+1)! below
  // 2^-35 |r| for a float result, 2^-53 |r| for a double one.
  const double poly = horner<double, kTerms + 1>(r, std::make_index_sequence<kTerms>{});
  const double expm1_r = r + r * r * poly;
  // With E = exp(y) = exp(-2|x|) and u = expm1(y) = E - 1, both from 2^k and expm1(r):
  //   |x| small:  tanh|x| = -u / (2 + u)      (u keeps full relative precision near 0)
  //   |x| large:  tanh|x| = 1 - 2E / (1 + E)  (-u/(2+u) would double u's rounding as u -> -1)
  // A float result takes the first alone: as u -> -1 its absolute error (2^-53) is far below a
  // float's rounding of tanh near 1, and one division is the cheaper. A double result switches
  // at tanh = 1/2, which keeps both branches within about 1.5 ulp.
  const double two_k = std::bit_cast<double>(static_cast<bits_t>(k + exponent_bias) << mantissa_bits);
  const double u = two_k * expm1_r + (two_k - 1.0);
  const double t_small = -u / (2.0 + u);
  double t = t_small;
  if constexpr (!kFloatResult) {
    const double e = two_k * expm1_r + two_k;
    const double t_large = 1.0 - (e + e) / (1.0 + e);
    t = clamped < 0.5493061443340548 ? t_small : t_large;  // atanh(1/2)
  }
  return x != x ? x : std::copysign(t, x);
}

template <typename scalar_t>
inline scalar_t tanh_approx(scalar_t x) {
  return static_cast<scalar_t>(tanh_in_double<std::is_same_v<scalar_t, float>>(static_cast<double>(x)));
}

}  // namespace rnn_fused::cpu
