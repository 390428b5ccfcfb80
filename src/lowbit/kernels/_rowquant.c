/* Fused prologue and epilogue of the per-token int8 linear (kernels/int8.py).
 *
 * Per-token W8A8 spends more time in the element-wise steps around torch._int_mm than in
 * the int8 GEMM itself when each step is a separate torch op over activation-sized tensors
 * (abs, amax, div, round, clamp, cast; then cast, two muls, add): memory traffic, not
 * arithmetic. These two loops do each side in one pass over the data.
 *
 * The arithmetic is that of formats/affine.py and the torch fallback, bit for bit:
 *   s_m = max_k |x_mk| / 127 (1 where the row is all zeros), q = round_half_even(x / s_m)
 *   y_mn = ((float)acc_mn * s_m) * w_n + b_n            (compiled with -ffp-contract=off)
 *
 * Plain C with no torch headers, called through ctypes (which releases the GIL). A tiny
 * CPython module init is included only so setuptools can build it as an extension.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define LOWBIT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LOWBIT_CLONES
#endif

#define FLOAT_BITS_MAX 0x7f7fffffu /* bit pattern of FLT_MAX; larger = Inf or NaN */

/* Rounds one row's codes as round_half_even(x / s) would, without a division per value:
 * v = x * (1/s) is within 3 ulp of fl(x / s), so the two round alike unless v lies within
 * |v| * 2^-20 of a half-integer; such a row (about 1 in 30 of 1536 values) is redone
 * with exact divisions. Returns 1 if it was. */
LOWBIT_CLONES
static int quantize_row(const float *row, int64_t k, float s, int8_t *out) {
    const float r = 1.0f / s;
    int near_tie = 0;
    for (int64_t j = 0; j < k; ++j) {
        const float v = row[j] * r;
        const float t = nearbyintf(v);
        near_tie |= fabsf(0.5f - fabsf(v - t)) <= fabsf(v) * 0x1p-20f;
        float c = t < -127.0f ? -127.0f : t;
        c = c > 127.0f ? 127.0f : c;
        out[j] = (int8_t)c;
    }
    if (!near_tie && r <= FLT_MAX) { /* s subnormal: 1/s overflows, divide instead */
        return 0;
    }
    for (int64_t j = 0; j < k; ++j) {
        float v = nearbyintf(row[j] / s);
        v = v < -127.0f ? -127.0f : v;
        v = v > 127.0f ? 127.0f : v;
        out[j] = (int8_t)v;
    }
    return 1;
}

/* Quantizes the m rows of x (row stride ldx floats) to int8 codes q (dense, k per row) and
 * one scale per row. Returns the number of rows holding a NaN or an Inf (their codes are
 * meaningless; the caller raises).
 *
 * Both entry points run on the calling thread. Splitting rows over pthreads was slower in
 * a model (measured, docs/decisions.md): torch's OpenMP workers keep spinning on the cores
 * for a while after each GEMM, and new threads fight them for those cores. */
LOWBIT_CLONES
int64_t lowbit_quantize_rows_int8(const float *x, int64_t m, int64_t k, int64_t ldx, int8_t *q,
                                  float *scale) {
    int64_t bad_rows = 0;
    for (int64_t i = 0; i < m; ++i) {
        const float *row = x + i * ldx;
        int8_t *out = q + i * k;
        /* |x| compared as unsigned bit patterns: same order as the floats, and one max
         * also flags Inf/NaN, which sort above FLT_MAX. Vectorizes without fast-math. */
        uint32_t max_bits = 0;
        for (int64_t j = 0; j < k; ++j) {
            uint32_t bits;
            memcpy(&bits, &row[j], sizeof bits);
            bits &= 0x7fffffffu;
            max_bits = bits > max_bits ? bits : max_bits;
        }
        if (max_bits > FLOAT_BITS_MAX) {
            ++bad_rows;
            scale[i] = 1.0f;
            memset(out, 0, (size_t)k);
            continue;
        }
        float amax;
        memcpy(&amax, &max_bits, sizeof amax);
        float s = amax / 127.0f;
        if (s == 0.0f) {
            s = 1.0f;
        }
        scale[i] = s;
        quantize_row(row, k, s, out);
    }
    return bad_rows;
}

/* out = ((float)acc * row_scale) * col_scale (+ bias) (relu), m x n, dense. out may be
 * acc's own memory (float32 and int32 have the same size): then nothing is allocated. */
LOWBIT_CLONES
void lowbit_dequantize_int32(const int32_t *acc, int64_t m, int64_t n, const float *row_scale,
                             const float *col_scale, const float *bias, int relu, float *out) {
    for (int64_t i = 0; i < m; ++i) {
        const int32_t *a = acc + i * n;
        float *y = out + i * n;
        const float s = row_scale[i];
        if (bias != NULL) {
            for (int64_t j = 0; j < n; ++j) {
                y[j] = (float)a[j] * s * col_scale[j] + bias[j];
            }
        } else {
            for (int64_t j = 0; j < n; ++j) {
                y[j] = (float)a[j] * s * col_scale[j];
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
