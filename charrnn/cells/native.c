/* charrnn's C kernels (charrnn/cells/native.py compiles them): an LSTM step's elementwise work in training, and
   sampling's loop for the LSTM with its matrix-vector products (float64 sums of float32 or float64 weights, or
   float32 sums of float16 weights for sample.py --half).

   Training, one pass over the B x H units of a step. Forward, from the pre-activations gates[b] + rec[b] =
   (o, i, f, g) (each H wide, a row of 4H per stream; gates holds the input projection, rec the recurrent product):
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

#include <string.h>

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

/* charrnn's Adagrad (charrnn/optim.py) in one pass over the weights, as a part of a run (run_parts, below):
       mem += g g;  p -= lr g / sqrt(mem + eps)
   a[0] points at `count` = a[1] rows (p, g, mem, n) of a list of tensors laid end to end, a[2] .. a[3] is the
   part's range of that whole, a[4] and a[5] hold lr and eps as doubles. torch's four list operations took four
   passes and, in blocks, handed Python's lock between the threads at each. */
#define ADAGRAD(T, SUFFIX, SQRT)                                                                                   \
    void adagrad_##SUFFIX##_part(const long *a) {                                                                  \
        const long *rows = (const long *)a[0];                                                                     \
        double lr, eps;                                                                                            \
        __builtin_memcpy(&lr, &a[4], sizeof lr), __builtin_memcpy(&eps, &a[5], sizeof eps);                        \
        const T step = (T)-lr, add = (T)eps;                                                                       \
        for (long i = 0, offset = 0; i < a[1]; offset += rows[4 * i + 3], i++) {                                   \
            long first = a[2] > offset ? a[2] - offset : 0, end = a[3] - offset;                                   \
            end = end < rows[4 * i + 3] ? end : rows[4 * i + 3];                                                   \
            T *restrict p = (T *)rows[4 * i], *restrict mem = (T *)rows[4 * i + 2];                                \
            const T *restrict g = (const T *)rows[4 * i + 1];                                                      \
            _Pragma("omp simd") for (long j = first; j < end; j++) {                                               \
                T m = mem[j] + g[j] * g[j];                                                                        \
                mem[j] = m;                                                                                        \
                p[j] += step * g[j] / SQRT(m + add);                                                               \
            }                                                                                                      \
        }                                                                                                          \
    }
ADAGRAD(float, float32, __builtin_sqrtf)
ADAGRAD(double, float64, __builtin_sqrt)

/* Training's recurrent products in float32 on AVX-512 CPUs, and the LSTM's and the GRU's whole window loops around
   them.

   out (M x N) = x (M x K, row stride ldx) W^T [+ add], W packed once per window into panels of 32 of its rows
   (output columns), k-major: Wp[(p K + k) 32 + j] = W[32 p + j][k], zero past N. The kernel holds 8 rows x 32
   columns of out in 16 AVX-512 registers and, per k, loads 32 weights and broadcasts 8 inputs: 16 FMAs for 10
   loads, which keeps the FMA unit busy. At the LSTM's step shapes (32 x 256 by 256 x 1024, 32 x 512 by 512 x 2048)
   it runs at 108-112 GFLOP/s on one AMD EPYC core (the core's peak), oneDNN's packed product at 94-105 with torch's
   call around it. Called from one C loop per window, the product and the elementwise step cost no Python at all. */
#ifdef __AVX512F__
#include <immintrin.h>
#define PANEL 32

/* W[n][k] at W[n * sn + k * sk], so both W (sn = K, sk = 1) and a transposed view (sn = 1) pack without a copy;
   each reads W along its contiguous dimension. */
void pack_panels_f32(const float *restrict W, long sn, long sk, float *restrict Wp, long N, long K) {
    for (long p = 0; p * PANEL < N; p++) {
        float *panel = Wp + p * K * PANEL;
        if (sk == 1) {
            for (long j = 0; j < PANEL; j++) {
                long n = p * PANEL + j;
                for (long k = 0; k < K; k++) panel[k * PANEL + j] = n < N ? W[n * sn + k] : 0.0f;
            }
        } else {
            for (long k = 0; k < K; k++)
                for (long j = 0; j < PANEL; j++) {
                    long n = p * PANEL + j;
                    panel[k * PANEL + j] = n < N ? W[n * sn + k * sk] : 0.0f;
                }
        }
    }
}

#define PRODUCT_ROWS(R, ...)                                                                                     \
    static void product_rows_##R(const float *restrict a, long lda, const float *restrict w, long K,             \
                                 float *restrict o, long ldo, const float *restrict add, long ldadd,             \
                                 __mmask16 m0, __mmask16 m1) {                                                   \
        __m512 c0[R], c1[R];                                                                                     \
        for (int r = 0; r < R; r++) c0[r] = c1[r] = _mm512_setzero_ps();                                         \
        for (long k = 0; k < K; k++) {                                                                           \
            __m512 w0 = _mm512_loadu_ps(w + k * PANEL), w1 = _mm512_loadu_ps(w + k * PANEL + 16);                 \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {                                               \
                __m512 b = _mm512_set1_ps(a[r * lda + k]);                                                        \
                c0[r] = _mm512_fmadd_ps(b, w0, c0[r]);                                                           \
                c1[r] = _mm512_fmadd_ps(b, w1, c1[r]);                                                           \
            }                                                                                                    \
        }                                                                                                        \
        for (int r = 0; r < R; r++) {                                                                            \
            if (add) {                                                                                           \
                c0[r] = _mm512_add_ps(c0[r], _mm512_maskz_loadu_ps(m0, add + r * ldadd));                        \
                c1[r] = _mm512_add_ps(c1[r], _mm512_maskz_loadu_ps(m1, add + r * ldadd + 16));                   \
            }                                                                                                    \
            _mm512_mask_storeu_ps(o + r * ldo, m0, c0[r]);                                                       \
            _mm512_mask_storeu_ps(o + r * ldo + 16, m1, c1[r]);                                                  \
        }                                                                                                        \
    }
PRODUCT_ROWS(8)
PRODUCT_ROWS(1)

/* out = x W^T (+ add, which may be NULL); out and add have row strides ldo and ldadd. */
void product_f32(const float *restrict x, long ldx, const float *restrict Wp, float *restrict out, long ldo,
                 const float *restrict add, long ldadd, long M, long N, long K) {
    for (long p = 0; p * PANEL < N; p++) {
        long left = N - p * PANEL;
        __mmask16 m0 = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
        __mmask16 m1 = left >= 32 ? 0xFFFF : left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1);
        const float *w = Wp + p * K * PANEL;
        const float *ad = add ? add + p * PANEL : NULL;
        long m = 0;
        for (; m + 8 <= M; m += 8)
            product_rows_8(x + m * ldx, ldx, w, K, out + m * ldo + p * PANEL, ldo, ad ? ad + m * ldadd : NULL, ldadd, m0, m1);
        for (; m < M; m++)
            product_rows_1(x + m * ldx, ldx, w, K, out + m * ldo + p * PANEL, ldo, ad ? ad + m * ldadd : NULL, ldadd, m0, m1);
    }
}

/* The window loops below run B streams of buffers that hold S streams per step (S >= B): a block of streams
   b0 .. b0 + B - 1 of a time-major (T, S, ...) buffer is contiguous within each step, S rows apart from step to
   step, so threads each run the loop over their own block of the same buffers (charrnn/cells/fast.py). The
   pointers passed are those of the block's first stream. A row's product is the same sum in the same order in
   any block, so every stream's result is the same bits however the streams are split. */

/* The first layer's input is one character a stream and step, so its input projection is a row of the table
   Wxh^T + bh (V x GH) picked by the character: the window loops gather those rows step by step (table and chars
   given; a layer above passes NULL for both, its projection already in gates), and the backward adds each row's
   gradient into a table of dtables (each V x GH, zero at the start) as it produces it: stream b's at offset
   table_of[b], so that streams split into blocks of their own tables give the same sums whether the blocks run
   apart or as one. A pass of its own before or after the loop ran on one thread, bound by memory (0.4-0.9 ms each
   at 256 units, 1,600 rows); in the loop each thread gathers and adds its own streams' rows. chars is (T, S) and
   table_of (S), each at the block's first stream. */
static void gather_rows(float *restrict rows, const float *restrict table, const long *restrict chars, long B,
                        long GH) {
    for (long b = 0; b < B; b++) memcpy(rows + GH * b, table + GH * chars[b], GH * sizeof(float));
}

static void scatter_row(float *restrict dtable, const float *restrict row, long GH) {
#pragma omp simd
    for (long j = 0; j < GH; j++) dtable[j] += row[j];
}

/* The LSTM layer's forward over a window (lstm.py's forward, float32): for each t, rec = h_t Whh^T (Whh packed in
   Wp), then the step; hs, cs hold T + 1 states (the starting one first), rec is B x 4H of scratch. */
void lstm_forward_window_f32(float *gates, const float *table, const long *chars, const float *Wp, float *hs,
                             float *cs, float *tanh_c, float *rec, long T, long B, long H, long S) {
    long G = 4 * H * S, N = H * S;
    for (long t = 0; t < T; t++) {
        if (table) gather_rows(gates + t * G, table, chars + t * S, B, 4 * H);
        product_f32(hs + t * N, H, Wp, rec, 4 * H, NULL, 0, B, 4 * H, H);
        lstm_forward_float32(gates + t * G, rec, cs + t * N, cs + (t + 1) * N, tanh_c + t * N, hs + (t + 1) * N, B, H);
    }
}

/* The backward over a window: dh = dpre_{t+1} Whh + dh_out[t] (Whh^T packed in WpT), then the step; dc (B x H)
   starts at zero, dh is B x H of scratch. At the last step dh is dh_out's and dc's forget gate any finite one. */
void lstm_backward_window_f32(float *dpre, float *dtables, const long *table_of, const long *chars, float *dc,
                              const float *gates, const float *cs, const float *tanh_c, const float *dh_out,
                              const float *WpT, float *dh, long T, long B, long H, long S) {
    long G = 4 * H * S, N = H * S;
    for (long t = T - 1; t >= 0; t--) {
        const float *dh_t = dh_out + t * N, *next_gates = gates + t * G;
        if (t < T - 1) {
            product_f32(dpre + (t + 1) * G, 4 * H, WpT, dh, H, dh_out + t * N, H, B, H, 4 * H);
            dh_t = dh, next_gates = gates + (t + 1) * G;
        }
        lstm_backward_float32(dpre + t * G, dc, gates + t * G, cs + t * N, tanh_c + t * N, dh_t, next_gates, B, H);
        for (long b = 0; dtables && b < B; b++)
            scatter_row(dtables + table_of[b] + 4 * H * chars[t * S + b], dpre + t * G + 4 * H * b, 4 * H);
    }
}

/* The GRU layer's forward over a window (gru.py's forward, float32). Per step, rec = h_t Whh^T (Whh packed in Wp;
   B x 3H of scratch), then for each unit, with gates[t] = (x_r, x_z, x_n) the input projection:
       r = sigmoid(x_r + rec_r), z = sigmoid(x_z + rec_z), hn = rec_n + b_hn, n = tanh(x_n + r hn)
       h_minus_n = h_t - n,  h_{t+1} = n + z h_minus_n
   gates[t] becomes (r, z, hn), what the backward reads; ns and h_minus_n are (T, S, H), hs (T + 1, S, H). */
void gru_forward_window_f32(float *gates, const float *table, const long *chars, const float *Wp, const float *bhn,
                            float *hs, float *ns, float *h_minus_n, float *rec, long T, long B, long H, long S) {
    long G = 3 * H * S, N = H * S;
    for (long t = 0; t < T; t++) {
        if (table) gather_rows(gates + t * G, table, chars + t * S, B, 3 * H);
        product_f32(hs + t * N, H, Wp, rec, 3 * H, NULL, 0, B, 3 * H, H);
        for (long b = 0; b < B; b++) {
            float *r = gates + t * G + 3 * H * b, *z = r + H, *xn = z + H;
            const float *rr = rec + 3 * H * b, *rz = rr + H, *rn = rz + H, *h = hs + t * N + H * b;
            float *n = ns + t * N + H * b, *d = h_minus_n + t * N + H * b, *h_next = hs + (t + 1) * N + H * b;
#pragma omp simd
            for (long j = 0; j < H; j++) {
                float rj = 1 / (1 + expf(-(r[j] + rr[j]))), zj = 1 / (1 + expf(-(z[j] + rz[j])));
                float hnj = rn[j] + bhn[j];
                float nj = 2 / (1 + expf(-2 * (xn[j] + rj * hnj))) - 1;
                float dj = h[j] - nj;
                r[j] = rj, z[j] = zj, xn[j] = hnj;
                n[j] = nj, d[j] = dj, h_next[j] = nj + zj * dj;
            }
        }
    }
}

/* The GRU's backward over a window: with dh the gradient w.r.t. h_t,
       dh_t = dh_out[t] + drec_{t+1} Whh + dh_{t+1} z_{t+1}   (dh_out[T - 1] alone at the last step)
       dn = dh (1 - z)(1 - n^2)
       drec = (dn hn r (1 - r),  dh h_minus_n z (1 - z),  dn r),   dx_n = dn
   drec (T, S, 3H) is what the recurrent product's gradients need, dx_n (T, S, H) the input projection's n part.
   WpT is Whh^T packed; dh (B x H) carries dh_{t+1} and starts at zero, so that at the last step dh_out[T - 1] + 0 z
   is dh_out's, for any finite z; sum (B x H) is scratch. */
void gru_backward_window_f32(float *drec, float *dx_n, float *dtables, const long *table_of, const long *chars,
                             const float *gates, const float *ns, const float *h_minus_n, const float *dh_out,
                             const float *WpT, float *dh, float *sum, long T, long B, long H, long S) {
    long G = 3 * H * S, N = H * S;
    for (long t = T - 1; t >= 0; t--) {
        const float *z_next = gates + t * G + H, *summed = dh_out + t * N;
        if (t < T - 1) {
            product_f32(drec + (t + 1) * G, 3 * H, WpT, sum, H, dh_out + t * N, H, B, H, 3 * H);
            z_next = gates + (t + 1) * G + H, summed = sum;
        }
        for (long b = 0; b < B; b++) {
            const float *r = gates + t * G + 3 * H * b, *z = r + H, *hn = z + H, *zn = z_next + 3 * H * b;
            const float *n = ns + t * N + H * b, *d = h_minus_n + t * N + H * b, *s = summed + H * b;
            float *dr = drec + t * G + 3 * H * b, *dz = dr + H, *dn_rec = dz + H, *dxn = dx_n + t * N + H * b;
            float *dhb = dh + H * b;
#pragma omp simd
            for (long j = 0; j < H; j++) {
                float dhj = s[j] + dhb[j] * zn[j];
                float dnj = dhj * ((1 - z[j]) * (1 - n[j] * n[j]));
                dr[j] = dnj * hn[j] * r[j] * (1 - r[j]);
                dz[j] = dhj * d[j] * z[j] * (1 - z[j]);
                dn_rec[j] = dnj * r[j];
                dxn[j] = dnj, dhb[j] = dhj;
            }
            if (dtables) { /* the input's gradient: r and z as the recurrent one's, n without r */
                float *d = dtables + table_of[b] + 3 * H * chars[t * S + b];
                scatter_row(d, dr, 2 * H);
                scatter_row(d + 2 * H, dxn, H);
            }
        }
    }
}

/* The packing and the window loops as parts of a run (run_parts, below): their arguments in one array, in the
   order of their parameters. */
#define P(i) (void *)a[i]
#define PART(NAME, ...) \
    void NAME##_part(const long *a) { NAME(__VA_ARGS__); }
PART(pack_panels_f32, P(0), a[1], a[2], P(3), a[4], a[5])
PART(lstm_forward_window_f32, P(0), P(1), P(2), P(3), P(4), P(5), P(6), P(7), a[8], a[9], a[10], a[11])
PART(lstm_backward_window_f32, P(0), P(1), P(2), P(3), P(4), P(5), P(6), P(7), P(8), P(9), P(10), a[11], a[12],
     a[13], a[14])
PART(gru_forward_window_f32, P(0), P(1), P(2), P(3), P(4), P(5), P(6), P(7), P(8), a[9], a[10], a[11], a[12])
PART(gru_backward_window_f32, P(0), P(1), P(2), P(3), P(4), P(5), P(6), P(7), P(8), P(9), P(10), P(11), a[12], a[13],
     a[14], a[15])
#endif

/* charrnn's threads (parallel.py) wait for the next blocks of a window, or for the last block, here: spinning while
   *word == value, for at most max_ns nanoseconds; returns whether it changed. ctypes lets go of Python's lock during
   the call, and the thread stays on its CPU: with threads put to sleep between a step's parts, each part of a few
   blocks cost about a quarter of a millisecond more than its blocks' work on a virtual machine (docs/cores.md). */
#include <time.h>
int spin_while(const volatile long *word, long value, long max_ns) {
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 1;; i++) {
        if (__atomic_load_n(word, __ATOMIC_ACQUIRE) != value) return 1;
        if (i % 64 == 0) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            if ((now.tv_sec - start.tv_sec) * 1000000000L + (now.tv_nsec - start.tv_nsec) > max_ns) return 0;
        }
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
}

/* A run of C parts on charrnn's threads (parallel.py's run_parts): the caller posts the parts, takes them one at a
   time with every helper spinning here, and waits for the last; no thread needs Python's lock between the post and
   the return, so a helper starts its part microseconds after the post, where returning to Python first (to take
   the lock from the caller, which lets go of it only inside its own part) cost 0.1-0.2 ms a run on a virtual
   machine. Part i calls part(args + i * PART_ARGS).

   board->state packs what a helper must read in one atomic word: the run's number (bits 32-63), whether its parts
   are C (bit 31; else a Python job, which serve returns to run), how many there are (16-30) and how many were
   taken (0-15); runs are numbered modulo 2^31. A thread owns part i of run r once its compare-and-swap moved
   "taken" from i to i + 1 in run r's word; run r cannot end before every part taken is finished, so its fields
   stay valid until then. */
#define PART_ARGS 16
struct board {
    volatile long posted; /* the last run's number: helpers spin on it */
    volatile long state;
    volatile long finished; /* parts of the run finished */
    void (*part)(const long *);
    const long *args;
};

static void take_parts(struct board *b, long run) {
    long s = __atomic_load_n(&b->state, __ATOMIC_ACQUIRE);
    while ((s >> 32) == run && (s >> 31 & 1) && (s & 0xFFFF) < (s >> 16 & 0x7FFF)) {
        if (__atomic_compare_exchange_n(&b->state, &s, s + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            b->part(b->args + (s & 0xFFFF) * PART_ARGS);
            __atomic_add_fetch(&b->finished, 1, __ATOMIC_RELEASE);
            s = __atomic_load_n(&b->state, __ATOMIC_ACQUIRE);
        }
    }
}

/* The next run (a Python job when part is NULL), posted to the helpers. */
void post_run(struct board *b, void (*part)(const long *), const long *args, long count) {
    long run = (b->posted + 1) & 0x7FFFFFFF;
    b->part = part, b->args = args, b->finished = 0;
    __atomic_store_n(&b->state, run << 32 | (long)(part != 0) << 31 | count << 16, __ATOMIC_RELEASE);
    __atomic_store_n(&b->posted, run, __ATOMIC_RELEASE);
}

/* The caller's side of a C run just posted: its parts, then the wait for those taken elsewhere (spinning, then
   yielding the CPU after max_ns: a helper slowed by another process still finishes). */
#include <sched.h>
void run_parts(struct board *b, long max_ns) {
    long s = __atomic_load_n(&b->state, __ATOMIC_ACQUIRE), count = s >> 16 & 0x7FFF, finished;
    take_parts(b, s >> 32);
    while ((finished = __atomic_load_n(&b->finished, __ATOMIC_ACQUIRE)) != count)
        if (!spin_while(&b->finished, finished, max_ns)) sched_yield();
}

/* A helper's side: run the C parts of each run posted after *seen, spinning up to max_ns between them; returns 1
   when a Python job is posted (*seen its number), 0 when none came for max_ns. */
int serve(struct board *b, long *seen, long max_ns) {
    for (;;) {
        if (!spin_while(&b->posted, *seen, max_ns)) return 0;
        *seen = __atomic_load_n(&b->posted, __ATOMIC_ACQUIRE);
        long s = __atomic_load_n(&b->state, __ATOMIC_ACQUIRE);
        if (!(s >> 31 & 1)) return 1;
        take_parts(b, s >> 32);
    }
}

/* Sampling's step for one stream in float64 (charrnn/sampling.py's NumpyStack): from the input pre-activation inp and
   the recurrent product rec, each 4H long with the sigmoid gates' rows halved by the caller, update c and h in place:
   sigmoid(2y) = 1 / (1 + exp(-2y)), tanh(y) = 2 / (1 + exp(-2y)) - 1. */
static void lstm_sample_step(const double *restrict inp, const double *restrict rec, double *restrict h,
                             double *restrict c, long H) {
    const double *io = inp, *ii = io + H, *iff = ii + H, *ig = iff + H;
    const double *ro = rec, *ri = ro + H, *rf = ri + H, *rg = rf + H;
#pragma omp simd
    for (long j = 0; j < H; j++) {
        double o = 1 / (1 + exp(-2 * (io[j] + ro[j]))), i = 1 / (1 + exp(-2 * (ii[j] + ri[j])));
        double f = 1 / (1 + exp(-2 * (iff[j] + rf[j]))), g = 2 / (1 + exp(-2 * (ig[j] + rg[j]))) - 1;
        double cj = f * c[j] + i * g;
        c[j] = cj;
        h[j] = o * (2 / (1 + exp(-2 * cj)) - 1);
    }
}

/* out = W x with float64 x and sums, eight rows at a time (independent sums keep the FMA units busy). W is float64,
   or float32 for sampling's large matrices: the weights as trained, so exact, in half the bytes, which is what a
   product of several megabytes per character waits for. */
#define MATVEC(NAME, W_T)                                                                                       \
    void NAME(const W_T *restrict W, const double *restrict x, double *restrict out, long rows, long cols) {    \
        long i = 0;                                                                                             \
        for (; i + 8 <= rows; i += 8) {                                                                         \
            const W_T *w = W + i * cols;                                                                        \
            double s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;                              \
            _Pragma("omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7)") for (long j = 0; j < cols; j++) { \
                double xj = x[j];                                                                               \
                s0 += (double)w[j] * xj, s1 += (double)w[cols + j] * xj;                                        \
                s2 += (double)w[2 * cols + j] * xj, s3 += (double)w[3 * cols + j] * xj;                         \
                s4 += (double)w[4 * cols + j] * xj, s5 += (double)w[5 * cols + j] * xj;                         \
                s6 += (double)w[6 * cols + j] * xj, s7 += (double)w[7 * cols + j] * xj;                         \
            }                                                                                                   \
            out[i] = s0, out[i + 1] = s1, out[i + 2] = s2, out[i + 3] = s3;                                     \
            out[i + 4] = s4, out[i + 5] = s5, out[i + 6] = s6, out[i + 7] = s7;                                 \
        }                                                                                                       \
        for (; i < rows; i++) {                                                                                 \
            double s = 0;                                                                                       \
            _Pragma("omp simd reduction(+ : s)") for (long j = 0; j < cols; j++) s += (double)W[i * cols + j] * x[j]; \
            out[i] = s;                                                                                         \
        }                                                                                                       \
    }

MATVEC(matvec_f32_f64, float)
static MATVEC(matvec_f64, double)

#if defined(__F16C__) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define HALF_WEIGHTS 1

static inline float sum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* out = W x for sample.py --half: W float16 (NumPy's bits), float32 sums of x rounded to float32 (in xf, cols
   floats of scratch), eight rows of eight columns at a time. A quarter of float64's bytes: a 2 x 512 LSTM reads
   6.4 MB per character instead of 12.7 (float32) or 25 (float64). Compiled only for CPUs with F16C, AVX2 and FMA
   (x86-64-v3); elsewhere the symbol is absent and sampling ignores --half (native.half_available). */
void matvec_f16(const unsigned short *restrict W, const double *restrict x, double *restrict out, long rows,
                long cols, float *restrict xf) {
    for (long j = 0; j < cols; j++) xf[j] = (float)x[j];
    long wide = cols & ~7L, i = 0;
    for (; i + 8 <= rows; i += 8) {
        const unsigned short *w = W + i * cols;
        __m256 s[8];
        for (int r = 0; r < 8; r++) s[r] = _mm256_setzero_ps();
        for (long j = 0; j < wide; j += 8) {
            __m256 xv = _mm256_loadu_ps(xf + j);
            for (int r = 0; r < 8; r++)
                s[r] = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + r * cols + j))), xv, s[r]);
        }
        for (int r = 0; r < 8; r++) {
            float t = sum8(s[r]);
            for (long j = wide; j < cols; j++) t += _cvtsh_ss(w[r * cols + j]) * xf[j];
            out[i + r] = t;
        }
    }
    for (; i < rows; i++) {
        float t = 0;
        for (long j = 0; j < cols; j++) t += _cvtsh_ss(W[i * cols + j]) * xf[j];
        out[i] = t;
    }
}
#endif

/* Sampling's product by layer matrix W of the given kind: 0 float64, 1 float32 (float64 sums), 2 float16 (passed
   only when matvec_f16 is compiled: charrnn makes float16 matrices only then). */
static void matvec(int kind, const void *W, const double *x, double *out, long rows, long cols, float *scratch) {
#ifdef HALF_WEIGHTS
    if (kind == 2) {
        matvec_f16(W, x, out, rows, cols, scratch);
        return;
    }
#endif
    if (kind == 1)
        matvec_f32_f64(W, x, out, rows, cols);
    else
        matvec_f64(W, x, out, rows, cols);
}

/* Sampler.choose's rule: the first maximum when greedy, else the inverse CDF of exp((logits - max) / temperature)
   at u * total, the last character with non-zero probability owning u * total when it rounds up to total. */
static long choose(const double *logits, long V, double inv_temperature, int greedy, double u, double *cdf) {
    long best = 0;
    for (long i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (greedy) return best;
    double total = 0;
    for (long i = 0; i < V; i++) cdf[i] = total += exp((logits[i] - logits[best]) * inv_temperature);
    double target = u * total;
    for (long i = 0; i < V; i++)
        if (cdf[i] > target) return i;
    long i = 0;
    while (cdf[i] < total) i++;
    return i;
}

/* Sampling's loop for a stack of L LSTM layers (charrnn/sampling.py's NumpyStack, whose buffers these are): n characters,
   each drawn from the current logits with the uniform u[k], then every layer advanced over it. Layer l: matrix W[l]
   (rows[l] x (H + 1): [Whh | 0; W_above | b_above], of kind[l], see matvec), h1[l] = [h; 1], c[l], and
   out[l] = W[l] h1[l], whose first 4H entries are the next recurrent product and the rest the layer above's input
   pre-activation (the top layer's: the logits). inputs: layer 0's input pre-activation, a row of 4H per character.
   scratch: H + 1 floats for the float16 product. */
void lstm_generate(long n, const double *u, long *chars, long L, long H, long V, const double *inputs,
                   const void *const *W, const long *rows, const int *kind, double *const *h1, double *const *c,
                   double *const *out, double inv_temperature, int greedy, double *cdf, float *scratch) {
    for (long k = 0; k < n; k++) {
        long x = choose(out[L - 1] + 4 * H, V, inv_temperature, greedy, u[k], cdf);
        chars[k] = x;
        const double *inp = inputs + x * 4 * H;
        for (long l = 0; l < L; l++) {
            lstm_sample_step(inp, out[l], h1[l], c[l], H);
            matvec(kind[l], W[l], h1[l], out[l], rows[l], H + 1, scratch);
            inp = out[l] + 4 * H;
        }
    }
}
