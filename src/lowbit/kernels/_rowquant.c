/* Fused prologue and epilogue of the per-token int8 linear (kernels/int8.py).
 *
 * Per-token W8A8 spends more time in the element-wise steps around torch._int_mm than in
 * the int8 GEMM itself when each step is a separate torch op over activation-sized tensors
 * (abs, amax, div, round, clamp, cast; then cast, two muls, add): memory traffic, not
 * arithmetic. These two loops do each side in one pass over the data.
 *
 * The arithmetic is that of formats/affine.py and the torch fallback, bit for bit
 * (compiled with -ffp-contract=off), see the two functions below.
 *
 * Plain C with no torch headers, called through ctypes (which releases the GIL). A tiny
 * CPython module init is included only so setuptools can build it as an extension.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define LOWBIT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LOWBIT_CLONES
#endif

#define FLOAT_BITS_MAX 0x7f7fffffu /* bit pattern of FLT_MAX; larger = Inf or NaN */

/* Codes of one row: clamp(round_half_even(x / s) + zp, qmin, 127), without a division per
 * value: v = x * (1/s) is within 3 ulp of fl(x / s), so the two round alike unless v lies
 * within |v| * 2^-20 of a half-integer; such a row (about 1 in 30 of 1536 values) is redone
 * with exact divisions. */
LOWBIT_CLONES
static void quantize_row(const float *row, int64_t k, float s, float zp, float qmin,
                         int8_t *out) {
    const float r = 1.0f / s;
    int near_tie = 0;
    for (int64_t j = 0; j < k; ++j) {
        const float v = row[j] * r;
        const float t = nearbyintf(v);
        near_tie |= fabsf(0.5f - fabsf(v - t)) <= fabsf(v) * 0x1p-20f;
        float c = t + zp;
        c = c < qmin ? qmin : c;
        c = c > 127.0f ? 127.0f : c;
        out[j] = (int8_t)c;
    }
    if (!near_tie && r <= FLT_MAX) { /* s subnormal: 1/s overflows, divide instead */
        return;
    }
    for (int64_t j = 0; j < k; ++j) {
        float c = nearbyintf(row[j] / s) + zp;
        c = c < qmin ? qmin : c;
        c = c > 127.0f ? 127.0f : c;
        out[j] = (int8_t)c;
    }
}

/* Float bits mapped to int32 so that integer order is float order (for non-NaN values):
 * integer min/max reductions vectorize without fast-math, float ones do not. */
static inline int32_t ordered_key(uint32_t bits) {
    return (int32_t)(bits ^ ((uint32_t)((int32_t)bits >> 31) & 0x7fffffffu));
}

static inline float from_ordered_key(int32_t key) {
    uint32_t bits = (uint32_t)key;
    if (key < 0) {
        bits ^= 0x7fffffffu;
    }
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* Quantizes the m rows of x (row stride ldx floats) to int8 codes q (dense, k per row),
 * one scale per row and, when zero_point is not NULL, one zero point per row:
 *   symmetric  (zero_point NULL): s = max|x| / 127 (1 for a zero row), codes in [-127, 127]
 *   asymmetric: lo = min(min x, 0), hi = max(max x, 0), s = (hi - lo) / 255 (1 if 0),
 *               zp = clamp(-128 - round(lo / s), -128, 127), codes in [-128, 127]
 * (formats/affine.py choose_qparams, restricted symmetric / "zero_point" form).
 * Returns the number of rows holding a NaN or an Inf (their codes are meaningless; the
 * caller raises).
 *
 * Runs on the calling thread. Splitting rows over pthreads was slower in a model
 * (measured, docs/decisions.md): torch's OpenMP workers keep spinning on the cores for a
 * while after each GEMM, and new threads fight them for those cores. */
LOWBIT_CLONES
int64_t lowbit_quantize_rows_int8(const float *x, int64_t m, int64_t k, int64_t ldx, int8_t *q,
                                  float *scale, int32_t *zero_point) {
    int64_t bad_rows = 0;
    for (int64_t i = 0; i < m; ++i) {
        const float *row = x + i * ldx;
        int8_t *out = q + i * k;
        /* |x| compared as unsigned bit patterns flags Inf/NaN, which sort above FLT_MAX. */
        uint32_t abs_max_bits = 0;
        int32_t key_min = INT32_MAX, key_max = INT32_MIN;
        for (int64_t j = 0; j < k; ++j) {
            uint32_t bits;
            memcpy(&bits, &row[j], sizeof bits);
            const uint32_t abs_bits = bits & 0x7fffffffu;
            abs_max_bits = abs_bits > abs_max_bits ? abs_bits : abs_max_bits;
            const int32_t key = ordered_key(bits);
            key_min = key < key_min ? key : key_min;
            key_max = key > key_max ? key : key_max;
        }
        if (abs_max_bits > FLOAT_BITS_MAX) {
            ++bad_rows;
            scale[i] = 1.0f;
            if (zero_point != NULL) {
                zero_point[i] = 0;
            }
            memset(out, 0, (size_t)k);
            continue;
        }
        if (zero_point == NULL) {
            float amax;
            memcpy(&amax, &abs_max_bits, sizeof amax);
            float s = amax / 127.0f;
            s = s > 0.0f ? s : 1.0f;
            scale[i] = s;
            quantize_row(row, k, s, 0.0f, -127.0f, out);
        } else {
            float lo = from_ordered_key(key_min), hi = from_ordered_key(key_max);
            lo = lo < 0.0f ? lo : 0.0f;
            hi = hi > 0.0f ? hi : 0.0f;
            float s = (hi - lo) / 255.0f;
            s = s > 0.0f ? s : 1.0f;
            float zp = -128.0f - nearbyintf(lo / s);
            zp = zp < -128.0f ? -128.0f : zp;
            zp = zp > 127.0f ? 127.0f : zp;
            scale[i] = s;
            zero_point[i] = (int32_t)zp;
            quantize_row(row, k, s, zp, -128.0f, out);
        }
    }
    return bad_rows;
}

/* out = ((float)(acc - zero_point * col_sum) * row_scale) * col_scale (+ bias) (relu),
 * m x n, dense; zero_point and col_sum NULL for symmetric rows. The zero-point correction
 * is exact int32 arithmetic. out may be acc's own memory (float32 and int32 have the same
 * size): then nothing is allocated. */
LOWBIT_CLONES
void lowbit_dequantize_int32(const int32_t *acc, int64_t m, int64_t n, const float *row_scale,
                             const int32_t *zero_point, const int32_t *col_sum,
                             const float *col_scale, const float *bias, int relu, float *out) {
    for (int64_t i = 0; i < m; ++i) {
        const int32_t *a = acc + i * n;
        float *y = out + i * n;
        const float s = row_scale[i];
        const int32_t z = zero_point != NULL ? zero_point[i] : 0;
        if (z != 0) {
            for (int64_t j = 0; j < n; ++j) {
                y[j] = (float)(a[j] - z * col_sum[j]) * s * col_scale[j];
            }
        } else {
            for (int64_t j = 0; j < n; ++j) {
                y[j] = (float)a[j] * s * col_scale[j];
            }
        }
        if (bias != NULL) {
            for (int64_t j = 0; j < n; ++j) {
                y[j] = y[j] + bias[j];
            }
        }
        if (relu) {
            for (int64_t j = 0; j < n; ++j) {
                y[j] = y[j] > 0.0f ? y[j] : 0.0f;
            }
        }
    }
}

static struct PyModuleDef rowquant_module = {
    PyModuleDef_HEAD_INIT, "_rowquant",
    "C loops for lowbit's per-token int8 linear; loaded with ctypes by kernels/native.py.",
    -1, NULL,
};

PyMODINIT_FUNC PyInit__rowquant(void) { return PyModule_Create(&rowquant_module); }
