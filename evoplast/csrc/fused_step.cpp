// One fused in-place lifetime step of the plastic network on the CPU; see evoplast/fused.py for the
// shapes, the contract and how it is built (-O3 -march=native -Wall -Wextra, no fast-math).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/Exceptions.h>      // torch::wrap_pybind_function: c10 errors -> Python exceptions
#include <torch/csrc/utils/pybind.h>    // the at::Tensor <-> torch.Tensor caster

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace {

// A per-lifetime operand: lifetime b's data starts at base + b * stride (stride 0: shared by all).
template <typename T>
struct Batched {
  T* base = nullptr;
  int64_t stride = 0;
  T* operator[](int64_t b) const { return base + b * stride; }
};

// t with contiguous inner dimensions (t itself when they already are); the batch stride stays free.
at::Tensor inner_contiguous(const at::Tensor& t) {
  int64_t expected = 1;
  for (int64_t d = t.dim() - 1; d >= 1; --d) {
    if (t.size(d) != 1 && t.stride(d) != expected) return t.contiguous();
    expected *= t.size(d);
  }
  return t;
}

Batched<const float> input(const at::Tensor& t) { return {t.const_data_ptr<float>(), t.stride(0)}; }

void check_float(const at::Tensor& t, at::IntArrayRef shape, const char* what, int64_t layer) {
  TORCH_CHECK_VALUE(t.device().is_cpu() && t.scalar_type() == at::kFloat,
                    "fused step: layer ", layer, " ", what, " must be a float32 CPU tensor, got ",
                    t.scalar_type(), " on ", t.device());
  TORCH_CHECK_VALUE(t.sizes() == shape, "fused step: layer ", layer, " ", what, " has shape ", t.sizes(),
                    ", expected ", shape);
}

struct Layer {
  int64_t in = 0, out = 0;
  float* wt = nullptr;         // W^T of lifetime 0, [in, out] row-major; lifetime b at wt + b * in * out
  Batched<const float> bias;   // [out]
  int plastic = -1;            // index into the plastic-layer arguments, -1 = frozen
};

struct Plastic {
  Batched<const float> feedback;       // B_l [out, n_out]
  Batched<const float> feedback_bias;  // c_l [out]
  Batched<const float> beta;           // [1]
  Batched<const float> eta;            // [1] (per layer) or [out] (per neuron)
  bool eta_per_neuron = false;
};

// Small matrix products in register tiles. SIMD through the GCC / Clang vector extensions: V8 = 8 floats
// (256 bits), V4 = 4 floats, plain float for the last columns; load / store are unaligned. The helpers
// are always inlined so that the epilogues' captures and the accumulators stay in registers.
#define ALWAYS_INLINE inline __attribute__((always_inline))
typedef float V8 __attribute__((vector_size(32)));
typedef float V4 __attribute__((vector_size(16)));
template <typename V> inline V load(const float* p) { V v; __builtin_memcpy(&v, p, sizeof(V)); return v; }
template <typename V> inline void store(float* p, V v) { __builtin_memcpy(p, &v, sizeof(V)); }
template <typename V> inline V relu(V v) { return v < 0.f ? V{} : v; }  // NaN stays NaN, like torch.relu
// Rows per register tile: 8 rows x 16 columns = 16 vector accumulators with AVX-512's 32 vector registers,
// 4 x 16 = 8 accumulators with AVX2's 16.
#ifdef __AVX512VL__
constexpr int kRows = 8;
#else
constexpr int kRows = 4;
#endif

// An R x (NV vectors of type V) tile of a matrix product, held in registers.
template <int R, typename V, int NV>
struct Tile {
  using Vec = V;
  static constexpr int rows = R, vectors = NV, lanes = sizeof(V) / sizeof(float);
  V acc[R][NV];
};

// t.acc[r][j] = sum_k A[r, k] * M[k, j-th vector of columns], with A[r, k] at a[r * a_row + k * a_k] and
// M[k, c] at b[k * ldb + c]: each step of k loads the NV vectors of M's row once and uses them R times.
// Every element sums in k order (no reassociation).
template <class T>
ALWAYS_INLINE void tile_product(const float* __restrict__ a, int64_t a_row, int64_t a_k, const float* __restrict__ b,
                         int64_t ldb, int64_t K, T& t) {
  using V = typename T::Vec;
  for (int r = 0; r < T::rows; ++r)
    for (int j = 0; j < T::vectors; ++j) t.acc[r][j] = V{};
  for (int64_t k = 0; k < K; ++k) {
    V bk[T::vectors];
    for (int j = 0; j < T::vectors; ++j) bk[j] = load<V>(b + k * ldb + j * T::lanes);
    for (int r = 0; r < T::rows; ++r) {
      const float av = a[r * a_row + k * a_k];
      for (int j = 0; j < T::vectors; ++j) t.acc[r][j] += av * bk[j];
    }
  }
}

// Columns c0 .. c0 + NV * lanes - 1 of the product A M: tiles of kRows rows, then 4, then single rows.
template <typename V, int NV, class Epilogue>
ALWAYS_INLINE void product_columns(int64_t c0, int64_t rows, int64_t K, const float* a, int64_t a_row, int64_t a_k,
                            const float* b, int64_t ldb, Epilogue& epilogue) {
  int64_t r0 = 0;
  for (; r0 + kRows <= rows; r0 += kRows) {
    Tile<kRows, V, NV> t;
    tile_product(a + r0 * a_row, a_row, a_k, b + c0, ldb, K, t);
    epilogue(r0, c0, t);
  }
  if (kRows > 4 && r0 + 4 <= rows) {
    Tile<4, V, NV> t;
    tile_product(a + r0 * a_row, a_row, a_k, b + c0, ldb, K, t);
    epilogue(r0, c0, t);
    r0 += 4;
  }
  for (; r0 < rows; ++r0) {
    Tile<1, V, NV> t;
    tile_product(a + r0 * a_row, a_row, a_k, b + c0, ldb, K, t);
    epilogue(r0, c0, t);
  }
}

// The product A M ([rows, K] x [K, cols]) tile by tile: epilogue(r0, c0, tile) consumes the tile of rows
// r0.. and columns c0.. . Tiles are 16 columns wide, then 8, 4 and 1 for the last columns.
template <class Epilogue>
ALWAYS_INLINE void product(int64_t rows, int64_t cols, int64_t K, const float* a, int64_t a_row, int64_t a_k,
                    const float* b, int64_t ldb, Epilogue epilogue) {
  int64_t c0 = 0;
  for (; c0 + 16 <= cols; c0 += 16) product_columns<V8, 2>(c0, rows, K, a, a_row, a_k, b, ldb, epilogue);
  if (c0 + 8 <= cols) { product_columns<V8, 1>(c0, rows, K, a, a_row, a_k, b, ldb, epilogue); c0 += 8; }
  if (c0 + 4 <= cols) { product_columns<V4, 1>(c0, rows, K, a, a_row, a_k, b, ldb, epilogue); c0 += 4; }
  for (; c0 < cols; ++c0) product_columns<float, 1>(c0, rows, K, a, a_row, a_k, b, ldb, epilogue);
}

// a = h W^T + bias for the m rows, then relu if asked.  h [m, in], wt = W^T [in, out], bias [out], a [m, out]
void linear(const float* __restrict__ h, const float* __restrict__ wt, const float* __restrict__ bias,
            float* __restrict__ a, int64_t m, int64_t in, int64_t out, bool relu_) {
  if (out == 1) {  // one output unit: a dot product per row, summed in 8 interleaved partial sums
    for (int64_t r = 0; r < m; ++r) {
      const float* __restrict__ hr = h + r * in;
      V8 part{};
      int64_t k = 0;
      for (; k + 8 <= in; k += 8) part += load<V8>(hr + k) * load<V8>(wt + k);
      float sum = 0.f;
      for (int l = 0; l < 8; ++l) sum += part[l];
      for (; k < in; ++k) sum += hr[k] * wt[k];
      const float v = bias[0] + sum;
      a[r] = relu_ ? relu(v) : v;
    }
    return;
  }
  product(m, out, in, h, in, 1, wt, out, [=](int64_t r0, int64_t c0, const auto& t) {
    using T = std::decay_t<decltype(t)>;
    using V = typename T::Vec;
    for (int r = 0; r < T::rows; ++r)
      for (int j = 0; j < T::vectors; ++j) {
        const int64_t c = c0 + j * T::lanes;
        const V v = load<V>(bias + c) + t.acc[r][j];
        store(a + (r0 + r) * out + c, relu_ ? relu(v) : v);
      }
  });
}

// Teaching signal s [m, n_out] of the prediction yh [m, n_out].
//   regression: y - yh (error) or y (target), y [m, n_out]
//   classification: onehot(label) - softmax(yh) (error) or onehot(label) (target), labels [m]
void teaching_signal(const float* __restrict__ yh, const float* __restrict__ y, const int64_t* __restrict__ labels,
                     float* __restrict__ s, int64_t m, int64_t n_out, bool target, bool classification) {
  if (!classification) {
    for (int64_t k = 0; k < m * n_out; ++k) s[k] = target ? y[k] : y[k] - yh[k];
    return;
  }
  for (int64_t r = 0; r < m; ++r) {
    const float* __restrict__ z = yh + r * n_out;
    float* __restrict__ sr = s + r * n_out;
    for (int64_t k = 0; k < n_out; ++k) sr[k] = 0.f;
    if (!target) {  // -softmax(z), stable: exp(z - max z) / sum
      float mx = z[0];
      for (int64_t k = 1; k < n_out; ++k) mx = (z[k] > mx || std::isnan(z[k])) ? z[k] : mx;
      float sum = 0.f;
      for (int64_t k = 0; k < n_out; ++k) sum += (sr[k] = std::exp(z[k] - mx));
      for (int64_t k = 0; k < n_out; ++k) sr[k] = -(sr[k] / sum);
    }
    sr[labels[r]] += 1.f;
  }
}

// Post activity of a plastic layer, post [m, out]:
//   f = s B^T + c, relu'd if asked; post = lerp(post_ff, f, beta) as torch.lerp computes it.
//   s [m, n_out], fb = B [out, n_out], c [out], post_ff [m, out]; bt: scratch [n_out, out] for B^T.
void post_activity(const float* __restrict__ s, const float* __restrict__ fb, const float* __restrict__ c,
                   const float* __restrict__ post_ff, float beta, bool relu_, float* __restrict__ bt,
                   float* __restrict__ post, int64_t m, int64_t out, int64_t n_out) {
  for (int64_t o = 0; o < out; ++o)  // B^T, so that s B^T is a product with a row-major right operand
    for (int64_t k = 0; k < n_out; ++k) bt[k * out + o] = fb[o * n_out + k];
  const bool small = std::abs(beta) < 0.5f;
  product(m, out, n_out, s, n_out, 1, bt, out, [=](int64_t r0, int64_t c0, const auto& t) {
    using T = std::decay_t<decltype(t)>;
    using V = typename T::Vec;
    for (int r = 0; r < T::rows; ++r)
      for (int j = 0; j < T::vectors; ++j) {
        const int64_t k = (r0 + r) * out + c0 + j * T::lanes;
        V f = load<V>(c + c0 + j * T::lanes) + t.acc[r][j];
        if (relu_) f = relu(f);
        const V ff = load<V>(post_ff + k);
        store(post + k, small ? ff + beta * (f - ff) : f - (f - ff) * (1.f - beta));
      }
  });
}

// The Hebb / Oja update of W^T [in, out] in place, from pre h [m, in] and post p [m, out]:
//   oja:  decay[o] = 1 - eta[o] * sum_r p[r, o]^2, then W^T[i, o] = W^T[i, o] * decay[o] + dW^T[i, o]
//   hebb: W^T[i, o] += dW^T[i, o]
// with dW^T[i, o] = sum_r h[r, i] * eta[o] p[r, o]. p is scaled by eta in place; decay: scratch [out].
void plastic_update(float* __restrict__ wt, const float* __restrict__ h, float* __restrict__ p,
                    const float* __restrict__ eta, bool oja, float* __restrict__ decay, int64_t m, int64_t in,
                    int64_t out) {
  if (oja) {
    for (int64_t o = 0; o < out; ++o) decay[o] = 0.f;
    for (int64_t r = 0; r < m; ++r)  // decay = sum_r p[r, :]^2
      for (int64_t o = 0; o < out; ++o) decay[o] += p[r * out + o] * p[r * out + o];
    for (int64_t o = 0; o < out; ++o) decay[o] = 1.f - eta[o] * decay[o];
  }
  for (int64_t r = 0; r < m; ++r)  // p = eta * post
    for (int64_t o = 0; o < out; ++o) p[r * out + o] *= eta[o];
  if (out == 1) {  // one output unit: dW^T [in] = p^T h, a product with one row, vectorised over the inputs
    product(1, in, m, p, 0, 1, h, in, [=](int64_t, int64_t c0, const auto& t) {
      using T = std::decay_t<decltype(t)>;
      using V = typename T::Vec;
      for (int j = 0; j < T::vectors; ++j) {
        float* const w = wt + c0 + j * T::lanes;
        store(w, oja ? load<V>(w) * decay[0] + t.acc[0][j] : load<V>(w) + t.acc[0][j]);
      }
    });
    return;
  }
  // dW^T = h^T p: the rows of this product are the inputs i, A[i, r] = h[r * in + i]
  product(in, out, m, h, 1, in, p, out, [=](int64_t i0, int64_t c0, const auto& t) {
    using T = std::decay_t<decltype(t)>;
    using V = typename T::Vec;
    for (int r = 0; r < T::rows; ++r)
      for (int j = 0; j < T::vectors; ++j) {
        const int64_t c = c0 + j * T::lanes;
        float* const w = wt + (i0 + r) * out + c;
        store(w, oja ? load<V>(w) * load<V>(decay + c) + t.acc[r][j] : load<V>(w) + t.acc[r][j]);
      }
  });
}

}  // namespace

// One in-place step of B lifetimes; returns y_hat [B, m, n_out] of the pre-update weights.
// weights: L tensors W_l [B, out, in] column-major; biases: L [B, out]; x [B, m, n_0];
// y [B, m, n_out] float or [B, m] int64 labels; plastic: the plastic layers (1-based, sorted);
// feedback [B, out, n_out], feedback_bias [B, out], beta [B, 1, 1], eta [B, 1, 1] or [B, out, 1]:
// one each per plastic layer.
at::Tensor step(std::vector<at::Tensor> weights, std::vector<at::Tensor> biases, at::Tensor x, at::Tensor y,
                std::vector<int64_t> plastic, std::vector<at::Tensor> feedback,
                std::vector<at::Tensor> feedback_bias, std::vector<at::Tensor> beta, std::vector<at::Tensor> eta,
                bool oja, bool target, bool relu_feedback, bool classification) {
  const int64_t L = static_cast<int64_t>(weights.size());
  TORCH_CHECK_VALUE(L >= 1 && static_cast<int64_t>(biases.size()) == L, "fused step: need L >= 1 weights and L biases");
  const auto P = plastic.size();
  TORCH_CHECK_VALUE(feedback.size() == P && feedback_bias.size() == P && beta.size() == P && eta.size() == P,
                    "fused step: one feedback, feedback_bias, beta and eta per plastic layer");
  TORCH_CHECK_VALUE(x.dim() == 3, "fused step: x must be [B, m, n_in], got ", x.sizes());
  const int64_t B = x.size(0), m = x.size(1);
  check_float(x, {B, m, weights[0].size(-1)}, "input x", 1);
  x = inner_contiguous(x);

  std::vector<Layer> layers(L);
  std::vector<at::Tensor> keep;  // the operands as read (copied only when their rows are strided), kept alive
  auto hold = [&keep](const at::Tensor& t) {
    keep.push_back(inner_contiguous(t));
    return input(keep.back());
  };
  int64_t width = 1, work = 1;  // widest layer; multiply-adds of one lifetime's step
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor& w = weights[l];
    TORCH_CHECK_VALUE(w.dim() == 3, "fused step: layer ", l + 1, " weight must be [B, out, in], got ", w.sizes());
    Layer& ly = layers[l];
    ly.out = w.size(1);
    ly.in = l == 0 ? x.size(2) : layers[l - 1].out;
    check_float(w, {B, ly.out, ly.in}, "weight", l + 1);
    const at::Tensor wt = w.transpose(1, 2);
    TORCH_CHECK_VALUE(wt.is_contiguous(), "fused step: layer ", l + 1,
                      " weight must be column-major (W.transpose(1, 2) contiguous, see evoplast.network.column_major)");
    TORCH_CHECK_VALUE(!(at::GradMode::is_enabled() && w.requires_grad()),
                      "fused step: in-place update of a weight that requires grad (use torch.no_grad)");
    ly.wt = wt.data_ptr<float>();
    check_float(biases[l], {B, ly.out}, "bias", l + 1);
    ly.bias = hold(biases[l]);
    width = std::max(width, ly.out);
    work += m * ly.in * ly.out;
  }
  const int64_t n_out = layers[L - 1].out;

  std::vector<Plastic> plastics(P);
  for (size_t j = 0; j < P; ++j) {
    const int64_t l = plastic[j];
    TORCH_CHECK_VALUE(l >= 1 && l <= L && (j == 0 || l > plastic[j - 1]),
                      "fused step: plastic layers must be sorted, unique and in 1..", L);
    Layer& ly = layers[l - 1];
    ly.plastic = static_cast<int>(j);
    work += m * ly.in * ly.out;
    Plastic& pl = plastics[j];
    check_float(feedback[j], {B, ly.out, n_out}, "feedback", l);
    check_float(feedback_bias[j], {B, ly.out}, "feedback_bias", l);
    check_float(beta[j], {B, 1, 1}, "beta", l);
    TORCH_CHECK_VALUE(eta[j].dim() == 3 && eta[j].size(0) == B && eta[j].size(2) == 1 &&
                      (eta[j].size(1) == 1 || eta[j].size(1) == ly.out),
                      "fused step: layer ", l, " eta must be [B, 1, 1] (per layer) or [B, out, 1] (per neuron), got ",
                      eta[j].sizes());
    check_float(eta[j], {B, eta[j].size(1), 1}, "eta", l);
    pl.eta_per_neuron = eta[j].size(1) != 1;
    pl.feedback = hold(feedback[j]);
    pl.feedback_bias = hold(feedback_bias[j]);
    pl.beta = hold(beta[j]);
    pl.eta = hold(eta[j]);
  }

  Batched<const float> yv;
  Batched<const int64_t> labels;
  if (classification) {
    TORCH_CHECK_VALUE(y.device().is_cpu() && y.scalar_type() == at::kLong && y.dim() == 2 && y.size(0) == B &&
                      y.size(1) == m, "fused step: classification labels y must be int64 [B, m], got ",
                      y.scalar_type(), " ", y.sizes());
    y = inner_contiguous(y);
    labels = {y.const_data_ptr<int64_t>(), y.stride(0)};
    for (int64_t b = 0; b < (labels.stride == 0 ? std::min<int64_t>(B, 1) : B); ++b)  // before any update
      for (int64_t r = 0; r < m; ++r)
        TORCH_CHECK_VALUE(labels[b][r] >= 0 && labels[b][r] < n_out, "fused step: label ", labels[b][r],
                          " is not in [0, ", n_out, ")");
  } else {
    check_float(y, {B, m, n_out}, "target y", L);
    y = inner_contiguous(y);
    yv = input(y);
  }
  const Batched<const float> xv = input(x);
  at::Tensor y_hat = at::empty({B, m, n_out}, x.options().dtype(at::kFloat));
  float* const y_hat_base = y_hat.data_ptr<float>();

  // Scratch of one thread: the hidden activations (m x out_l each), then s, post, B^T, eta, decay.
  std::vector<int64_t> act_offset(L, 0);
  int64_t scratch_size = 0;
  for (int64_t l = 0; l + 1 < L; ++l) {
    act_offset[l] = scratch_size;
    scratch_size += m * layers[l].out;
  }
  const int64_t s_off = scratch_size, post_off = s_off + m * n_out, bt_off = post_off + m * width,
                eta_off = bt_off + n_out * width, decay_off = eta_off + width;
  scratch_size = decay_off + width;

  const int64_t grain = std::max<int64_t>(1, 32768 / work);  // >= ~32k multiply-adds per task
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(scratch_size);
    float* const buf = scratch.data();
    for (int64_t b = begin; b < end; ++b) {
      float* const yh = y_hat_base + b * m * n_out;
      // Forward pass: h_l = relu(h_{l-1} W_l^T + b_l) into scratch, y_hat = h_{L-1} W_L^T + b_L into the output.
      const float* h = xv[b];
      for (int64_t l = 0; l < L; ++l) {
        const Layer& ly = layers[l];
        float* a = l + 1 < L ? buf + act_offset[l] : yh;
        linear(h, ly.wt + b * ly.in * ly.out, ly.bias[b], a, m, ly.in, ly.out, l + 1 < L);
        h = a;
      }
      float* const s = buf + s_off;
      teaching_signal(yh, classification ? nullptr : yv[b], classification ? labels[b] : nullptr, s, m, n_out,
                      target, classification);
      // Each plastic layer from the pre-update activations (updating W_l changes no other layer's activity).
      for (int64_t l = 0; l < L; ++l) {
        const Layer& ly = layers[l];
        if (ly.plastic < 0) continue;
        const Plastic& pl = plastics[ly.plastic];
        const bool is_output = l + 1 == L;
        const float* pre = l == 0 ? xv[b] : buf + act_offset[l - 1];
        const float* post_ff = is_output ? yh : buf + act_offset[l];
        float* const post = buf + post_off;
        if (is_output && classification) {  // the output layer's post activity is s itself
          std::copy(s, s + m * n_out, post);
        } else {
          post_activity(s, pl.feedback[b], pl.feedback_bias[b], post_ff, pl.beta[b][0],
                        !is_output && relu_feedback, buf + bt_off, post, m, ly.out, n_out);
        }
        float* const etav = buf + eta_off;  // eta per unit
        if (pl.eta_per_neuron)
          std::copy(pl.eta[b], pl.eta[b] + ly.out, etav);
        else
          std::fill(etav, etav + ly.out, pl.eta[b][0]);
        plastic_update(ly.wt + b * ly.in * ly.out, pre, post, etav, oja, buf + decay_off, m, ly.in, ly.out);
      }
    }
  });
  return y_hat;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("step", torch::wrap_pybind_function(step),
             "step(weights, biases, x, y, plastic, feedback, feedback_bias, beta, eta, oja, target, "
             "relu_feedback, classification) -> y_hat: one fused in-place lifetime step (see evoplast.fused)");
}
