/*
 * avx2_costs.c -- what an int8-state Adam step cannot avoid on an AVX2 CPU (no AVX-512), per
 * value and core, in L1:
 *
 *   gather   an 8-lane gather from a 256-float table (the map): the AVX2 int8 decoder reads
 *            each code's value so, the encoder each value's bucket entry: four table reads per
 *            parameter (two moments, decoded and encoded);
 *   scalar   the same table read one value at a time, for comparison;
 *   divider  Adam's square root and two divisions (sqrt(v) / bc2_sqrt + eps, then m / denom),
 *            8 lanes, which torch's exact arithmetic needs and every state format shares.
 *
 *     gcc -O2 -mavx2 -mfma bench/avx2_costs.c -o /tmp/avx2_costs && /tmp/avx2_costs
 *
 * Prints the CPU model and the median of 7 rounds of each. The step's time per parameter on T
 * cores is at least (4 * gather + divider) / T of these, before any other work.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define N 4096
#define REPS 20000
#define ROUNDS 7

static float table[256] __attribute__((aligned(64)));
static uint8_t codes[N];
static float out[N], x[N], y[N];

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double gather(void)
{
    const double t0 = now();
    for (int r = 0; r < REPS; ++r) {
        for (int i = 0; i < N; i += 8) {
            const __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(codes + i)));
            _mm256_storeu_ps(out + i, _mm256_i32gather_ps(table, c, 4));
        }
        __asm__ volatile("" : : "r"(out) : "memory");
    }
    return (now() - t0) / REPS / N * 1e9;
}

static double scalar(void)
{
    const double t0 = now();
    for (int r = 0; r < REPS; ++r) {
        for (int i = 0; i < N; ++i) out[i] = table[codes[i]];
        __asm__ volatile("" : : "r"(out) : "memory");
    }
    return (now() - t0) / REPS / N * 1e9;
}

static double divider(void)
{
    const __m256 bc2_sqrt = _mm256_set1_ps(0.0316227766f), eps = _mm256_set1_ps(1e-8f);
    const double t0 = now();
    for (int r = 0; r < REPS; ++r) {
        for (int i = 0; i < N; i += 8) {
            const __m256 denom = _mm256_add_ps(
                _mm256_div_ps(_mm256_sqrt_ps(_mm256_loadu_ps(x + i)), bc2_sqrt), eps);
            _mm256_storeu_ps(out + i, _mm256_div_ps(_mm256_loadu_ps(y + i), denom));
        }
        __asm__ volatile("" : : "r"(out) : "memory");
    }
    return (now() - t0) / REPS / N * 1e9;
}

static int by_value(const void *a, const void *b)
{
    const double u = *(const double *)a, v = *(const double *)b;
    return (u > v) - (u < v);
}

static double median(double (*f)(void))
{
    double t[ROUNDS];
    for (int k = 0; k < ROUNDS; ++k) t[k] = f();
    qsort(t, ROUNDS, sizeof t[0], by_value);
    return t[ROUNDS / 2];
}

int main(void)
{
    char line[256], model[256] = "unknown";
    FILE *f = fopen("/proc/cpuinfo", "r");
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "model name", 10) == 0) {
            strcpy(model, strchr(line, ':') + 2);
            model[strcspn(model, "\n")] = 0;
            break;
        }
    if (f) fclose(f);
    srand(1);
    for (int i = 0; i < 256; ++i) table[i] = (float)i / 128.0f - 1.0f;
    for (int i = 0; i < N; ++i) {
        codes[i] = (uint8_t)rand();
        x[i] = (float)rand() / (float)RAND_MAX * 1e-4f + 1e-12f;   /* second moments */
        y[i] = ((float)rand() / (float)RAND_MAX - 0.5f) * 1e-2f;  /* first moments */
    }
    const double g = median(gather), s = median(scalar), d = median(divider);
    printf("cpu: %s\nns per value, one core, in L1, median of %d rounds:\n", model, ROUNDS);
    printf("  8-lane gather from a 256-float table  %.3f\n", g);
    printf("  the same read one value at a time     %.3f\n", s);
    printf("  Adam's sqrt and two divisions         %.3f\n", d);
    printf("int8 Adam's floor per parameter on 1 / 2 cores: %.2f / %.2f ns "
           "(4 table reads + the divisions)\n", 4 * g + d, (4 * g + d) / 2);
    return 0;
}
