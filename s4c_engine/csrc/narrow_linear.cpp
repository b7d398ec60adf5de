// y = x W^T for a few rows of x (a draft tree's verification width), fp32, AVX-512.
//
// A forward over 2..32 tokens on a CPU reads every weight once, like a one-token forward, but
// stock BLAS kernels for such skinny products run far below both the memory bandwidth and the
// FMA peak. Here W is repacked once into panels of 16 output columns stored k-major
// (panel p: (K, 16), element [k][l] = W[16p + l][k]), so the kernel streams each panel once
// and, for every k, broadcasts x[m][k] against 1..4 panel vectors held in registers: up to 28
// accumulators, every weight byte loaded once per pass of up to 14 rows. Each output is a
// plain sum over k in order, so a row's result does not depend on how many rows run with it.
//
// A bf16 variant (AVX512-BF16 `vdpbf16ps`, fp32 accumulation) serves the draft heads, whose
// precision never changes the output: half the bytes per weight, and drafting is as
// memory-bound as verification. Its panels hold k in pairs: panel p: (K/2, 16, 2).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

namespace {

constexpr int kLanes = 16;  // floats per AVX-512 register = columns per panel

// How far ahead (in k steps, one 64-byte line per panel each) every panel stream is
// prefetched. The hardware prefetchers alone keep too few lines in flight once a tile has
// more than a few rows of FMAs per line, so streaming stalled while the FMAs ran: 12 rows over
// SmolLM2-135M's weights took 26 ms against 18 ms for one row; prefetched 32-48 lines ahead,
// 20 ms (2-core Sapphire Rapids VM; 8 and 16 were slower, 64 and 128 no better). The bf16
// kernel streams the same way: four heads' products (8192x576 + 576x1152 + 2x 576x576 each)
// at 1 / 3 / 9 rows 0.98 / 1.15 / 3.34 ms without, 1.00 / 1.07 / 2.39 ms with it.
constexpr int64_t kPrefetchAhead = 40;

// y[m][16 j + l] = sum_k x[m][k] * panel_j[k][l] for m < MB, j < NP.
template <int MB, int NP>
void tile(const float* __restrict x, int64_t ldx, int64_t K, const float* __restrict w,
          int64_t panel_stride, float* __restrict y, int64_t ldy) {
  __m512 acc[MB][NP];
  for (int m = 0; m < MB; ++m)
    for (int j = 0; j < NP; ++j) acc[m][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m512 wv[NP];
    for (int j = 0; j < NP; ++j) wv[j] = _mm512_loadu_ps(w + j * panel_stride + k * kLanes);
    // Past a panel's end this touches the next panel or nothing: a prefetch never faults.
    for (int j = 0; j < NP; ++j)
      _mm_prefetch(reinterpret_cast<const char*>(w + j * panel_stride + (k + kPrefetchAhead) * kLanes),
                   _MM_HINT_T0);
    for (int m = 0; m < MB; ++m) {
      const __m512 xv = _mm512_set1_ps(x[m * ldx + k]);
      for (int j = 0; j < NP; ++j) acc[m][j] = _mm512_fmadd_ps(xv, wv[j], acc[m][j]);
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int j = 0; j < NP; ++j) _mm512_storeu_ps(y + m * ldy + j * kLanes, acc[m][j]);
}

using TileFn = void (*)(const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t);
// [MB - 1][NP - 1]; MB * NP <= 28 accumulators (of 32 registers) is all that is ever used.
#define S4C_TILE_ROW(T, MB) {T<MB, 1>, T<MB, 2>, T<MB, 3>, T<MB, 4>}
#define S4C_TILE_TABLE(T)                                                                   \
  {S4C_TILE_ROW(T, 1),  S4C_TILE_ROW(T, 2),  S4C_TILE_ROW(T, 3),  S4C_TILE_ROW(T, 4),     \
   S4C_TILE_ROW(T, 5),  S4C_TILE_ROW(T, 6),  S4C_TILE_ROW(T, 7),  S4C_TILE_ROW(T, 8),     \
   S4C_TILE_ROW(T, 9),  S4C_TILE_ROW(T, 10), S4C_TILE_ROW(T, 11), S4C_TILE_ROW(T, 12),    \
   S4C_TILE_ROW(T, 13), S4C_TILE_ROW(T, 14)}
constexpr int kMaxTileRows = 14;
const TileFn kTiles[kMaxTileRows][4] = S4C_TILE_TABLE(tile);

// How rows and panels are tiled (measured on a 2-core Sapphire Rapids VM, 30 layers of
// SmolLM2-135M weights, cold): up to 4 rows share a tile of 4 panels; more rows run in
// passes of at most 14 rows (split evenly) over tiles of 2 panels.
struct Tiling {
  int panels_per_tile;
  int64_t passes;
};

Tiling choose_tiling(int64_t rows) {
  if (rows <= 4) return {4, 1};
  return {2, (rows + kMaxTileRows - 1) / kMaxTileRows};
}

// Runs tile(rows m0.., panels p..) over the whole product, panel tiles in parallel.
template <typename Fn>
void for_each_tile(int64_t rows, int64_t panels, Fn&& run) {
  const Tiling t = choose_tiling(rows);
  const int64_t groups = (panels + t.panels_per_tile - 1) / t.panels_per_tile;
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const int64_t p = g * t.panels_per_tile;
      const int np = static_cast<int>(std::min<int64_t>(t.panels_per_tile, panels - p));
      int64_t m0 = 0;
      for (int64_t q = 0; q < t.passes; ++q) {
        const int mb = static_cast<int>((rows - m0) / (t.passes - q));
        run(m0, mb, p, np);
        m0 += mb;
      }
    }
  });
}

}  // namespace

// (N, K) fp32 -> (ceil(N / 16), K, 16), zero-padded past N.
torch::Tensor pack_weight(const torch::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == torch::kFloat32,
              "pack_weight: a 2-D fp32 weight");
  const int64_t n = weight.size(0), k = weight.size(1);
  const int64_t panels = (n + kLanes - 1) / kLanes;
  auto padded = torch::zeros({panels * kLanes, k}, weight.options());
  padded.narrow(0, 0, n).copy_(weight);
  return padded.reshape({panels, kLanes, k}).transpose(1, 2).contiguous();
}

// x (M, K) fp32 contiguous, packed from pack_weight, n = W's rows; returns (M, n).
torch::Tensor narrow_linear(const torch::Tensor& x, const torch::Tensor& packed, int64_t n) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(),
              "narrow_linear: x must be a contiguous 2-D fp32 tensor");
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == kLanes && packed.size(1) == x.size(1),
              "narrow_linear: packed weight does not match x");
  const int64_t rows = x.size(0), k = x.size(1), panels = packed.size(0);
  const int64_t width = panels * kLanes;
  auto y = torch::empty({rows, width}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = packed.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t stride = k * kLanes;
  for_each_tile(rows, panels, [&](int64_t m0, int mb, int64_t p, int np) {
    kTiles[mb - 1][np - 1](xp + m0 * k, k, k, wp + p * stride, stride,
                           yp + m0 * width + p * kLanes, width);
  });
  return width == n ? y : y.narrow(1, 0, n).contiguous();
}

namespace {

// bf16 pairs: y[m][16 j + l] = sum_k2 x2[m][k2] . panel_j[k2][l] (two products per lane).
template <int MB, int NP>
__attribute__((target("avx512bf16,avx512f"))) void tile_bf16(
    const uint32_t* __restrict x2, int64_t ldx, int64_t K2, const uint16_t* __restrict w,
    int64_t panel_stride, float* __restrict y, int64_t ldy) {
  __m512 acc[MB][NP];
  for (int m = 0; m < MB; ++m)
    for (int j = 0; j < NP; ++j) acc[m][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K2; ++k) {
    __m512bh wv[NP];
    for (int j = 0; j < NP; ++j)
      wv[j] = (__m512bh)_mm512_loadu_si512(w + j * panel_stride + k * 2 * kLanes);
    for (int j = 0; j < NP; ++j)
      _mm_prefetch(
          reinterpret_cast<const char*>(w + j * panel_stride + (k + kPrefetchAhead) * 2 * kLanes),
          _MM_HINT_T0);
    for (int m = 0; m < MB; ++m) {
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(static_cast<int>(x2[m * ldx + k]));
      for (int j = 0; j < NP; ++j) acc[m][j] = _mm512_dpbf16_ps(acc[m][j], xv, wv[j]);
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int j = 0; j < NP; ++j) _mm512_storeu_ps(y + m * ldy + j * kLanes, acc[m][j]);
}

using TileBf16Fn = void (*)(const uint32_t*, int64_t, int64_t, const uint16_t*, int64_t, float*,
                            int64_t);
const TileBf16Fn kTilesBf16[kMaxTileRows][4] = S4C_TILE_TABLE(tile_bf16);
#undef S4C_TILE_TABLE
#undef S4C_TILE_ROW

}  // namespace

bool has_bf16() { return __builtin_cpu_supports("avx512bf16"); }

// (N, K) float weight -> (ceil(N / 16), ceil(K / 2), 16, 2) bf16, zero-padded.
torch::Tensor pack_weight_bf16(const torch::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.is_floating_point(), "pack_weight_bf16: 2-D weight");
  const int64_t n = weight.size(0), k = weight.size(1);
  const int64_t panels = (n + kLanes - 1) / kLanes, k2 = (k + 1) / 2;
  auto padded = torch::zeros({panels * kLanes, k2 * 2}, weight.options().dtype(torch::kBFloat16));
  padded.narrow(0, 0, n).narrow(1, 0, k).copy_(weight);
  // [p, l, k2, two] -> [p, k2, l, two]
  return padded.reshape({panels, kLanes, k2, 2}).transpose(1, 2).contiguous();
}

// x (M, K) float, packed from pack_weight_bf16, n = W's rows; returns (M, n) fp32.
torch::Tensor narrow_linear_bf16(const torch::Tensor& x, const torch::Tensor& packed, int64_t n) {
  TORCH_CHECK(has_bf16(), "narrow_linear_bf16: this CPU has no AVX512-BF16");
  TORCH_CHECK(x.dim() == 2 && packed.dim() == 4 && packed.size(2) == kLanes,
              "narrow_linear_bf16: bad shapes");
  const int64_t rows = x.size(0), k = x.size(1), panels = packed.size(0), k2 = packed.size(1);
  TORCH_CHECK((k + 1) / 2 == k2, "narrow_linear_bf16: packed weight does not match x");
  auto xb = torch::zeros({rows, k2 * 2}, x.options().dtype(torch::kBFloat16));
  xb.narrow(1, 0, k).copy_(x);
  const int64_t width = panels * kLanes;
  auto y = torch::empty({rows, width}, x.options().dtype(torch::kFloat32));
  const auto* xp = reinterpret_cast<const uint32_t*>(xb.data_ptr<at::BFloat16>());
  const auto* wp = reinterpret_cast<const uint16_t*>(packed.data_ptr<at::BFloat16>());
  float* yp = y.data_ptr<float>();
  const int64_t stride = k2 * 2 * kLanes;
  for_each_tile(rows, panels, [&](int64_t m0, int mb, int64_t p, int np) {
    kTilesBf16[mb - 1][np - 1](xp + m0 * k2, k2, k2, wp + p * stride, stride,
                               yp + m0 * width + p * kLanes, width);
  });
  return width == n ? y : y.narrow(1, 0, n).contiguous();
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pack_weight", &pack_weight, "pack an (N, K) fp32 weight into 16-column panels");
  m.def("narrow_linear", &narrow_linear, "x W^T for a few rows, from a packed weight");
  m.def("has_bf16", &has_bf16, "whether this CPU runs the bf16 kernel");
  m.def("pack_weight_bf16", &pack_weight_bf16, "pack a weight into bf16 16-column panels");
  m.def("narrow_linear_bf16", &narrow_linear_bf16, "x W^T in bf16 (fp32 sums), few rows");
}
