// CPU kernels of the NVAE training step, float32, NHWC (channels_last) tensors.
//
// Built and loaded at run time by acdctool/models/nvae_kernels.py, which registers the fake
// (shape) and autograd rules of every op; see its docstring for why they exist.
//
// Every loop is vectorised with GCC/Clang vector extensions (AVX-512, AVX2 or NEON code from the
// same source, per the compiler flags), V = 16 floats per vector.
//
// 1. Depthwise K×K convolution (stride 1, padding K/2, no bias). x, y, dy are [b][h][w][c]; the
//    weight (C, 1, K, K) is repacked to taps[i][j][c]; vectorised along the channels, with a
//    scalar loop for the last C % V channels.
//      forward      y[b,h,w,c]  = sum_ij x[b, h+i-P, w+j-P, c] * taps[i,j,c]
//      grad input   dx          = the forward of dy with the taps flipped in both axes
//      grad weight  gw[i,j,c]   = sum_bhw dy[b,h,w,c] * x[b, h+i-P, w+j-P, c]
//                                 (K·K accumulators per channel block, one pass over the batch;
//                                 one partial sum per thread, added at the end)
//    Out-of-range taps (the zero padding) are skipped, never read.
//
// 2. Training-mode batch norm fused with SiLU, out = silu(gamma * (x - mean) * invstd + beta),
//    batch statistics over (B, H, W). The tensor is a flat array of rows of C floats, processed
//    in blocks of L = lcm(C, V) floats (per-channel parameters tiled to L), so any C vectorises.
//      forward   one pass for the statistics (sums shifted by the first row, accumulated in
//                double), one pass to normalise and activate;
//      backward  one pass for sum(dy) and sum(dy * xhat) (dy = grad * silu'(y), recomputed
//                from x), one pass for dx; nothing but x, mean and invstd is saved.
//
// 3. One latent group of the residual-normal posterior (the NVAE's sampling and KL), per
//    element of the (B, Z, h, w) latent map, from the raw (B, 2Z, h, w) outputs of the prior
//    and posterior heads (first Z channels the location, last Z the log-scale):
//      mu_p, ls_p = 5 tanh(prior / 5)      (both 0 without a prior: the top group's N(0, I))
//      dm, dl     = 5 tanh(post / 5)
//      z          = mu_p + dm + exp(ls_p + dl) * eps
//      kl[b]      = sum_chw 1/2 (dm^2 exp(-2 ls_p) + exp(2 dl) - 2 dl - 1)   (double sums)
//    The backward recomputes everything from the inputs. Each pixel's channels are taken V at
//    a time; the last Z % V of several pixels of a sample share one vector.
//
// 4. 3x3 convolution, stride 1, padding 1, C = 4 or 8 output channels and M * C input channels
//    (oneDNN's channels_last paths run 2-4x below this with so few channels). A vector holds
//    V / C neighbouring pixels of one row in NHWC order, so the output needs no transposition:
//    each input channel is spread over its pixel's lanes by one permute and multiplied by a
//    vector of that channel's weights for every output channel. Input rows are copied with a
//    zero pixel at either end (zero rows above and below the image).
//      forward      y           = sum over (group, tap, channel) of permute(x) * taps
//      grad input   dx          = the forward of dy with the kernel flipped and transposed
//                                 (M = 1; oneDNN's for M > 1)
//      grad weight  gw, gb      = lane partial sums of dy * permute(x), reduced in double
//    Rows of a multiple of V pixels (the model's) take group_forward instead, for the forward
//    and the grad input: lane K c + k (K = V / C) sums the input channels k mod K of output
//    channel c, so K input channels are one broadcast load and one fused multiply-add, without
//    the permutes (1.2-3x faster at 128² and 64², the 3-gram stem the most).
//    Wide kernels for C = 16 to 48 output channels (a multiple of 8) and a multiple of 8 in (the
//    latent groups' heads 8/16/32 -> 40 and the encoder cells' 16 -> 16, 32 -> 32), on bands of
//    rows of one sample copied with zero padding: the output channels lie along the vectors (the
//    last one half used for C = 40), each input value is broadcast once for all of them.
//      forward      C > 16: 8 pixels x C channels of accumulators (oneDNN's for C = 16, faster)
//      grad input   into 8 channels (the 64² head): the convolution of grad with the kernel flipped
//                   and transposed, lane 2 c + k summing the input channels k mod 2 of output c,
//                   so a pair of input channels is one 64-bit broadcast; else oneDNN's (as fast)
//      grad weight  8 input channels of one tap x C of accumulators per band, summed in double
//
// 5. The middle of a decoder cell, out = silu(bn_b(h)), h = dwconv(silu(bn_a(x))), C a multiple
//    of V, processed in bands of rows of one sample whose activation buffer stays in the core's
//    cache (see bn_silu_dwconv_bn_silu below): the first activation is never stored and bn_b's
//    statistics come from the convolution's output rows as they are written.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <numeric>
#include <tuple>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int V = 16;  // floats per vector block
typedef float vec __attribute__((vector_size(V * 4)));
typedef float vecu __attribute__((vector_size(V * 4), aligned(4)));  // unaligned access

typedef float halfu __attribute__((vector_size(V * 2), aligned(4)));  // half a vector, unaligned

inline vec load(const float* p) { return *reinterpret_cast<const vecu*>(p); }
inline void store(float* p, vec v) { *reinterpret_cast<vecu*>(p) = v; }
inline void store_low(float* p, vec v) {  // the first V / 2 lanes
  *reinterpret_cast<halfu*>(p) = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
}
// s in every lane for the inner loops: x - (+0) is x for every x, so the subtraction folds away
// into a single broadcast (0 + x is -0's exception, so splat's vec{} + x costs one more add)
inline vec broadcast(float s) { return s - vec{}; }

// First and one-past-last kernel row i whose input row h + i - P lies inside [0, H).
template <int K>
inline void row_range(int64_t h, int64_t H, int* i0, int* i1) {
  constexpr int P = K / 2;
  *i0 = h < P ? static_cast<int>(P - h) : 0;
  *i1 = h + P >= H ? static_cast<int>(H - h + P) : K;
}

// Output rows [r0, r1) (row = b * H + h) of y = conv(x, taps). WB output pixels share every
// weight load in the interior; the P columns at either edge take the bounds-checked path.
// xrow(b, h) and yrow(b, h) give row h of sample b (W * C floats) of the input and the output,
// so the rows may lie in a tensor or in a buffer of a few rows (the fused batch norm's).
template <int K, int WB, class XRow, class YRow>
void forward_rows(XRow xrow, const float* taps, YRow yrow, int64_t H, int64_t W, int64_t C, int64_t r0,
                  int64_t r1) {
  constexpr int P = K / 2;
  const int64_t CV = C / V * V;
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t b = row / H, h = row % H;
    float* yr = yrow(b, h);
    int i0, i1;
    row_range<K>(h, H, &i0, &i1);
    for (int64_t cb = 0; cb < CV; cb += V) {
      auto edge = [&](int64_t wo) {
        vec acc = {};
        for (int i = i0; i < i1; ++i) {
          const float* xr = xrow(b, h + i - P) + cb;
          for (int j = 0; j < K; ++j) {
            const int64_t wi = wo + j - P;
            if (wi >= 0 && wi < W) acc += load(xr + wi * C) * load(taps + (i * K + j) * C + cb);
          }
        }
        store(yr + wo * C + cb, acc);
      };
      int64_t w = 0;
      for (; w < P && w < W; ++w) edge(w);
      for (; w + WB - 1 + P < W; w += WB) {
        vec acc[WB];
        for (int q = 0; q < WB; ++q) acc[q] = vec{};
        for (int i = i0; i < i1; ++i) {
          const float* xr = xrow(b, h + i - P) + (w - P) * C + cb;
          const float* tr = taps + i * K * C + cb;
#pragma GCC unroll 8
          for (int j = 0; j < K; ++j) {
            const vec t = load(tr + j * C);
#pragma GCC unroll 8
            for (int q = 0; q < WB; ++q) acc[q] += load(xr + (q + j) * C) * t;
          }
        }
        for (int q = 0; q < WB; ++q) store(yr + (w + q) * C + cb, acc[q]);
      }
      for (; w < W; ++w) edge(w);
    }
    for (int64_t c = CV; c < C; ++c) {
      for (int64_t wo = 0; wo < W; ++wo) {
        float acc = 0.f;
        for (int i = i0; i < i1; ++i) {
          const float* xr = xrow(b, h + i - P) + c;
          for (int j = 0; j < K; ++j) {
            const int64_t wi = wo + j - P;
            if (wi >= 0 && wi < W) acc += xr[wi * C] * taps[(i * K + j) * C + c];
          }
        }
        yr[wo * C + c] = acc;
      }
    }
  }
}

// gw[i, j, c] += contributions of the output rows [r0, r1) (rows of x and dy as in forward_rows).
template <int K, class XRow, class DRow>
void grad_weight_rows(XRow xrow, DRow dyrow, float* gw, int64_t H, int64_t W, int64_t C, int64_t r0, int64_t r1) {
  constexpr int P = K / 2;
  const int64_t CV = C / V * V;
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t b = row / H, h = row % H;
    const float* dr = dyrow(b, h);
    int i0, i1;
    row_range<K>(h, H, &i0, &i1);
    for (int64_t cb = 0; cb < CV; cb += V) {
      vec acc[K * K];
      for (int t = 0; t < K * K; ++t) acc[t] = load(gw + t * C + cb);
      auto edge = [&](int64_t w) {
        const vec d = load(dr + w * C + cb);
        for (int i = i0; i < i1; ++i) {
          const float* xr = xrow(b, h + i - P) + cb;
          for (int j = 0; j < K; ++j) {
            const int64_t wi = w + j - P;
            if (wi >= 0 && wi < W) acc[i * K + j] += d * load(xr + wi * C);
          }
        }
      };
      int64_t w = 0;
      for (; w < P && w < W; ++w) edge(w);
      if (i0 == 0 && i1 == K) {
        const float* xrs[K];
        for (int i = 0; i < K; ++i) xrs[i] = xrow(b, h + i - P) + cb;
        for (; w + P < W; ++w) {
          const vec d = load(dr + w * C + cb);
#pragma GCC unroll 8
          for (int i = 0; i < K; ++i)
#pragma GCC unroll 8
            for (int j = 0; j < K; ++j) acc[i * K + j] += d * load(xrs[i] + (w - P + j) * C);
        }
      } else {
        for (; w + P < W; ++w) {
          const vec d = load(dr + w * C + cb);
          for (int i = i0; i < i1; ++i) {
            const float* xr = xrow(b, h + i - P) + (w - P) * C + cb;
#pragma GCC unroll 8
            for (int j = 0; j < K; ++j) acc[i * K + j] += d * load(xr + j * C);
          }
        }
      }
      for (; w < W; ++w) edge(w);
      for (int t = 0; t < K * K; ++t) store(gw + t * C + cb, acc[t]);
    }
    for (int64_t c = CV; c < C; ++c) {
      for (int64_t w = 0; w < W; ++w) {
        const float d = dr[w * C + c];
        for (int i = i0; i < i1; ++i) {
          const float* xr = xrow(b, h + i - P) + c;
          for (int j = 0; j < K; ++j) {
            const int64_t wi = w + j - P;
            if (wi >= 0 && wi < W) gw[(i * K + j) * C + c] += d * xr[wi * C];
          }
        }
      }
    }
  }
}

void check_args(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 4,
              "acdctool::dwconv2d: x must be a 4-D float32 CPU tensor");
  TORCH_CHECK(weight.device().is_cpu() && weight.scalar_type() == at::kFloat && weight.dim() == 4 &&
                  weight.size(0) == x.size(1) && weight.size(1) == 1 && weight.size(2) == weight.size(3) &&
                  (weight.size(2) == 3 || weight.size(2) == 5),
              "acdctool::dwconv2d: weight must be (C, 1, K, K) float32 on the CPU with K 3 or 5");
}

// (C, 1, K, K) -> taps (K, K, C), flipped in both spatial axes for the input gradient.
at::Tensor repack(const at::Tensor& weight, bool flip) {
  at::Tensor t = weight.reshape({weight.size(0), weight.size(2), weight.size(3)});
  if (flip) t = t.flip({1, 2});
  return t.permute({1, 2, 0}).contiguous();
}

at::Tensor run_forward(const at::Tensor& input, const at::Tensor& weight, bool flip) {
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), K = weight.size(2);
  const at::Tensor taps = repack(weight, flip);
  at::Tensor y = at::empty({B, C, H, W}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const float* xp = x.const_data_ptr<float>();
  const float* tp = taps.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  const auto xrow = [&](int64_t b, int64_t h) { return xp + (b * H + h) * W * C; };
  const auto yrow = [&](int64_t b, int64_t h) { return yp + (b * H + h) * W * C; };
  at::parallel_for(0, B * H, 1, [&](int64_t r0, int64_t r1) {
    if (K == 5)
      forward_rows<5, 4>(xrow, tp, yrow, H, W, C, r0, r1);
    else
      forward_rows<3, 4>(xrow, tp, yrow, H, W, C, r0, r1);
  });
  return y;
}

at::Tensor dwconv2d(const at::Tensor& x, const at::Tensor& weight) {
  check_args(x, weight);
  return run_forward(x, weight, false);
}

std::tuple<at::Tensor, at::Tensor> dwconv2d_backward(const at::Tensor& grad, const at::Tensor& input,
                                                     const at::Tensor& weight) {
  check_args(input, weight);
  TORCH_CHECK(grad.sizes() == input.sizes() && grad.scalar_type() == at::kFloat && grad.device().is_cpu(),
              "acdctool::dwconv2d_backward: grad must be float32 on the CPU, shaped like the input");
  const at::Tensor dy = grad.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), K = weight.size(2);
  at::Tensor grad_input = run_forward(dy, weight, true);
  const int threads = at::get_num_threads();
  at::Tensor partial = at::zeros({threads, K, K, C}, x.options().memory_format(at::MemoryFormat::Contiguous));
  const float* xp = x.const_data_ptr<float>();
  const float* dp = dy.const_data_ptr<float>();
  float* pp = partial.mutable_data_ptr<float>();
  const auto xrow = [&](int64_t b, int64_t h) { return xp + (b * H + h) * W * C; };
  const auto drow = [&](int64_t b, int64_t h) { return dp + (b * H + h) * W * C; };
  at::parallel_for(0, B * H, 1, [&](int64_t r0, int64_t r1) {
    float* g = pp + at::get_thread_num() * K * K * C;
    if (K == 5)
      grad_weight_rows<5>(xrow, drow, g, H, W, C, r0, r1);
    else
      grad_weight_rows<3>(xrow, drow, g, H, W, C, r0, r1);
  });
  // (K, K, C) -> (C, 1, K, K) in the weight's own memory layout (as a parameter gradient should be)
  at::Tensor grad_weight = at::empty_like(weight);
  grad_weight.copy_(partial.sum(0).permute({2, 0, 1}).unsqueeze(1));
  return {grad_input, grad_weight};
}


// ---------------------------------------------------------------- batch norm + SiLU

typedef int32_t ivec __attribute__((vector_size(V * 4)));

inline vec splat(float v) { return vec{} + v; }

// exp(x) to about 1 ulp (Cephes' expf polynomial); x clamped to the range of normal floats.
inline vec vexp(vec x) {
  const vec hi = splat(88.3f), lo = splat(-87.3f);
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
  const vec magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const vec n = (x * splat(1.44269504088896341f) + magic) - magic;
  vec r = x - n * splat(0.693359375f);
  r = r - n * splat(-2.12194440e-4f);
  vec p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.0f);
  const ivec e = (__builtin_convertvector(n, ivec) + 127) << 23;
  vec scale;
  std::memcpy(&scale, &e, sizeof scale);  // the float with exponent n
  return p * scale;
}

// 1 / d: with AVX-512 the 14-bit estimate and one Newton step (within 2 ulp; these loops are
// bound by arithmetic, not memory), else a division.
inline vec vrecip(vec d) {
#if defined(__AVX512F__)
  const vec r = reinterpret_cast<vec>(_mm512_rcp14_ps(reinterpret_cast<__m512>(d)));
  return r * (splat(2.0f) - d * r);
#else
  return splat(1.0f) / d;
#endif
}

// exp(x) for the sigmoid, x within [-88, 88]: 2^n * e^r, |r| <= ln2 / 2, e^r by its Taylor
// polynomial of degree 6 (remainder < 1.3e-7 relative), 2^n by vscalefps (AVX-512) where the
// exponent is set without integer arithmetic.
inline vec vexp_sig(vec x) {
#if defined(__AVX512F__)
  const __m512 t = reinterpret_cast<__m512>(x * splat(1.44269504088896341f));
  const vec n = reinterpret_cast<vec>(_mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  vec r = x - n * splat(0.693359375f);
  r = r - n * splat(-2.12194440e-4f);
  vec p = splat(1.0f / 720.0f);
  p = p * r + splat(1.0f / 120.0f);
  p = p * r + splat(1.0f / 24.0f);
  p = p * r + splat(1.0f / 6.0f);
  p = p * r + splat(0.5f);
  p = p * r + splat(1.0f);
  p = p * r + splat(1.0f);
  return reinterpret_cast<vec>(_mm512_scalef_ps(reinterpret_cast<__m512>(p), reinterpret_cast<__m512>(n)));
#else
  return vexp(x);
#endif
}

// 1 / (1 + exp(-y)), the argument clamped so that 1 + exp stays finite for vrecip.
inline vec vsigmoid(vec y) {
  const vec hi = splat(88.0f), lo = splat(-88.0f);
  vec m = -y;
  m = m > hi ? hi : m;
  m = m < lo ? lo : m;
  return vrecip(splat(1.0f) + vexp_sig(m));
}

inline float ssigmoid(float y) { return 1.0f / (1.0f + std::exp(-y)); }

// Per-channel double sums of f(j, x) over the flat tensor, with f applied to vectors of the
// L-tiled layout. Threads take whole blocks; the rows after the last whole block are added by
// a scalar loop. F(const float* p, int k, vec* a, vec* b) accumulates vector k of the block at p
// into partial sums a, b; S(float v, int64_t c, double* a, double* b) is the scalar version.
struct Tiling {
  int64_t C, L, K, blocks, tail_start, total;  // K = L / V vectors per block
  Tiling(int64_t rows, int64_t C_) : C(C_) {
    L = std::lcm(C_, static_cast<int64_t>(V));
    K = L / V;
    total = rows * C_;
    blocks = total / L;
    tail_start = blocks * L;
  }
  std::vector<float> tile(const float* per_channel) const {
    std::vector<float> t(L);
    for (int64_t j = 0; j < L; ++j) t[j] = per_channel[j % C];
    return t;
  }
};

template <class VecF, class ScalarF>
void channel_sums(const Tiling& t, VecF vf, ScalarF sf, double* sum_a, double* sum_b) {
  constexpr int64_t FLUSH = 64;  // blocks summed in float before adding to the double totals
  const int threads = at::get_num_threads();
  std::vector<double> part(static_cast<size_t>(threads) * 2 * t.L, 0.0);
  at::parallel_for(0, t.blocks, 1, [&](int64_t b0, int64_t b1) {
    double* pa = part.data() + static_cast<int64_t>(at::get_thread_num()) * 2 * t.L;
    double* pb = pa + t.L;
    std::vector<vec> fa(t.K), fb(t.K);
    for (int64_t start = b0; start < b1; start += FLUSH) {
      const int64_t stop = std::min(b1, start + FLUSH);
      for (int64_t k = 0; k < t.K; ++k) fa[k] = fb[k] = vec{};
      for (int64_t blk = start; blk < stop; ++blk)
        for (int64_t k = 0; k < t.K; ++k) vf(blk * t.L + k * V, k, &fa[k], &fb[k]);
      for (int64_t k = 0; k < t.K; ++k)
        for (int l = 0; l < V; ++l) {
          pa[k * V + l] += fa[k][l];
          pb[k * V + l] += fb[k][l];
        }
    }
  });
  for (int64_t c = 0; c < t.C; ++c) sum_a[c] = sum_b[c] = 0.0;
  for (int th = 0; th < threads; ++th) {
    const double* pa = part.data() + static_cast<int64_t>(th) * 2 * t.L;
    for (int64_t j = 0; j < t.L; ++j) {
      sum_a[j % t.C] += pa[j];
      sum_b[j % t.C] += pa[t.L + j];
    }
  }
  for (int64_t i = t.tail_start; i < t.total; ++i) sf(i, i % t.C, sum_a, sum_b);
}

// Element-wise pass over the flat tensor: vf(offset, k) on whole blocks, sf(i, c) on the tail.
template <class VecF, class ScalarF>
void for_each_block(const Tiling& t, VecF vf, ScalarF sf) {
  at::parallel_for(0, t.blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk)
      for (int64_t k = 0; k < t.K; ++k) vf(blk * t.L + k * V, k);
  });
  for (int64_t i = t.tail_start; i < t.total; ++i) sf(i, i % t.C);
}

void check_bn_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 4 && x.numel() > 0,
              "acdctool::bn_silu: x must be a non-empty 4-D float32 CPU tensor");
  const int64_t C = x.size(1);
  for (const at::Tensor* p : {&weight, &bias})
    TORCH_CHECK(p->device().is_cpu() && p->scalar_type() == at::kFloat && p->dim() == 1 && p->size(0) == C,
                "acdctool::bn_silu: weight and bias must be (C,) float32 CPU tensors");
}

// Batch mean, biased variance and 1 / sqrt(var + eps) of every channel of the NHWC tensor x:
// sums of (x - shift) and its square, shift = the first row (kills cancellation), in double.
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_stats(const at::Tensor& x, double eps) {
  const int64_t C = x.size(1), rows = x.numel() / C;
  const Tiling t(rows, C);
  const float* xp = x.const_data_ptr<float>();
  std::vector<float> shift(xp, xp + C);
  const std::vector<float> shift_t = t.tile(shift.data());
  std::vector<double> s1(C), s2(C);
  channel_sums(
      t,
      [&](int64_t off, int64_t k, vec* a, vec* q) {
        const vec d = load(xp + off) - load(shift_t.data() + k * V);
        *a += d;
        *q += d * d;
      },
      [&](int64_t i, int64_t c, double* a, double* q) {
        const double d = static_cast<double>(xp[i]) - shift[c];
        a[c] += d;
        q[c] += d * d;
      },
      s1.data(), s2.data());
  at::Tensor mean = at::empty({C}, x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor var = at::empty_like(mean), invstd = at::empty_like(mean);
  float* mp = mean.mutable_data_ptr<float>();
  float* vp = var.mutable_data_ptr<float>();
  float* ip = invstd.mutable_data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    const double m = s1[c] / rows;
    const double v = std::max(s2[c] / rows - m * m, 0.0);
    mp[c] = static_cast<float>(shift[c] + m);
    vp[c] = static_cast<float>(v);
    ip[c] = static_cast<float>(1.0 / std::sqrt(v + eps));
  }
  return {mean, invstd, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_silu(const at::Tensor& input, const at::Tensor& weight,
                                                                   const at::Tensor& bias, double eps) {
  check_bn_args(input, weight, bias);
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t C = x.size(1), rows = x.numel() / C;
  const Tiling t(rows, C);
  const float* xp = x.const_data_ptr<float>();
  const at::Tensor w = weight.contiguous(), b = bias.contiguous();
  auto [mean, invstd, var] = batch_stats(x, eps);
  const float* mp = mean.const_data_ptr<float>();
  const float* ip = invstd.const_data_ptr<float>();

  // out = silu((x - mean) * (gamma * invstd) + beta)
  std::vector<float> scale(C);
  const float* wp = w.const_data_ptr<float>();
  const float* bp = b.const_data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) scale[c] = wp[c] * ip[c];
  const std::vector<float> mean_t = t.tile(mp), scale_t = t.tile(scale.data()), beta_t = t.tile(bp);
  at::Tensor out = at::empty_like(x, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  float* op = out.mutable_data_ptr<float>();
  for_each_block(
      t,
      [&](int64_t off, int64_t k) {
        const vec y = (load(xp + off) - load(mean_t.data() + k * V)) * load(scale_t.data() + k * V) +
                      load(beta_t.data() + k * V);
        store(op + off, y * vsigmoid(y));
      },
      [&](int64_t i, int64_t c) {
        const float y = (xp[i] - mp[c]) * scale[c] + bp[c];
        op[i] = y * ssigmoid(y);
      });
  return {out, mean, invstd, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_silu_backward(const at::Tensor& grad, const at::Tensor& input,
                                                                const at::Tensor& weight, const at::Tensor& bias,
                                                                const at::Tensor& mean, const at::Tensor& invstd) {
  check_bn_args(input, weight, bias);
  TORCH_CHECK(grad.sizes() == input.sizes() && grad.scalar_type() == at::kFloat && grad.device().is_cpu(),
              "acdctool::bn_silu_backward: grad must be float32 on the CPU, shaped like the input");
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor g = grad.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t C = x.size(1), rows = x.numel() / C;
  const Tiling t(rows, C);
  const float* xp = x.const_data_ptr<float>();
  const float* gp = g.const_data_ptr<float>();
  const at::Tensor w = weight.contiguous(), b = bias.contiguous(), mu = mean.contiguous(), is = invstd.contiguous();
  const float* wp = w.const_data_ptr<float>();
  const float* bp = b.const_data_ptr<float>();
  const float* mp = mu.const_data_ptr<float>();
  const float* ip = is.const_data_ptr<float>();
  const std::vector<float> mean_t = t.tile(mp), inv_t = t.tile(ip), gamma_t = t.tile(wp), beta_t = t.tile(bp);

  // dy = grad * silu'(y), y = xhat * gamma + beta, silu'(y) = s * (1 + y * (1 - s))
  auto dy_vec = [&](int64_t off, int64_t k, vec* xhat) {
    *xhat = (load(xp + off) - load(mean_t.data() + k * V)) * load(inv_t.data() + k * V);
    const vec y = *xhat * load(gamma_t.data() + k * V) + load(beta_t.data() + k * V);
    const vec s = vsigmoid(y);
    return load(gp + off) * s * (splat(1.0f) + y * (splat(1.0f) - s));
  };
  auto dy_scalar = [&](int64_t i, int64_t c, float* xhat) {
    *xhat = (xp[i] - mp[c]) * ip[c];
    const float y = *xhat * wp[c] + bp[c];
    const float s = ssigmoid(y);
    return gp[i] * s * (1.0f + y * (1.0f - s));
  };
  std::vector<double> sum_dy(C), sum_dy_xhat(C);
  channel_sums(
      t,
      [&](int64_t off, int64_t k, vec* a, vec* q) {
        vec xhat;
        const vec dy = dy_vec(off, k, &xhat);
        *a += dy;
        *q += dy * xhat;
      },
      [&](int64_t i, int64_t c, double* a, double* q) {
        float xhat;
        const float dy = dy_scalar(i, c, &xhat);
        a[c] += dy;
        q[c] += static_cast<double>(dy) * xhat;
      },
      sum_dy.data(), sum_dy_xhat.data());

  at::Tensor grad_weight = at::empty_like(w), grad_bias = at::empty_like(b);
  float* gwp = grad_weight.mutable_data_ptr<float>();
  float* gbp = grad_bias.mutable_data_ptr<float>();
  std::vector<float> k1(C), m1(C), m2(C);
  for (int64_t c = 0; c < C; ++c) {
    gbp[c] = static_cast<float>(sum_dy[c]);
    gwp[c] = static_cast<float>(sum_dy_xhat[c]);
    k1[c] = wp[c] * ip[c];
    m1[c] = static_cast<float>(sum_dy[c] / rows);
    m2[c] = static_cast<float>(sum_dy_xhat[c] / rows);
  }
  // dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))
  const std::vector<float> k1_t = t.tile(k1.data()), m1_t = t.tile(m1.data()), m2_t = t.tile(m2.data());
  at::Tensor grad_input = at::empty_like(x, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  float* dxp = grad_input.mutable_data_ptr<float>();
  for_each_block(
      t,
      [&](int64_t off, int64_t k) {
        vec xhat;
        const vec dy = dy_vec(off, k, &xhat);
        store(dxp + off, load(k1_t.data() + k * V) *
                             (dy - load(m1_t.data() + k * V) - xhat * load(m2_t.data() + k * V)));
      },
      [&](int64_t i, int64_t c) {
        float xhat;
        const float dy = dy_scalar(i, c, &xhat);
        dxp[i] = k1[c] * (dy - m1[c] - xhat * m2[c]);
      });
  return {grad_input, grad_weight, grad_bias};
}



// ---------------------------------------------------------------- the decoder cells' middle: BN-SiLU, depthwise, BN-SiLU

// out = silu(bn_b(h)), h = dwconv(silu(bn_a(x))), both batch norms in training mode: the layers
// between the two 1x1 convolutions of every decoder cell, as one op, with the first activation
// never stored. Each task takes a band of rows of one sample, computes the activation of its
// rows and of the P rows on either side into a buffer of at most BAND_BYTES (it stays in the
// core's cache), convolves it into h and adds h's rows to bn_b's statistics (Chan's merge of
// per-row sums, in double); a last pass normalises and activates h. The backward takes bn_b's
// two sums in one pass over (h, grad), then per band: bn_b's dx rows (with the halo) into a
// buffer, the recomputed first activation, the grad-weight terms, the convolution of dx into the
// activation gradient, and from it dyb = grad * silu'(.) with bn_a's two sums, stored where dx
// goes; a last pass turns dyb into dx in place. Passes over the (B, H, W, C) tensors, forward
// and backward: 14 instead of 22 with bn_silu, dwconv2d and bn_silu.
constexpr int64_t BAND_BYTES = 512 * 1024;  // 256 KiB: 0.7% slower step, 128 KiB: 2-3% (2 MiB L2)

struct Bands {
  int64_t rows, count;  // rows per band (the last may have fewer), bands per sample
  Bands(int64_t H, int64_t W, int64_t C) {
    const int64_t fit = std::max<int64_t>(1, BAND_BYTES / (W * C * static_cast<int64_t>(sizeof(float))));
    count = (H + fit - 1) / fit;
    rows = (H + count - 1) / count;
  }
};

// Per-channel parameters of one training-mode batch norm + SiLU, C a multiple of V.
struct BnSilu {
  const float *mean, *invstd, *gamma, *beta;
  std::vector<float> scale;  // gamma * invstd
  BnSilu(const float* m, const float* is, const float* g, const float* b, int64_t C)
      : mean(m), invstd(is), gamma(g), beta(b), scale(C) {
    for (int64_t c = 0; c < C; ++c) scale[c] = g[c] * is[c];
  }
  // silu((x - mean) * scale + beta) at channel block cb (the arithmetic of bn_silu)
  vec forward(vec x, int64_t cb) const {
    const vec y = (x - load(mean + cb)) * load(scale.data() + cb) + load(beta + cb);
    return y * vsigmoid(y);
  }
  // dy = grad * silu'(y), y = xhat * gamma + beta (the arithmetic of bn_silu_backward)
  vec dy(vec x, vec grad, int64_t cb, vec* xhat) const {
    *xhat = (x - load(mean + cb)) * load(invstd + cb);
    const vec y = *xhat * load(gamma + cb) + load(beta + cb);
    const vec s = vsigmoid(y);
    return grad * s * (splat(1.0f) + y * (splat(1.0f) - s));
  }
};

// dx = k1 * (dy - m1 - xhat * m2) of a batch norm, from its sums of dy and dy * xhat over n values.
struct BnGrad {
  std::vector<float> k1, m1, m2;
  BnGrad(const BnSilu& bn, const double* sum_dy, const double* sum_dy_xhat, int64_t n, int64_t C)
      : k1(C), m1(C), m2(C) {
    for (int64_t c = 0; c < C; ++c) {
      k1[c] = bn.gamma[c] * bn.invstd[c];
      m1[c] = static_cast<float>(sum_dy[c] / n);
      m2[c] = static_cast<float>(sum_dy_xhat[c] / n);
    }
  }
  vec dx(vec dy, vec xhat, int64_t cb) const {
    return load(k1.data() + cb) * (dy - load(m1.data() + cb) - xhat * load(m2.data() + cb));
  }
};

// Per-thread double sums of two vectors per channel, float within a row of pixels.
struct ChannelSums {
  int64_t C;
  std::vector<double> part;  // per thread: sums a (C), sums b (C)
  ChannelSums(int threads, int64_t C_) : C(C_), part(static_cast<size_t>(threads) * 2 * C_, 0.0) {}
  void add(int th, const vec* fa, const vec* fb) {
    double* a = part.data() + static_cast<int64_t>(th) * 2 * C;
    for (int64_t k = 0; k < C / V; ++k)
      for (int l = 0; l < V; ++l) {
        a[k * V + l] += fa[k][l];
        a[C + k * V + l] += fb[k][l];
      }
  }
  void total(double* a, double* b) const {
    for (int64_t c = 0; c < C; ++c) a[c] = b[c] = 0.0;
    for (size_t th = 0; th < part.size() / (2 * C); ++th)
      for (int64_t c = 0; c < C; ++c) {
        a[c] += part[th * 2 * C + c];
        b[c] += part[th * 2 * C + C + c];
      }
  }
};

// Count, mean and sum of squared deviations per channel (Chan et al.'s parallel merge).
struct Moments {
  std::vector<double> n, mean, m2;
  explicit Moments(int64_t C) : n(C, 0.0), mean(C, 0.0), m2(C, 0.0) {}
  void merge(int64_t c, double nb, double mb, double m2b) {
    const double na = n[c], total = na + nb, delta = mb - mean[c];
    if (total == 0.0) return;
    mean[c] += delta * nb / total;
    m2[c] += m2b + delta * delta * na * nb / total;
    n[c] = total;
  }
};

// Adds a row of W pixels to the moments: float sums shifted by the row's first pixel.
void add_row_moments(const float* row, int64_t W, int64_t C, Moments* mo, std::vector<vec>* fa, std::vector<vec>* fb) {
  for (int64_t k = 0; k < C / V; ++k) (*fa)[k] = (*fb)[k] = vec{};
  for (int64_t w = 0; w < W; ++w)
    for (int64_t k = 0; k < C / V; ++k) {
      const vec d = load(row + w * C + k * V) - load(row + k * V);
      (*fa)[k] += d;
      (*fb)[k] += d * d;
    }
  for (int64_t k = 0; k < C / V; ++k)
    for (int l = 0; l < V; ++l) {
      const int64_t c = k * V + l;
      const double a = (*fa)[k][l], q = (*fb)[k][l];
      mo->merge(c, static_cast<double>(W), row[c] + a / W, std::max(q - a * a / W, 0.0));
    }
}

void check_middle_args(const at::Tensor& x, const at::Tensor& gamma_a, const at::Tensor& beta_a,
                       const at::Tensor& weight, const at::Tensor& gamma_b, const at::Tensor& beta_b) {
  check_bn_args(x, gamma_a, beta_a);
  check_bn_args(x, gamma_b, beta_b);
  check_args(x, weight);
  TORCH_CHECK(x.size(1) % V == 0, "acdctool::bn_silu_dwconv_bn_silu: the channels must be a multiple of 16");
}

template <class XRow, class YRow>
void dw_rows(int64_t K, XRow xrow, const float* taps, YRow yrow, int64_t H, int64_t W, int64_t C, int64_t r0,
             int64_t r1) {
  if (K == 5)
    forward_rows<5, 4>(xrow, taps, yrow, H, W, C, r0, r1);
  else
    forward_rows<3, 4>(xrow, taps, yrow, H, W, C, r0, r1);
}

// (out, h, mean_a, invstd_a, var_a, mean_b, invstd_b, var_b)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
bn_silu_dwconv_bn_silu(const at::Tensor& input, const at::Tensor& gamma_a, const at::Tensor& beta_a,
                       const at::Tensor& weight, const at::Tensor& gamma_b, const at::Tensor& beta_b, double eps_a,
                       double eps_b) {
  check_middle_args(input, gamma_a, beta_a, weight, gamma_b, beta_b);
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor x = input.contiguous(cl);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), K = weight.size(2), P = K / 2;
  auto [mean_a, invstd_a, var_a] = batch_stats(x, eps_a);
  const at::Tensor ga = gamma_a.contiguous(), ba = beta_a.contiguous(), gb = gamma_b.contiguous();
  const at::Tensor bb = beta_b.contiguous(), taps = repack(weight, false);
  const BnSilu bn_a(mean_a.const_data_ptr<float>(), invstd_a.const_data_ptr<float>(), ga.const_data_ptr<float>(),
                    ba.const_data_ptr<float>(), C);
  at::Tensor h = at::empty({B, C, H, W}, x.options().memory_format(cl));
  const float* xp = x.const_data_ptr<float>();
  const float* tp = taps.const_data_ptr<float>();
  float* hp = h.mutable_data_ptr<float>();
  const Bands bands(H, W, C);
  const int threads = at::get_num_threads();
  std::vector<Moments> moments(threads, Moments(C));
  at::parallel_for(0, B * bands.count, 1, [&](int64_t t0, int64_t t1) {
    Moments* mo = &moments[at::get_thread_num()];
    std::vector<float> buf((bands.rows + 2 * P) * W * C);
    std::vector<vec> fa(C / V), fb(C / V);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t b = task / bands.count, h0 = task % bands.count * bands.rows, h1 = std::min(H, h0 + bands.rows);
      if (h0 >= h1) continue;
      const int64_t lo = std::max<int64_t>(0, h0 - P), hi = std::min(H, h1 + P);
      const float* xb = xp + (b * H + lo) * W * C;
      for (int64_t p = 0; p < (hi - lo) * W; ++p)
        for (int64_t cb = 0; cb < C; cb += V) store(buf.data() + p * C + cb, bn_a.forward(load(xb + p * C + cb), cb));
      const auto arow = [&](int64_t, int64_t r) -> const float* { return buf.data() + (r - lo) * W * C; };
      const auto hrow = [&](int64_t s, int64_t r) { return hp + (s * H + r) * W * C; };
      dw_rows(K, arow, tp, hrow, H, W, C, b * H + h0, b * H + h1);
      for (int64_t r = h0; r < h1; ++r) add_row_moments(hrow(b, r), W, C, mo, &fa, &fb);
    }
  });
  for (int th = 1; th < threads; ++th)
    for (int64_t c = 0; c < C; ++c) moments[0].merge(c, moments[th].n[c], moments[th].mean[c], moments[th].m2[c]);
  const auto opts = x.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor mean_b = at::empty({C}, opts), var_b = at::empty({C}, opts), invstd_b = at::empty({C}, opts);
  for (int64_t c = 0; c < C; ++c) {
    const double v = moments[0].m2[c] / moments[0].n[c];
    mean_b.mutable_data_ptr<float>()[c] = static_cast<float>(moments[0].mean[c]);
    var_b.mutable_data_ptr<float>()[c] = static_cast<float>(v);
    invstd_b.mutable_data_ptr<float>()[c] = static_cast<float>(1.0 / std::sqrt(v + eps_b));
  }
  const BnSilu bn_b(mean_b.const_data_ptr<float>(), invstd_b.const_data_ptr<float>(), gb.const_data_ptr<float>(),
                    bb.const_data_ptr<float>(), C);
  at::Tensor out = at::empty({B, C, H, W}, x.options().memory_format(cl));
  float* op = out.mutable_data_ptr<float>();
  at::parallel_for(0, B * H, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t p = r0 * W; p < r1 * W; ++p)
      for (int64_t cb = 0; cb < C; cb += V) store(op + p * C + cb, bn_b.forward(load(hp + p * C + cb), cb));
  });
  return {out, h, mean_a, invstd_a, var_a, mean_b, invstd_b, var_b};
}

// (grad x, grad gamma_a, grad beta_a, grad weight, grad gamma_b, grad beta_b)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_silu_dwconv_bn_silu_backward(
    const at::Tensor& grad_in, const at::Tensor& input, const at::Tensor& h_in, const at::Tensor& gamma_a,
    const at::Tensor& beta_a, const at::Tensor& weight, const at::Tensor& gamma_b, const at::Tensor& beta_b,
    const at::Tensor& mean_a, const at::Tensor& invstd_a, const at::Tensor& mean_b, const at::Tensor& invstd_b) {
  check_middle_args(input, gamma_a, beta_a, weight, gamma_b, beta_b);
  for (const at::Tensor* t : {&grad_in, &h_in})
    TORCH_CHECK(t->sizes() == input.sizes() && t->scalar_type() == at::kFloat && t->device().is_cpu(),
                "acdctool::bn_silu_dwconv_bn_silu_backward: grad and h must be float32 CPU, shaped like x");
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor x = input.contiguous(cl), hh = h_in.contiguous(cl), grad = grad_in.contiguous(cl);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), K = weight.size(2), P = K / 2;
  const int64_t CB = C / V, n = B * H * W;
  std::vector<at::Tensor> par;  // contiguous per-channel parameters, kept alive
  for (const at::Tensor* t : {&gamma_a, &beta_a, &gamma_b, &beta_b, &mean_a, &invstd_a, &mean_b, &invstd_b})
    par.push_back(t->contiguous());
  auto ptr = [&](int i) { return par[i].const_data_ptr<float>(); };
  const BnSilu bn_a(ptr(4), ptr(5), ptr(0), ptr(1), C), bn_b(ptr(6), ptr(7), ptr(2), ptr(3), C);
  const at::Tensor taps = repack(weight, true);
  const float* xp = x.const_data_ptr<float>();
  const float* hp = hh.const_data_ptr<float>();
  const float* gp = grad.const_data_ptr<float>();
  const float* tp = taps.const_data_ptr<float>();
  const int threads = at::get_num_threads();

  // bn_b's sums of dy and dy * xhat
  ChannelSums sums_b(threads, C);
  at::parallel_for(0, B * H, 1, [&](int64_t r0, int64_t r1) {
    std::vector<vec> fa(CB), fb(CB);
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t k = 0; k < CB; ++k) fa[k] = fb[k] = vec{};
      for (int64_t off = r * W * C; off < (r + 1) * W * C; off += C)
        for (int64_t k = 0; k < CB; ++k) {
          vec xhat;
          const vec d = bn_b.dy(load(hp + off + k * V), load(gp + off + k * V), k * V, &xhat);
          fa[k] += d;
          fb[k] += d * xhat;
        }
      sums_b.add(at::get_thread_num(), fa.data(), fb.data());
    }
  });
  std::vector<double> sdy_b(C), sdyx_b(C);
  sums_b.total(sdy_b.data(), sdyx_b.data());
  const BnGrad grad_b(bn_b, sdy_b.data(), sdyx_b.data(), n, C);

  at::Tensor grad_input = at::empty({B, C, H, W}, x.options().memory_format(cl));
  float* gxp = grad_input.mutable_data_ptr<float>();
  at::Tensor partial = at::zeros({threads, K, K, C}, x.options().memory_format(at::MemoryFormat::Contiguous));
  float* pwp = partial.mutable_data_ptr<float>();
  ChannelSums sums_a(threads, C);
  const Bands bands(H, W, C);
  at::parallel_for(0, B * bands.count, 1, [&](int64_t t0, int64_t t1) {
    const int th = at::get_thread_num();
    float* gw = pwp + th * K * K * C;
    const size_t halo = (bands.rows + 2 * P) * W * C;
    std::vector<float> abuf(halo), dbuf(halo), gbuf(bands.rows * W * C);
    std::vector<vec> fa(CB), fb(CB);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t b = task / bands.count, h0 = task % bands.count * bands.rows, h1 = std::min(H, h0 + bands.rows);
      if (h0 >= h1) continue;
      const int64_t lo = std::max<int64_t>(0, h0 - P), hi = std::min(H, h1 + P);
      const int64_t base = (b * H + lo) * W * C;
      for (int64_t p = 0; p < (hi - lo) * W * C; p += C)
        for (int64_t cb = 0; cb < C; cb += V) {
          store(abuf.data() + p + cb, bn_a.forward(load(xp + base + p + cb), cb));
          vec xhat;
          const vec d = bn_b.dy(load(hp + base + p + cb), load(gp + base + p + cb), cb, &xhat);
          store(dbuf.data() + p + cb, grad_b.dx(d, xhat, cb));
        }
      const auto arow = [&](int64_t, int64_t r) -> const float* { return abuf.data() + (r - lo) * W * C; };
      const auto drow = [&](int64_t, int64_t r) -> const float* { return dbuf.data() + (r - lo) * W * C; };
      const auto grow = [&](int64_t, int64_t r) { return gbuf.data() + (r - h0) * W * C; };
      if (K == 5)
        grad_weight_rows<5>(arow, drow, gw, H, W, C, b * H + h0, b * H + h1);
      else
        grad_weight_rows<3>(arow, drow, gw, H, W, C, b * H + h0, b * H + h1);
      dw_rows(K, drow, tp, grow, H, W, C, b * H + h0, b * H + h1);
      for (int64_t r = h0; r < h1; ++r) {
        const float* xr = xp + (b * H + r) * W * C;
        const float* ar = grow(b, r);
        float* outr = gxp + (b * H + r) * W * C;
        for (int64_t k = 0; k < CB; ++k) fa[k] = fb[k] = vec{};
        for (int64_t off = 0; off < W * C; off += C)
          for (int64_t k = 0; k < CB; ++k) {
            vec xhat;
            const vec d = bn_a.dy(load(xr + off + k * V), load(ar + off + k * V), k * V, &xhat);
            store(outr + off + k * V, d);
            fa[k] += d;
            fb[k] += d * xhat;
          }
        sums_a.add(th, fa.data(), fb.data());
      }
    }
  });
  std::vector<double> sdy_a(C), sdyx_a(C);
  sums_a.total(sdy_a.data(), sdyx_a.data());
  const BnGrad grad_a(bn_a, sdy_a.data(), sdyx_a.data(), n, C);
  at::parallel_for(0, B * H, 1, [&](int64_t r0, int64_t r1) {  // dx from dyb, in place
    for (int64_t off = r0 * W * C; off < r1 * W * C; off += C)
      for (int64_t cb = 0; cb < C; cb += V) {
        const vec xhat = (load(xp + off + cb) - load(bn_a.mean + cb)) * load(bn_a.invstd + cb);
        store(gxp + off + cb, grad_a.dx(load(gxp + off + cb), xhat, cb));
      }
  });
  auto per_channel = [&](const std::vector<double>& s, const at::Tensor& like) {
    at::Tensor t = at::empty({C}, like.options().memory_format(at::MemoryFormat::Contiguous));
    for (int64_t c = 0; c < C; ++c) t.mutable_data_ptr<float>()[c] = static_cast<float>(s[c]);
    return t;
  };
  at::Tensor grad_weight = at::empty_like(weight);
  grad_weight.copy_(partial.sum(0).permute({2, 0, 1}).unsqueeze(1));
  return {grad_input,          per_channel(sdyx_a, gamma_a), per_channel(sdy_a, beta_a),
          grad_weight,         per_channel(sdyx_b, gamma_b), per_channel(sdy_b, beta_b)};
}


// ---------------------------------------------------------------- latent group: sample + KL

// tanh(u) = 1 - 2 / (exp(2u) + 1): exact at 0 and both ends, absolute error ~1e-7 elsewhere.
inline vec vtanh(vec u) { return splat(1.0f) - splat(2.0f) * vrecip(vexp(u + u) + splat(1.0f)); }

constexpr float CLAMP = 5.0f;

// One vector of latent elements: the raw head outputs in, every derived value out.
struct LatentVec {
  vec ta, ts, tm, tl;    // tanh(raw / 5) of the prior's location and log-scale, and of the deltas
  vec dm, dl, edl;       // the clamped deltas, exp(dl) = d_sigma
  vec sigma, e;          // the posterior's sigma, the noise
  vec inv_var_p;         // 1 / sigma_p^2
  vec z() const { return splat(CLAMP) * ta + dm + sigma * e; }
  vec d_var() const { return edl * edl; }  // d_sigma^2
  vec kl() const { return splat(0.5f) * (dm * dm * inv_var_p + d_var() - splat(1.0f)) - dl; }
};

template <bool PRIOR>
inline LatentVec latent_vec(vec rpm, vec rps, vec rqm, vec rqs, vec e) {
  const vec inv = splat(1.0f / CLAMP), k = splat(CLAMP);
  LatentVec v;
  v.tm = vtanh(rqm * inv);
  v.tl = vtanh(rqs * inv);
  v.dm = k * v.tm;
  v.dl = k * v.tl;
  v.edl = vexp(v.dl);
  v.e = e;
  if (PRIOR) {
    v.ta = vtanh(rpm * inv);
    v.ts = vtanh(rps * inv);
    const vec es = vexp(k * v.ts);
    v.sigma = es * v.edl;
    v.inv_var_p = vrecip(es * es);
  } else {
    v.ta = v.ts = vec{};
    v.sigma = v.edl;
    v.inv_var_p = splat(1.0f);
  }
  return v;
}

// Lanes of one vector: either V channels of one pixel, or the last T = Z % V channels of up to
// V / T consecutive pixels of one sample (so a Z of 20 takes 1.25 vectors a pixel, not 2).
struct Lanes {
  int64_t pix0, c0, width, count;  // first pixel, first channel, channels per pixel, pixels
};

template <class F>
inline void for_each_lanes(int64_t p_begin, int64_t p_end, int64_t Z, F f) {
  const int64_t full = Z / V * V, tail = Z - full;
  for (int64_t pix = p_begin; pix < p_end; ++pix)
    for (int64_t c0 = 0; c0 < full; c0 += V) f(Lanes{pix, c0, V, 1});
  if (tail) {
    const int64_t group = V / tail;
    for (int64_t pix = p_begin; pix < p_end; pix += group) f(Lanes{pix, full, tail, std::min(group, p_end - pix)});
  }
}

// Gathers channel-chunk lanes of a (pixels, stride) array at column offset `col`; zero past the end.
inline vec gather(const float* base, int64_t stride, int64_t col, const Lanes& l) {
  if (l.count == 1 && l.width == V) return load(base + l.pix0 * stride + col + l.c0);
  vec v{};
  for (int64_t q = 0; q < l.count; ++q)
    for (int64_t k = 0; k < l.width; ++k) v[q * l.width + k] = base[(l.pix0 + q) * stride + col + l.c0 + k];
  return v;
}

inline void scatter(float* base, int64_t stride, int64_t col, const Lanes& l, vec v) {
  if (l.count == 1 && l.width == V) return store(base + l.pix0 * stride + col + l.c0, v);
  for (int64_t q = 0; q < l.count; ++q)
    for (int64_t k = 0; k < l.width; ++k) base[(l.pix0 + q) * stride + col + l.c0 + k] = v[q * l.width + k];
}

inline vec lane_mask(const Lanes& l) {
  vec m{};
  for (int64_t i = 0; i < l.count * l.width; ++i) m[i] = 1.0f;
  return m;
}

struct LatentArgs {
  const float* prior;  // (B, h, w, 2Z) or nullptr
  const float* post;   // (B, h, w, 2Z)
  const float* eps;    // (B, h, w, Z)
  int64_t B, P, Z;     // P = h * w pixels per sample
};

template <bool PRIOR>
inline LatentVec latent_at(const LatentArgs& g, const Lanes& l) {
  const int64_t Z = g.Z;
  const vec rpm = PRIOR ? gather(g.prior, 2 * Z, 0, l) : vec{};
  const vec rps = PRIOR ? gather(g.prior, 2 * Z, Z, l) : vec{};
  return latent_vec<PRIOR>(rpm, rps, gather(g.post, 2 * Z, 0, l), gather(g.post, 2 * Z, Z, l),
                           gather(g.eps, Z, 0, l));
}

template <bool PRIOR>
void latent_forward(const LatentArgs& g, float* zp, float* klp) {
  at::parallel_for(0, g.B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      double total = 0.0;
      for (int64_t start = 0; start < g.P; start += 64) {  // 64 pixels summed in float, then in double
        vec acc{};
        for_each_lanes(b * g.P + start, b * g.P + std::min(g.P, start + 64), g.Z, [&](const Lanes& l) {
          const LatentVec v = latent_at<PRIOR>(g, l);
          scatter(zp, g.Z, 0, l, v.z());
          const vec kl = v.kl();
          acc += (l.count == 1 && l.width == V) ? kl : kl * lane_mask(l);
        });
        for (int l = 0; l < V; ++l) total += acc[l];
      }
      klp[b] = static_cast<float>(total);
    }
  });
}

template <bool PRIOR>
void latent_backward(const LatentArgs& g, const float* gzp, const float* gkp, float* gq, float* gp) {
  at::parallel_for(0, g.B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const vec dk = splat(gkp[b]), one = splat(1.0f);
      for_each_lanes(b * g.P, (b + 1) * g.P, g.Z, [&](const Lanes& l) {
        const LatentVec v = latent_at<PRIOR>(g, l);
        const vec dz = gather(gzp, g.Z, 0, l);
        const vec se = v.sigma * v.e * dz;  // dz times dz/d(ls_p) = dz/d(dl) = sigma * eps
        const vec w = v.dm * v.inv_var_p;   // dm / sigma_p^2
        scatter(gq, 2 * g.Z, 0, l, (dz + dk * w) * (one - v.tm * v.tm));
        scatter(gq, 2 * g.Z, g.Z, l, (se + dk * (v.d_var() - one)) * (one - v.tl * v.tl));
        if (PRIOR) {
          scatter(gp, 2 * g.Z, 0, l, dz * (one - v.ta * v.ta));
          scatter(gp, 2 * g.Z, g.Z, l, (se - dk * v.dm * w) * (one - v.ts * v.ts));
        }
      });
    }
  });
}

void check_latent_args(const c10::optional<at::Tensor>& prior, const at::Tensor& post, const at::Tensor& eps) {
  TORCH_CHECK(post.device().is_cpu() && post.scalar_type() == at::kFloat && post.dim() == 4 && post.size(1) % 2 == 0,
              "acdctool::latent_sample_kl: post must be a (B, 2Z, h, w) float32 CPU tensor");
  TORCH_CHECK(eps.device().is_cpu() && eps.scalar_type() == at::kFloat && eps.dim() == 4 &&
                  eps.size(0) == post.size(0) && 2 * eps.size(1) == post.size(1) && eps.size(2) == post.size(2) &&
                  eps.size(3) == post.size(3),
              "acdctool::latent_sample_kl: eps must be a (B, Z, h, w) float32 CPU tensor");
  if (prior.has_value())
    TORCH_CHECK(prior->device().is_cpu() && prior->scalar_type() == at::kFloat && prior->sizes() == post.sizes(),
                "acdctool::latent_sample_kl: prior must be float32 on the CPU, shaped like post");
}

at::Tensor cl(const at::Tensor& t) { return t.contiguous(at::MemoryFormat::ChannelsLast); }

std::tuple<at::Tensor, at::Tensor> latent_sample_kl(const c10::optional<at::Tensor>& prior_in,
                                                    const at::Tensor& post_in, const at::Tensor& eps_in) {
  check_latent_args(prior_in, post_in, eps_in);
  const at::Tensor post = cl(post_in), eps = cl(eps_in);
  const at::Tensor prior = prior_in.has_value() ? cl(*prior_in) : at::Tensor();
  const LatentArgs g{prior.defined() ? prior.const_data_ptr<float>() : nullptr, post.const_data_ptr<float>(),
                     eps.const_data_ptr<float>(), eps.size(0), eps.size(2) * eps.size(3), eps.size(1)};
  at::Tensor z = at::empty(eps.sizes(), eps.options().memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor kl = at::empty({g.B}, eps.options().memory_format(at::MemoryFormat::Contiguous));
  if (g.prior)
    latent_forward<true>(g, z.mutable_data_ptr<float>(), kl.mutable_data_ptr<float>());
  else
    latent_forward<false>(g, z.mutable_data_ptr<float>(), kl.mutable_data_ptr<float>());
  return {z, kl};
}

std::tuple<at::Tensor, at::Tensor> latent_sample_kl_backward(const at::Tensor& grad_z, const at::Tensor& grad_kl,
                                                             const c10::optional<at::Tensor>& prior_in,
                                                             const at::Tensor& post_in, const at::Tensor& eps_in) {
  check_latent_args(prior_in, post_in, eps_in);
  TORCH_CHECK(grad_z.sizes() == eps_in.sizes() && grad_z.scalar_type() == at::kFloat && grad_z.device().is_cpu() &&
                  grad_kl.dim() == 1 && grad_kl.size(0) == eps_in.size(0) && grad_kl.scalar_type() == at::kFloat,
              "acdctool::latent_sample_kl_backward: grad_z must be shaped like eps and grad_kl (B,), float32");
  const at::Tensor post = cl(post_in), eps = cl(eps_in), gz = cl(grad_z), gk = grad_kl.contiguous();
  const at::Tensor prior = prior_in.has_value() ? cl(*prior_in) : at::Tensor();
  const LatentArgs g{prior.defined() ? prior.const_data_ptr<float>() : nullptr, post.const_data_ptr<float>(),
                     eps.const_data_ptr<float>(), eps.size(0), eps.size(2) * eps.size(3), eps.size(1)};
  const auto opts = post.options().memory_format(at::MemoryFormat::ChannelsLast);
  at::Tensor grad_post = at::empty(post.sizes(), opts);
  at::Tensor grad_prior = prior.defined() ? at::empty(post.sizes(), opts) : at::empty({0}, post.options());
  const float* gzp = gz.const_data_ptr<float>();
  const float* gkp = gk.const_data_ptr<float>();
  if (g.prior)
    latent_backward<true>(g, gzp, gkp, grad_post.mutable_data_ptr<float>(), grad_prior.mutable_data_ptr<float>());
  else
    latent_backward<false>(g, gzp, gkp, grad_post.mutable_data_ptr<float>(), nullptr);
  return {grad_prior, grad_post};
}

// ---------------------------------------------------------------- 3x3 convolution, 4 or 8 channels

// Lane l of the result = v[idx[l]].
inline vec permute(vec v, ivec idx) {
#if defined(__AVX512F__)
  return reinterpret_cast<vec>(_mm512_permutexvar_ps(reinterpret_cast<__m512i>(idx), reinterpret_cast<__m512>(v)));
#else
  vec r;
  for (int l = 0; l < V; ++l) r[l] = v[idx[l] & (V - 1)];
  return r;
#endif
}

// A vector holds G = V / C pixels of C channels (NHWC order), lane q * C + c. The input has M
// groups of C channels (M = 3 for the 3-gram stem, 12 -> 4), each taken as a C-channel image.
// For every input channel ci of a group, bcast[ci] spreads channel ci of each pixel over that
// pixel's C lanes, and the weight vector of group g, tap (i, j) and channel ci holds
// weight[c, g * C + ci, i, j] in lane q * C + c, so y += permute(x_g, bcast[ci]) * w adds that
// input channel's term to every output channel.
template <int C>
struct ConvPlan {
  ivec bcast[C];
  std::vector<vec> taps;  // [((g * 9 + i * 3 + j) * C + ci]
  ConvPlan(const float* weight, int64_t M) : taps(M * 9 * C) {  // weight (C, M * C, 3, 3) contiguous
    for (int ci = 0; ci < C; ++ci)
      for (int l = 0; l < V; ++l) bcast[ci][l] = l / C * C + ci;
    if (weight)
      for (int64_t g = 0; g < M; ++g)
        for (int t = 0; t < 9; ++t)
          for (int ci = 0; ci < C; ++ci)
            for (int l = 0; l < V; ++l)
              taps[(g * 9 + t) * C + ci][l] = weight[((l % C) * M * C + g * C + ci) * 9 + t];
  }
};

// Input rows h - 1, h, h + 1 of sample b, channels [g * C, g * C + C) of M * C, each with a zero
// pixel at either end (zero rows outside the image), into buf (3 rows of (W + 2) * C floats).
template <int C>
void padded_rows(const float* x, float* buf, int64_t b, int64_t h, int64_t H, int64_t W, int64_t M, int64_t g) {
  const int64_t n = (W + 2) * C;
  for (int i = 0; i < 3; ++i) {
    float* dst = buf + i * n;
    const int64_t hh = h + i - 1;
    if (hh < 0 || hh >= H) {
      std::memset(dst, 0, n * sizeof(float));
      continue;
    }
    std::memset(dst, 0, C * sizeof(float));
    const float* src = x + (b * H + hh) * W * M * C + g * C;
    if (M == 1)
      std::memcpy(dst + C, src, W * C * sizeof(float));
    else
      for (int64_t w = 0; w < W; ++w) std::memcpy(dst + (w + 1) * C, src + w * M * C, C * sizeof(float));
    std::memset(dst + (W + 1) * C, 0, C * sizeof(float));
  }
}

// U output vectors from k on: U independent accumulators (one would chain 9 C M dependent adds).
template <int C, int U, bool ONE_GROUP>
inline void conv_vectors(const ConvPlan<C>& plan, const float* buf, int64_t n, int64_t M, int64_t k, vec bv,
                         float* yr) {
  vec acc[U];
  for (int u = 0; u < U; ++u) acc[u] = bv;
  for (int64_t g = 0; g < (ONE_GROUP ? 1 : M); ++g)
#pragma GCC unroll 3
    for (int i = 0; i < 3; ++i)
#pragma GCC unroll 3
      for (int j = 0; j < 3; ++j) {
        vec xv[U];
        for (int u = 0; u < U; ++u) xv[u] = load(buf + (g * 3 + i) * n + k + u * V + j * C);
        const vec* taps = plan.taps.data() + (g * 9 + i * 3 + j) * C;
#pragma GCC unroll 8
        for (int ci = 0; ci < C; ++ci)
          for (int u = 0; u < U; ++u) acc[u] += permute(xv[u], plan.bcast[ci]) * taps[ci];
      }
  for (int u = 0; u < U; ++u) store(yr + k + u * V, acc[u]);
}

// y = conv3x3(x) + bias, M * C channels in, C out, stride 1, padding 1; W a multiple of V / C.
template <int C, int U = 4>
void conv_groups(const float* x, const float* weight, const float* bias, float* y, int64_t B, int64_t H, int64_t W,
                 int64_t M) {
  const ConvPlan<C> plan(weight, M);
  vec bv{};
  if (bias)
    for (int l = 0; l < V; ++l) bv[l] = bias[l % C];
  const int64_t n = (W + 2) * C;
  at::parallel_for(0, B * H, 1, [&](int64_t r0, int64_t r1) {
    std::vector<float> buf(3 * M * n);
    for (int64_t row = r0; row < r1; ++row) {
      for (int64_t g = 0; g < M; ++g) padded_rows<C>(x, buf.data() + g * 3 * n, row / H, row % H, H, W, M, g);
      float* yr = y + row * W * C;
      int64_t k = 0;
      if (M == 1) {
        for (; k + U * V <= W * C; k += U * V) conv_vectors<C, U, true>(plan, buf.data(), n, M, k, bv, yr);
        for (; k < W * C; k += V) conv_vectors<C, 1, true>(plan, buf.data(), n, M, k, bv, yr);
      } else {
        for (; k + U * V <= W * C; k += U * V) conv_vectors<C, U, false>(plan, buf.data(), n, M, k, bv, yr);
        for (; k < W * C; k += V) conv_vectors<C, 1, false>(plan, buf.data(), n, M, k, bv, yr);
      }
    }
  });
}

// Partial sums of grad weight (lane q * C + c of vector (g * 9 + i * 3 + j) * C + ci adds to
// weight[c, g * C + ci, i, j]) and grad bias (lane q * C + c to bias[c]) over output rows [r0, r1).
template <int C>
void conv_grad_weight(const float* x, const float* dy, vec* gw, vec* gb, int64_t H, int64_t W, int64_t M, int64_t r0,
                      int64_t r1) {
  const ConvPlan<C> plan(nullptr, M);  // only its bcast
  const int64_t n = (W + 2) * C;
  std::vector<float> buf(3 * n);
  for (int64_t row = r0; row < r1; ++row) {
    const float* dr = dy + row * W * C;
    vec sb = *gb;
    for (int64_t k = 0; k < W * C; k += V) sb += load(dr + k);
    *gb = sb;
    for (int64_t g = 0; g < M; ++g) {
      padded_rows<C>(x, buf.data(), row / H, row % H, H, W, M, g);
      for (int t = 0; t < 9; ++t) {
        const float* xr = buf.data() + (t / 3) * n + (t % 3) * C;
        vec* out = gw + (g * 9 + t) * C;
        vec acc[2][C];  // two vectors a step: independent chains of adds
        for (int ci = 0; ci < C; ++ci) {
          acc[0][ci] = out[ci];
          acc[1][ci] = vec{};
        }
        int64_t k = 0;
        for (; k + 2 * V <= W * C; k += 2 * V)
          for (int u = 0; u < 2; ++u) {
            const vec d = load(dr + k + u * V), xv = load(xr + k + u * V);
#pragma GCC unroll 8
            for (int ci = 0; ci < C; ++ci) acc[u][ci] += d * permute(xv, plan.bcast[ci]);
          }
        for (; k < W * C; k += V) {
          const vec d = load(dr + k), xv = load(xr + k);
          for (int ci = 0; ci < C; ++ci) acc[0][ci] += d * permute(xv, plan.bcast[ci]);
        }
        for (int ci = 0; ci < C; ++ci) out[ci] = acc[0][ci] + acc[1][ci];
      }
    }
  }
}

// The wide kernels' shapes: 16 to 48 output channels and input channels in multiples of 8, rows
// a multiple of V pixels (the heads of the latent groups, 8/16/32 -> 40, and the encoder cells).
bool conv_wide(int64_t C, int64_t Cin, int64_t W) {
  return C % 8 == 0 && C >= 16 && C <= 48 && Cin % 8 == 0 && W % V == 0;
}

void check_conv_args(const at::Tensor& x, const at::Tensor& weight) {
  const int64_t C = weight.dim() == 4 ? weight.size(0) : 0;
  const bool narrow = C == 4 || C == 8;
  TORCH_CHECK(weight.device().is_cpu() && weight.scalar_type() == at::kFloat && weight.dim() == 4 && C > 0 &&
                  (narrow || C % 8 == 0) && weight.size(1) % (narrow ? C : 8) == 0 && weight.size(2) == 3 &&
                  weight.size(3) == 3,
              "acdctool::conv3x3: weight must be (C, M * C, 3, 3) float32 on the CPU with C 4 or 8, or (C, 8 * M, "
              "3, 3) with C 16 to 48, a multiple of 8");
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 4 && x.size(1) == weight.size(1) &&
                  (narrow ? x.size(3) * C % V == 0 : conv_wide(C, x.size(1), x.size(3))),
              "acdctool::conv3x3: x must be a (B, Cin, H, W) float32 CPU tensor with W * C a multiple of 16 (C 4 or "
              "8) or W a multiple of 16 (C 16 to 48)");
}

// (below: the grouped-broadcast kernel, for rows of whole vectors)
at::Tensor group_run(const at::Tensor& input, const at::Tensor& weight, const float* bias);
at::Tensor conv_run(const at::Tensor& input, const at::Tensor& weight, const float* bias) {
  if (input.size(3) % V == 0) return group_run(input, weight.contiguous(), bias);  // rows of whole vectors
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast), w = weight.contiguous();
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3), C = w.size(0), M = w.size(1) / C;
  at::Tensor y = at::empty({B, C, H, W}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const float* xp = x.const_data_ptr<float>();
  const float* wp = w.const_data_ptr<float>();
  if (C == 4)
    conv_groups<4>(xp, wp, bias, y.mutable_data_ptr<float>(), B, H, W, M);
  else
    conv_groups<8>(xp, wp, bias, y.mutable_data_ptr<float>(), B, H, W, M);
  return y;
}

// Rows [h0 - 1, h0 + R + 1) of sample b (Ci channels), each with a zero pixel at either end,
// zero rows outside the image, into buf ((R + 2) rows of (W + 2) * Ci floats).
void padded_band(const float* x, float* buf, int64_t b, int64_t h0, int64_t R, int64_t H, int64_t W, int64_t Ci) {
  const int64_t n = (W + 2) * Ci;
  for (int64_t r = 0; r < R + 2; ++r) {
    float* dst = buf + r * n;
    const int64_t hh = h0 + r - 1;
    if (hh < 0 || hh >= H) {
      std::memset(dst, 0, n * sizeof(float));
      continue;
    }
    std::memset(dst, 0, Ci * sizeof(float));
    std::memcpy(dst + Ci, x + (b * H + hh) * W * Ci, W * Ci * sizeof(float));
    std::memset(dst + (W + 1) * Ci, 0, Ci * sizeof(float));
  }
}

// Rows a band of the wide kernels holds: about 256 pixels, so that the band stays in the cache.
int64_t band_rows(int64_t W) { return std::max<int64_t>(1, 256 / W); }

// Wide forward: y = conv3x3(x) + bias with C = 16 to 48 output channels held in NV vectors (the
// last one half used for C = 40), P pixels of a row at a time: P * NV accumulators, and each
// input value is broadcast once for NV fused multiply-adds with the packed weights
// wp[tap][ci][NV * V] (zero past C).
template <int NV, int P>
void wide_forward(const float* x, const float* wp, const float* bias, float* y, int64_t B, int64_t H, int64_t W,
                  int64_t Ci, int64_t C) {
  constexpr int L = NV * V;
  vec bv[NV];
  for (int v = 0; v < NV; ++v)
    for (int l = 0; l < V; ++l) bv[v][l] = bias && v * V + l < C ? bias[v * V + l] : 0.f;
  const int64_t n = (W + 2) * Ci, R = band_rows(W), bands = (H + R - 1) / R;
  const bool full = C % V == 0;
  at::parallel_for(0, B * bands, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> buf((R + 2) * n);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / bands, h0 = t % bands * R, rows = std::min(R, H - h0);
      padded_band(x, buf.data(), b, h0, rows, H, W, Ci);
      for (int64_t r = 0; r < rows; ++r) {
        float* yr = y + (b * H + h0 + r) * W * C;
        for (int64_t w = 0; w < W; w += P) {
          vec acc[P][NV];
          for (int p = 0; p < P; ++p)
            for (int v = 0; v < NV; ++v) acc[p][v] = bv[v];
          for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) {
              const float* xs = buf.data() + (r + i) * n + (w + j) * Ci;
              const float* ws = wp + (i * 3 + j) * Ci * L;
              for (int64_t ci = 0; ci < Ci; ++ci) {
                vec wv[NV];
                for (int v = 0; v < NV; ++v) wv[v] = load(ws + ci * L + v * V);
#pragma GCC unroll 16
                for (int p = 0; p < P; ++p) {
                  const vec xb = broadcast(xs[p * Ci + ci]);
                  for (int v = 0; v < NV; ++v) acc[p][v] += xb * wv[v];
                }
              }
            }
          for (int p = 0; p < P; ++p) {
            float* yp = yr + (w + p) * C;
            for (int v = 0; v < NV - 1; ++v) store(yp + v * V, acc[p][v]);
            if (full)
              store(yp + (NV - 1) * V, acc[p][NV - 1]);
            else
              store_low(yp + (NV - 1) * V, acc[p][NV - 1]);
          }
        }
      }
    }
  });
}

// Wide grad weight and bias over a band: Q = 8 input channels of one tap times NV vectors of
// output channels in registers, one broadcast of x per NV fused multiply-adds with dy; the
// band's float sums are added to the thread's double sums g[tap][ci][NV * V] and g[9 * Ci * L +
// lane] (the bias). Lanes past C (the upper half of the last vector for C = 40) read the next
// pixel's dy and are never used.
template <int NV>
void wide_grad_weight(const float* x, const float* dy, double* g, int64_t H, int64_t W, int64_t Ci, int64_t C,
                      int64_t t0, int64_t t1) {
  constexpr int L = NV * V, Q = 8;
  const int64_t n = (W + 2) * Ci, R = band_rows(W), bands = (H + R - 1) / R;
  std::vector<float> buf((R + 2) * n), dbuf(R * W * C + V);  // V floats of slack for the unused lanes
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t b = t / bands, h0 = t % bands * R, rows = std::min(R, H - h0);
    padded_band(x, buf.data(), b, h0, rows, H, W, Ci);
    std::memcpy(dbuf.data(), dy + (b * H + h0) * W * C, rows * W * C * sizeof(float));
    vec sb[NV] = {};
    for (int64_t p = 0; p < rows * W; ++p)
      for (int v = 0; v < NV; ++v) sb[v] += load(dbuf.data() + p * C + v * V);
    for (int v = 0; v < NV; ++v)
      for (int l = 0; l < V; ++l) g[9 * Ci * L + v * V + l] += sb[v][l];
    for (int tap = 0; tap < 9; ++tap) {
      const int i = tap / 3, j = tap % 3;
      for (int64_t c0 = 0; c0 < Ci; c0 += Q) {
        vec acc[Q][NV] = {};
        for (int64_t r = 0; r < rows; ++r) {
          const float* xs = buf.data() + (r + i) * n + j * Ci + c0;
          const float* ds = dbuf.data() + r * W * C;
          for (int64_t w = 0; w < W; ++w) {
            vec dv[NV];
            for (int v = 0; v < NV; ++v) dv[v] = load(ds + w * C + v * V);
#pragma GCC unroll 8
            for (int q = 0; q < Q; ++q) {
              const vec xb = broadcast(xs[w * Ci + q]);
              for (int v = 0; v < NV; ++v) acc[q][v] += xb * dv[v];
            }
          }
        }
        double* gt = g + (tap * Ci + c0) * L;
        for (int q = 0; q < Q; ++q)
          for (int v = 0; v < NV; ++v)
            for (int l = 0; l < V; ++l) gt[q * L + v * V + l] += acc[q][v][l];
      }
    }
  }
}

typedef double dvec __attribute__((vector_size(V * 4)));
typedef float v4u __attribute__((vector_size(16), aligned(4)));  // a quarter vector, unaligned

// K adjacent floats at p repeated over the lanes: one 64-bit (K = 2) or 128-bit (K = 4) broadcast
// load, no shuffle.
template <int K>
inline vec group_broadcast(const float* p) {
  if constexpr (K == 2) {
    double d;
    std::memcpy(&d, p, sizeof d);
    return reinterpret_cast<vec>(d - dvec{});
  } else {
#if defined(__AVX512F__)
    return reinterpret_cast<vec>(_mm512_broadcast_f32x4(_mm_loadu_ps(p)));
#else
    vec v;
    for (int l = 0; l < V; ++l) v[l] = p[l % 4];
    return v;
#endif
  }
}

// y = conv3x3(x) (+ bias) for C = 8 or 4 output channels and a multiple of K = V / C input
// channels (the grad input of the heads 8 -> C at 64², ...): lane K * c + k of the accumulators
// sums the input channels ci = k mod K of output channel c, with the weights packed as
// wp[tap][ci / K][K * c + k], so each group of K input channels is one broadcast load and one
// fused multiply-add; the K lanes of every channel are added at the end. P pixels of a row at a
// time (W a multiple of P). CI > 0 fixes Ci at compile time, so that the P pixels' loads are one
// base plus constant offsets (with a run-time Ci the compiler keeps P pointers, spilled).
template <int C, int P, int CI = 0>
void group_forward(const float* x, const float* wp, const float* bias, float* y, int64_t B, int64_t H, int64_t W,
                   int64_t ci_runtime) {
  constexpr int K = V / C;
  const int64_t Ci = CI > 0 ? CI : ci_runtime;
  const int64_t n = (W + 2) * Ci, R = band_rows(W), bands = (H + R - 1) / R;
  vec bv{};
  if (bias)
    for (int l = 0; l < C; ++l) bv[l] = bias[l];
  at::parallel_for(0, B * bands, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> buf((R + 2) * n);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / bands, h0 = t % bands * R, rows = std::min(R, H - h0);
      padded_band(x, buf.data(), b, h0, rows, H, W, Ci);
      for (int64_t r = 0; r < rows; ++r) {
        float* yr = y + (b * H + h0 + r) * W * C;
        for (int64_t w = 0; w < W; w += P) {
          vec acc[P] = {};
          for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) {
              const float* xs = buf.data() + (r + i) * n + (w + j) * Ci;
              const float* ws = wp + (i * 3 + j) * Ci * C;
              for (int64_t ci = 0; ci < Ci; ci += K) {
                const vec wv = load(ws + ci * C);
#pragma GCC unroll 16
                for (int p = 0; p < P; ++p) acc[p] += group_broadcast<K>(xs + p * Ci + ci) * wv;
              }
            }
          for (int p = 0; p < P; ++p) {
            vec a = acc[p] + __builtin_shufflevector(acc[p], acc[p], 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
            if constexpr (K == 4) {
              a += __builtin_shufflevector(a, a, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
              a = __builtin_shufflevector(a, a, 0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12) + bv;
              *reinterpret_cast<v4u*>(yr + (w + p) * C) = __builtin_shufflevector(a, a, 0, 1, 2, 3);
            } else {
              store_low(yr + (w + p) * C,
                        __builtin_shufflevector(a, a, 0, 2, 4, 6, 8, 10, 12, 14, 0, 2, 4, 6, 8, 10, 12, 14) + bv);
            }
          }
        }
      }
    }
  });
}

// group_forward of x with weight (C, Ci, 3, 3), C 8 or 4, Ci a multiple of 16 / C, W a multiple of 16.
at::Tensor group_run(const at::Tensor& input, const at::Tensor& weight, const float* bias) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor x = input.contiguous(cl);
  const int64_t B = x.size(0), Ci = x.size(1), H = x.size(2), W = x.size(3), C = weight.size(0), K = V / C;
  const at::Tensor wp = weight.reshape({C, Ci / K, K, 9}).permute({3, 1, 0, 2}).contiguous();
  at::Tensor y = at::empty({B, C, H, W}, x.options().memory_format(cl));
  const float* xp = x.const_data_ptr<float>();
  const float* wpp = wp.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  if (C == 8 && Ci == 8)
    group_forward<8, 16, 8>(xp, wpp, bias, yp, B, H, W, Ci);
  else if (C == 8 && Ci == 40)
    group_forward<8, 16, 40>(xp, wpp, bias, yp, B, H, W, Ci);
  else if (C == 8)
    group_forward<8, 16>(xp, wpp, bias, yp, B, H, W, Ci);
  else if (Ci == 4)
    group_forward<4, 16, 4>(xp, wpp, bias, yp, B, H, W, Ci);
  else if (Ci == 12)
    group_forward<4, 16, 12>(xp, wpp, bias, yp, B, H, W, Ci);
  else
    group_forward<4, 16>(xp, wpp, bias, yp, B, H, W, Ci);
  return y;
}

at::Tensor wide_run(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor x = input.contiguous(cl);
  const int64_t B = x.size(0), Ci = x.size(1), H = x.size(2), W = x.size(3), C = weight.size(0);
  if (C <= V) {  // one vector of output channels: oneDNN's forward is the faster here
    const c10::optional<at::Tensor> b = bias.defined() ? c10::optional<at::Tensor>(bias) : c10::nullopt;
    return at::convolution(x, weight, b, {1, 1}, {1, 1}, {1, 1}, false, {0, 0}, 1).contiguous(cl);
  }
  const int64_t NV = (C + V - 1) / V, L = NV * V;
  at::Tensor wp = at::zeros({9, Ci, L}, weight.options().memory_format(at::MemoryFormat::Contiguous));
  wp.narrow(2, 0, C).copy_(weight.permute({2, 3, 1, 0}).reshape({9, Ci, C}));
  at::Tensor y = at::empty({B, C, H, W}, x.options().memory_format(cl));
  const float* bp = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
  const float* xp = x.const_data_ptr<float>();
  const float* wpp = wp.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  if (NV == 3)
    wide_forward<3, 8>(xp, wpp, bp, yp, B, H, W, Ci, C);
  else
    wide_forward<2, 8>(xp, wpp, bp, yp, B, H, W, Ci, C);
  return y;
}

at::Tensor conv3x3(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  check_conv_args(x, weight);
  at::Tensor b;
  if (bias.has_value()) {
    b = bias->contiguous();
    TORCH_CHECK(b.scalar_type() == at::kFloat && b.numel() == weight.size(0), "acdctool::conv3x3: bias must be (C,)");
  }
  if (!(weight.size(0) == 4 || weight.size(0) == 8)) return wide_run(x, weight, b);
  return conv_run(x, weight, b.defined() ? b.const_data_ptr<float>() : nullptr);
}

// (grad_input, grad_weight, grad_bias) as output_mask asks (an empty tensor where it does not).
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv3x3_backward(const at::Tensor& grad, const at::Tensor& input,
                                                                const at::Tensor& weight,
                                                                std::array<bool, 3> output_mask) {
  check_conv_args(input, weight);
  const int64_t B = input.size(0), H = input.size(2), W = input.size(3), C = weight.size(0), M = weight.size(1) / C;
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == B && grad.size(1) == C && grad.size(2) == H && grad.size(3) == W &&
                  grad.scalar_type() == at::kFloat && grad.device().is_cpu(),
              "acdctool::conv3x3_backward: grad must be float32 on the CPU, shaped like the output");
  at::Tensor grad_input = at::empty({0}, input.options()), grad_weight = at::empty({0}, weight.options());
  at::Tensor grad_bias = at::empty({0}, weight.options());
  if (output_mask[0]) {
    if (M == 1 && (C == 4 || C == 8)) {  // the convolution of grad with the kernel flipped and transposed
      grad_input = conv_run(grad, weight.flip({2, 3}).transpose(0, 1), nullptr);
    } else if (!(C == 4 || C == 8) && input.size(1) == 8) {  // a wide one into 8 channels: the same, by pairs
      grad_input = group_run(grad, weight.flip({2, 3}).transpose(0, 1), nullptr);
    } else {  // more channels out than the kernel's C, or a wide one: oneDNN (as fast as ours here)
      const auto cl = at::MemoryFormat::ChannelsLast;
      grad_input = std::get<0>(at::convolution_backward(grad.contiguous(cl), input.contiguous(cl), weight,
                                                        c10::nullopt, {1, 1}, {1, 1}, {1, 1}, false, {0, 0}, 1,
                                                        {true, false, false}))
                       .contiguous(cl);
    }
  }
  if ((output_mask[1] || output_mask[2]) && !(C == 4 || C == 8)) {
    const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
    const at::Tensor dy = grad.contiguous(at::MemoryFormat::ChannelsLast);
    const int64_t Ci = x.size(1), NV = (C + V - 1) / V, L = NV * V, R = band_rows(W), bands = (H + R - 1) / R;
    const int threads = at::get_num_threads();
    const int64_t nd = 9 * Ci * L + L;  // doubles per thread: weight, then bias
    std::vector<double> part(static_cast<size_t>(threads * nd), 0.0);
    const float* xp = x.const_data_ptr<float>();
    const float* dp = dy.const_data_ptr<float>();
    at::parallel_for(0, B * bands, 1, [&](int64_t t0, int64_t t1) {
      double* g = part.data() + at::get_thread_num() * nd;
      if (NV == 3)
        wide_grad_weight<3>(xp, dp, g, H, W, Ci, C, t0, t1);
      else if (NV == 2)
        wide_grad_weight<2>(xp, dp, g, H, W, Ci, C, t0, t1);
      else
        wide_grad_weight<1>(xp, dp, g, H, W, Ci, C, t0, t1);
    });
    for (int th = 1; th < threads; ++th)
      for (int64_t k = 0; k < nd; ++k) part[k] += part[th * nd + k];
    if (output_mask[1]) {
      grad_weight = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
      float* p = grad_weight.mutable_data_ptr<float>();
      for (int64_t co = 0; co < C; ++co)
        for (int64_t ci = 0; ci < Ci; ++ci)
          for (int64_t t = 0; t < 9; ++t) p[(co * Ci + ci) * 9 + t] = static_cast<float>(part[(t * Ci + ci) * L + co]);
      grad_weight = grad_weight.contiguous(weight.suggest_memory_format());
    }
    if (output_mask[2]) {
      grad_bias = at::empty({C}, weight.options().memory_format(at::MemoryFormat::Contiguous));
      float* p = grad_bias.mutable_data_ptr<float>();
      for (int64_t c = 0; c < C; ++c) p[c] = static_cast<float>(part[9 * Ci * L + c]);
    }
  } else if (output_mask[1] || output_mask[2]) {
    const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
    const at::Tensor dy = grad.contiguous(at::MemoryFormat::ChannelsLast);
    const int threads = at::get_num_threads();
    const int64_t nv = M * 9 * C + 1;  // vectors per thread: weight, then bias partial sums
    std::vector<vec> part(static_cast<size_t>(threads * nv), vec{});
    const float* xp = x.const_data_ptr<float>();
    const float* dp = dy.const_data_ptr<float>();
    at::parallel_for(0, B * H, 1, [&](int64_t r0, int64_t r1) {
      vec* g = part.data() + at::get_thread_num() * nv;
      if (C == 4)
        conv_grad_weight<4>(xp, dp, g, g + nv - 1, H, W, M, r0, r1);
      else
        conv_grad_weight<8>(xp, dp, g, g + nv - 1, H, W, M, r0, r1);
    });
    std::vector<double> gw(C * M * C * 9, 0.0), gb(C, 0.0);
    for (int th = 0; th < threads; ++th) {
      const vec* g = part.data() + th * nv;
      for (int64_t grp = 0; grp < M; ++grp)
        for (int64_t t = 0; t < 9; ++t)
          for (int64_t ci = 0; ci < C; ++ci)
            for (int l = 0; l < V; ++l)
              gw[((l % C) * M * C + grp * C + ci) * 9 + t] += g[(grp * 9 + t) * C + ci][l];
      for (int l = 0; l < V; ++l) gb[l % C] += g[nv - 1][l];
    }
    if (output_mask[1]) {
      grad_weight = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
      float* p = grad_weight.mutable_data_ptr<float>();
      for (int64_t k = 0; k < C * M * C * 9; ++k) p[k] = static_cast<float>(gw[k]);
      grad_weight = grad_weight.contiguous(weight.suggest_memory_format());
    }
    if (output_mask[2]) {
      grad_bias = at::empty({C}, weight.options().memory_format(at::MemoryFormat::Contiguous));
      float* p = grad_bias.mutable_data_ptr<float>();
      for (int64_t c = 0; c < C; ++c) p[c] = static_cast<float>(gb[c]);
    }
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY(acdctool, m) {
  m.def("dwconv2d(Tensor x, Tensor weight) -> Tensor");
  m.def("dwconv2d_backward(Tensor grad, Tensor x, Tensor weight) -> (Tensor, Tensor)");
  m.def("bn_silu(Tensor x, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("conv3x3(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("conv3x3_backward(Tensor grad, Tensor x, Tensor weight, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def("latent_sample_kl(Tensor? prior, Tensor post, Tensor eps) -> (Tensor, Tensor)");
  m.def(
      "latent_sample_kl_backward(Tensor grad_z, Tensor grad_kl, Tensor? prior, Tensor post, Tensor eps)"
      " -> (Tensor, Tensor)");
  m.def(
      "bn_silu_dwconv_bn_silu(Tensor x, Tensor gamma_a, Tensor beta_a, Tensor weight, Tensor gamma_b,"
      " Tensor beta_b, float eps_a, float eps_b) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "bn_silu_dwconv_bn_silu_backward(Tensor grad, Tensor x, Tensor h, Tensor gamma_a, Tensor beta_a,"
      " Tensor weight, Tensor gamma_b, Tensor beta_b, Tensor mean_a, Tensor invstd_a, Tensor mean_b,"
      " Tensor invstd_b) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "bn_silu_backward(Tensor grad, Tensor x, Tensor weight, Tensor bias, Tensor mean, Tensor invstd)"
      " -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(acdctool, CPU, m) {
  m.impl("dwconv2d", &dwconv2d);
  m.impl("dwconv2d_backward", &dwconv2d_backward);
  m.impl("bn_silu", &bn_silu);
  m.impl("bn_silu_backward", &bn_silu_backward);
  m.impl("bn_silu_dwconv_bn_silu", &bn_silu_dwconv_bn_silu);
  m.impl("bn_silu_dwconv_bn_silu_backward", &bn_silu_dwconv_bn_silu_backward);
  m.impl("conv3x3", &conv3x3);
  m.impl("conv3x3_backward", &conv3x3_backward);
  m.impl("latent_sample_kl", &latent_sample_kl);
  m.impl("latent_sample_kl_backward", &latent_sample_kl_backward);
}
