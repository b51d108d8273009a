// Branch-free tanh for the CPU epilogues, written so the compiler vectorizes it
// (the loops that call it are cloned per instruction set with target_clones).
//
// From one evaluation of expm1(r), r = y - k ln2 with y = -2|x| and |r| <= ln2/2 (a
// Taylor polynomial whose truncation error is below the type's rounding), it forms
// exp(y) and expm1(y) and picks the well-conditioned formula for tanh|x|.
#pragma once

#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace rnn_fused::cpu {

template <typename scalar_t>
struct TanhConstants;

template <>
struct TanhConstants<float> {
  using bits_t = int32_t;
  static constexpr int terms = 9;        // r^10/10! < 2^-24 * |r| for |r| <= ln2/2
  static constexpr float clamp = 10.0f;  // tanh(10) rounds to 1
  static constexpr int mantissa_bits = 23, exponent_bias = 127;
};

template <>
struct TanhConstants<double> {
  using bits_t = int64_t;
  static constexpr int terms = 16;
  static constexpr double clamp = 20.0;
  static constexpr int mantissa_bits = 52, exponent_bias = 1023;
};

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

template <typename scalar_t>
inline scalar_t tanh_approx(scalar_t x) {
  using C = TanhConstants<scalar_t>;
  using bits_t = typename C::bits_t;
  constexpr scalar_t ln2_hi = scalar_t(0.693145751953125);           // few mantissa bits: k*ln2_hi is exact
  constexpr scalar_t ln2_lo = scalar_t(1.42860682030941723212e-6);
  constexpr scalar_t inv_ln2 = scalar_t(1.44269504088896340736);
  const scalar_t ax = std::fabs(x);
  const scalar_t clamped = ax < C::clamp ? ax : C::clamp;  // NaN is restored at the end
  const scalar_t y = -2 * clamped;
  // Nearest integer k to y / ln2 by the magic-number trick: adding 1.5 * 2^mantissa
  // rounds to an integer held in the low mantissa bits. Unlike a float-to-int cast it
  // is defined for every input, so the compiler may evaluate it for all lanes.
  constexpr scalar_t magic = scalar_t(1.5) * scalar_t(bits_t(1) << C::mantissa_bits);
  const scalar_t shifted = y * inv_ln2 + magic;
  const scalar_t kf = shifted - magic;
  const bits_t k = std::bit_cast<bits_t>(shifted) - std::bit_cast<bits_t>(magic);
  const scalar_t r = (y - kf * ln2_hi) - kf * ln2_lo;
  // expm1(r) = r + r^2 (1/2! + r (1/3! + ...)), Horner from the highest term.
  const scalar_t poly = horner<scalar_t, C::terms + 1>(r, std::make_index_sequence<C::terms>{});
  const scalar_t expm1_r = r + r * r * poly;
  // With E = exp(y) = exp(-2|x|) and u = expm1(y) = E - 1, both from 2^k and expm1(r):
  //   |x| small:  tanh|x| = -u / (2 + u)      (u keeps full relative precision near 0)
  //   |x| large:  tanh|x| = 1 - 2E / (1 + E)  (-u/(2+u) would double u's rounding as u -> -1)
  // The switch at tanh = 1/2 keeps both branches within about 1.5 ulp.
  const scalar_t two_k = std::bit_cast<scalar_t>(static_cast<bits_t>(k + C::exponent_bias) << C::mantissa_bits);
  const scalar_t u = two_k * expm1_r + (two_k - scalar_t(1));
  const scalar_t e = two_k * expm1_r + two_k;
  const scalar_t t_small = -u / (scalar_t(2) + u);
  const scalar_t t_large = scalar_t(1) - (e + e) / (scalar_t(1) + e);
  const scalar_t t = clamped < scalar_t(0.5493061443340548) ? t_small : t_large;  // atanh(1/2)
  return x != x ? x : std::copysign(t, x);
}

}  // namespace rnn_fused::cpu
