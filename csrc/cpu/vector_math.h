// Branch-free tanh for the CPU epilogues, written so the compiler vectorizes it
// (the loops that call it are cloned per instruction set with target_clones).
//
// tanh|x| = -u / (2 + u) with u = expm1(-2|x|): no cancellation near 0, unlike
// (1 - e)/(1 + e). expm1 uses y = k ln2 + r, |r| <= ln2/2, and a Taylor polynomial
// for expm1(r) whose truncation error is below the type's rounding.
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
  // expm1(y) = 2^k expm1(r) + (2^k - 1); k <= 0 here.
  const scalar_t two_k = std::bit_cast<scalar_t>(static_cast<bits_t>(k + C::exponent_bias) << C::mantissa_bits);
  const scalar_t u = two_k * expm1_r + (two_k - scalar_t(1));
  const scalar_t t = -u / (scalar_t(2) + u);
  return x != x ? x : std::copysign(t, x);
}

}  // namespace rnn_fused::cpu
