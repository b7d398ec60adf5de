// y = x W^T for a few rows of x (a draft tree's verification width), fp32, AVX-512.
//
// A forward over 2..32 tokens on a CPU reads every weight once, like a one-token forward, but
// stock BLAS kernels for such skinny products run far below both the memory bandwidth and the
// FMA peak. Here W is repacked once into panels of 16 output columns stored k-major
// (panel p: (K, 16), element [k][l] = W[16p + l][k]), so the kernel streams each panel once
// and, for every k, broadcasts x[m][k] against 1..4 panel vectors held in registers: up to 32
// accumulators, every weight byte loaded once per tile of up to 8 rows. Each output is a
// plain sum over k in order, so a row's result does not depend on how many rows run with it.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

namespace {

constexpr int kLanes = 16;  // floats per AVX-512 register = columns per panel

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
    for (int m = 0; m < MB; ++m) {
      const __m512 xv = _mm512_set1_ps(x[m * ldx + k]);
      for (int j = 0; j < NP; ++j) acc[m][j] = _mm512_fmadd_ps(xv, wv[j], acc[m][j]);
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int j = 0; j < NP; ++j) _mm512_storeu_ps(y + m * ldy + j * kLanes, acc[m][j]);
}

using TileFn = void (*)(const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t);
#define S4C_TILE_ROW(MB) {tile<MB, 1>, tile<MB, 2>, tile<MB, 3>, tile<MB, 4>}
const TileFn kTiles[8][4] = {S4C_TILE_ROW(1), S4C_TILE_ROW(2), S4C_TILE_ROW(3),
                             S4C_TILE_ROW(4), S4C_TILE_ROW(5), S4C_TILE_ROW(6),
                             S4C_TILE_ROW(7), S4C_TILE_ROW(8)};
#undef S4C_TILE_ROW

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
  // Panels per tile: accumulators MB * NP <= 32, and few rows keep more panels in flight.
  const int group = rows <= 2 ? 4 : (rows <= 4 ? 4 : 2);
  const int64_t groups = (panels + group - 1) / group;
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const int64_t p = g * group;
      const int np = static_cast<int>(std::min<int64_t>(group, panels - p));
      for (int64_t m0 = 0; m0 < rows; m0 += 8) {
        const int mb = static_cast<int>(std::min<int64_t>(8, rows - m0));
        kTiles[mb - 1][np - 1](xp + m0 * k, k, k, wp + p * stride, stride,
                               yp + m0 * width + p * kLanes, width);
      }
    }
  });
  return width == n ? y : y.narrow(1, 0, n).contiguous();
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pack_weight", &pack_weight, "pack an (N, K) fp32 weight into 16-column panels");
  m.def("narrow_linear", &narrow_linear, "x W^T for a few rows, from a packed weight");
}
