/* One LSTM step's elementwise work in one pass over the B x H units (charrnn/cells/native.py compiles it).

   Forward, from the pre-activations gates[b] + rec[b] = (o, i, f, g) (each H wide, a row of 4H per stream; gates
   holds the input projection, rec the recurrent product):
       o, i, f = sigmoid(.), g = tanh(.)   (written over the input projection: the backward reads them)
       c = f c_prev + i g;  tanh_c = tanh(c);  h = o tanh_c
   Backward, with dh the gradient w.r.t. h_t and dc (in) the gradient w.r.t. c_{t+1}, f_next the forget gate of
   step t + 1 (dc is 0 at the window's last step):
       dc (out) = dh o (1 - tanh_c^2) + dc f_next
       d pre = (dh tanh_c o (1 - o),  dc g i (1 - i),  dc c_prev f (1 - f),  dc i (1 - g^2))

   sigmoid(x) = 1 / (1 + exp(-x)) and tanh(x) = 2 / (1 + exp(-2x)) - 1 both saturate exactly when exp
   overflows to infinity. exp is declared SIMD-callable, so the loops call glibc's vector exp (libmvec, within 4
   ulp); everything else is IEEE arithmetic (no -ffast-math): infinities and NaN behave as in torch, and a NaN
   reaches the state and the gradients, where charrnn's divergence guard finds it. */

#pragma omp declare simd notinbranch
float expf(float);
#pragma omp declare simd notinbranch
double exp(double);

#define LSTM_STEP(T, SUFFIX, EXP)                                                                           \
    void lstm_forward_##SUFFIX(T *restrict gates, const T *restrict rec, const T *restrict c_prev,          \
                               T *restrict c, T *restrict tanh_c, T *restrict h, long B, long H) {         \
        for (long b = 0; b < B; b++) {                                                                      \
            T *o = gates + 4 * H * b, *i = o + H, *f = i + H, *g = f + H;                                   \
            const T *ro = rec + 4 * H * b, *ri = ro + H, *rf = ri + H, *rg = rf + H, *cp = c_prev + H * b;  \
            T *cn = c + H * b, *tc = tanh_c + H * b, *hn = h + H * b;                                       \
            _Pragma("omp simd") for (long j = 0; j < H; j++) {                                              \
                T oj = 1 / (1 + EXP(-(o[j] + ro[j]))), ij = 1 / (1 + EXP(-(i[j] + ri[j])));                 \
                T fj = 1 / (1 + EXP(-(f[j] + rf[j]))), gj = 2 / (1 + EXP(-2 * (g[j] + rg[j]))) - 1;         \
                T cj = fj * cp[j] + ij * gj;                                                                \
                T tcj = 2 / (1 + EXP(-2 * cj)) - 1;                                                         \
                o[j] = oj, i[j] = ij, f[j] = fj, g[j] = gj;                                                 \
                cn[j] = cj, tc[j] = tcj, hn[j] = oj * tcj;                                                  \
            }                                                                                               \
        }                                                                                                   \
    }                                                                                                       \
                                                                                                            \
    void lstm_backward_##SUFFIX(T *restrict dpre, T *restrict dc, const T *restrict gates,                  \
                                const T *restrict c_prev, const T *restrict tanh_c, const T *restrict dh,    \
                                const T *restrict gates_next, long B, long H) {                             \
        for (long b = 0; b < B; b++) {                                                                      \
            const T *o = gates + 4 * H * b, *i = o + H, *f = i + H, *g = f + H;                             \
            const T *f_next = gates_next + 4 * H * b + 2 * H;                                               \
            const T *cp = c_prev + H * b, *tc = tanh_c + H * b, *dhb = dh + H * b;                          \
            T *d_o = dpre + 4 * H * b, *d_i = d_o + H, *d_f = d_i + H, *d_g = d_f + H, *dcb = dc + H * b;   \
            _Pragma("omp simd") for (long j = 0; j < H; j++) {                                              \
                T dcj = dhb[j] * o[j] * (1 - tc[j] * tc[j]) + dcb[j] * f_next[j];                           \
                d_o[j] = dhb[j] * tc[j] * o[j] * (1 - o[j]);                                                \
                d_i[j] = dcj * g[j] * i[j] * (1 - i[j]);                                                    \
                d_f[j] = dcj * cp[j] * f[j] * (1 - f[j]);                                                   \
                d_g[j] = dcj * i[j] * (1 - g[j] * g[j]);                                                    \
                dcb[j] = dcj;                                                                               \
            }                                                                                               \
        }                                                                                                   \
    }

LSTM_STEP(float, float32, expf)
LSTM_STEP(double, float64, exp)
