"""The C side of the step programs (`programs.py`): the loop that walks a program's words
(`EXECUTOR`), the packed products' panel kernel, and the threads that share a program's
products. Kept apart from the Python that writes the words, as the text a compiler reads;
`programs.py` says what each word means, and the comments here say why the C is as it is.
"""

EXECUTOR = """\
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>
#ifdef __x86_64__
#include <immintrin.h>
#define SEQGRAPH_PAUSE() _mm_pause()
#else
#define SEQGRAPH_PAUSE() ((void)0)
#endif
typedef void (*seqgraph_kernel)(const i64*);
typedef int (*seqgraph_threads)(void);
typedef void (*seqgraph_sgemm)(int, int, int, i64, i64, i64, float, const float*, i64,
                               const float*, i64, float, float*, i64);
typedef void (*seqgraph_dgemm)(int, int, int, i64, i64, i64, double, const double*, i64,
                               const double*, i64, double, double*, i64);
typedef void (*seqgraph_sgemv)(int, int, i64, i64, float, const float*, i64, const float*, i64,
                               float, float*, i64);
typedef void (*seqgraph_dgemv)(int, int, i64, i64, double, const double*, i64, const double*,
                               i64, double, double*, i64);
#define SEQGRAPH_ADD(T) { \\
    const i64 rows = q[1], cols = q[2], la = q[4], lb = q[6], lo = q[8]; \\
    const T* const x = (const T*)q[3]; const T* const y = (const T*)q[5]; T* const z = (T*)q[7]; \\
    for (i64 i = 0; i < rows; i++) { \\
        _Pragma("omp simd") \\
        for (i64 j = 0; j < cols; j++) z[i * lo + j] = x[i * la + j] + y[i * lb + j]; \\
    } }

/* A packed product (kinds 7, 8): C = A @ B, A's rows unit-stride, B a weight that every
   step multiplies by, copied on its first use in a run into panels of 2 x LANES columns, each
   panel its K rows one after another (64-byte aligned), so the inner loop reads B as one
   stream and packs nothing per call. Each element of C is the fused multiply-adds of its
   row and column in k order, as OpenBLAS's SkylakeX kernels sum within a block of k. Words:
   kind, gemm, P, A, lda, B, ldb, B's CBLAS transpose, C, ldc, M, N, K, first use, worth
   sharing over threads. */
#define SEQGRAPH_PACKED(T, V, LANES, SET1, LOAD, ZERO, FMA, STORE, MASK) \\
static void seqgraph_pack_##T(const i64* q, i64 p0, i64 p1) { \\
    const T* const b = (const T*)q[5]; T* const packed = (T*)q[2]; \\
    const i64 ldb = q[6], K = q[12], N = q[11]; const int trans = q[7] == 112; \\
    for (i64 p = p0; p < p1; p += 2 * LANES) { \\
        const i64 w = N - p < 2 * LANES ? N - p : 2 * LANES; \\
        T* const to = packed + p * K; \\
        for (i64 k = 0; k < K; k++) { \\
            for (i64 j = 0; j < w; j++) \\
                to[k * 2 * LANES + j] = trans ? b[(p + j) * ldb + k] : b[k * ldb + p + j]; \\
            for (i64 j = w; j < 2 * LANES; j++) to[k * 2 * LANES + j] = 0; \\
        } \\
    } \\
} \\
static void seqgraph_panels_##T(const i64* q, i64 p0, i64 p1) { \\
    const T* const a = (const T*)q[3]; const T* const packed = (const T*)q[2]; \\
    T* const c = (T*)q[8]; \\
    const i64 lda = q[4], ldc = q[9], M = q[10], N = q[11], K = q[12]; \\
    for (i64 p = p0; p < p1; p += 2 * LANES) { \\
        const i64 w = N - p < 2 * LANES ? N - p : 2 * LANES; \\
        const MASK m0 = w >= LANES ? (MASK)~0 : (MASK)((1u << w) - 1); \\
        const MASK m1 = w >= 2 * LANES ? (MASK)~0 \\
                        : w <= LANES   ? 0 : (MASK)((1u << (w - LANES)) - 1); \\
        const T* const panel = packed + p * K; \\
        for (i64 i = 0; i < M; i += 8) { \\
            const T* const ai = a + i * lda; T* const ci = c + i * ldc + p; \\
            const int rows = M - i < 8 ? (int)(M - i) : 8; \\
            V c0[8], c1[8]; \\
            for (int r = 0; r < 8; r++) { c0[r] = ZERO(); c1[r] = ZERO(); } \\
            if (rows == 8) { \\
                for (i64 k = 0; k < K; k++) { \\
                    const T* const row = panel + k * 2 * LANES; \\
                    const V w0 = LOAD(row), w1 = LOAD(row + LANES); \\
                    _Pragma("GCC unroll 8") \\
                    for (int r = 0; r < 8; r++) { \\
                        const V x = SET1(ai[r * lda + k]); \\
                        c0[r] = FMA(x, w0, c0[r]); c1[r] = FMA(x, w1, c1[r]); \\
                    } \\
                } \\
            } else { \\
                for (i64 k = 0; k < K; k++) { \\
                    const T* const row = panel + k * 2 * LANES; \\
                    const V w0 = LOAD(row), w1 = LOAD(row + LANES); \\
                    for (int r = 0; r < rows; r++) { \\
                        const V x = SET1(ai[r * lda + k]); \\
                        c0[r] = FMA(x, w0, c0[r]); c1[r] = FMA(x, w1, c1[r]); \\
                    } \\
                } \\
            } \\
            for (int r = 0; r < rows; r++) { \\
                STORE(ci + r * ldc, m0, c0[r]); STORE(ci + r * ldc + LANES, m1, c1[r]); \\
            } \\
        } \\
    } \\
}
#ifdef __AVX512F__
#define SEQGRAPH_HAS_PACKED 1
SEQGRAPH_PACKED(float, __m512, 16, _mm512_set1_ps, _mm512_load_ps, _mm512_setzero_ps,
                _mm512_fmadd_ps, _mm512_mask_storeu_ps, __mmask16)
SEQGRAPH_PACKED(double, __m512d, 8, _mm512_set1_pd, _mm512_load_pd, _mm512_setzero_pd,
                _mm512_fmadd_pd, _mm512_mask_storeu_pd, __mmask8)
#else
#define SEQGRAPH_HAS_PACKED 0
#endif

/* What a product's shares split: a packed product's columns (by panels); a BLAS
   product's rows (q[13] 2) or columns (q[13] 1). */
static i64 seqgraph_columns(const i64* q) {
    return q[0] == 1 || q[0] == 2 ? (q[13] == 2 ? q[4] : q[5]) : q[11];
}
/* An instruction's share for one of `parts` threads: a packed product's range of panels
   (packed first where this is the weight's first use in the run), or a BLAS call on a
   range of the product's rows or columns (the BLAS set to one thread meanwhile:
   `threads_shared`). */
static void seqgraph_part(const i64* q, int part, int parts) {
    if (q[0] == 9) {  /* a compiled loop's rows in two halves: words kind, f, all, half 1, 2 */
        ((seqgraph_kernel)q[1])((const i64*)q[3 + part]);
        return;
    }
    const i64 lanes = q[0] == 7 || q[0] == 1 ? 32 : 16, N = seqgraph_columns(q);
    const i64 panels = (N + lanes - 1) / lanes;
    const i64 p0 = panels * part / parts * lanes;
    i64 p1 = panels * (part + 1) / parts * lanes;
    if (p1 > N) p1 = N;
    if (q[0] == 1 || q[0] == 2) {
        const i64 size = q[0] == 1 ? 4 : 8, lda = q[8], ldb = q[10], ldc = q[12];
        const char *a = (const char*)q[7], *b = (const char*)q[9];
        char* c = (char*)q[11];
        i64 M = q[4], n = q[5];
        if (q[13] == 2) {  /* rows p0..p1 of A and C */
            a += (q[2] == 111 ? p0 * lda : p0) * size;
            c += p0 * ldc * size;
            M = p1 - p0;
        } else {  /* columns p0..p1 of B and C */
            b += (q[3] == 111 ? p0 : p0 * ldb) * size;
            c += p0 * size;
            n = p1 - p0;
        }
        if (q[0] == 1)
            ((seqgraph_sgemm)q[1])(101, (int)q[2], (int)q[3], M, n, q[6], 1.0f,
                (const float*)a, lda, (const float*)b, ldb, 0.0f, (float*)c, ldc);
        else
            ((seqgraph_dgemm)q[1])(101, (int)q[2], (int)q[3], M, n, q[6], 1.0,
                (const double*)a, lda, (const double*)b, ldb, 0.0, (double*)c, ldc);
        return;
    }
#if SEQGRAPH_HAS_PACKED
    if (q[0] == 7) {
        if (q[13]) seqgraph_pack_float(q, p0, p1);
        seqgraph_panels_float(q, p0, p1);
    } else {
        if (q[13]) seqgraph_pack_double(q, p0, p1);
        seqgraph_panels_double(q, p0, p1);
    }
#endif
}

/* The threads that share products with the calling one: they spin while a program holds
   them (`busy`), linger a while after, and sleep otherwise. One program at a time; another
   that finds them busy works alone. A forked child has none of its parent's threads: it
   starts its own. */
#define SEQGRAPH_MAX_WORKERS 63
static struct {
    pthread_mutex_t busy, sleep;
    pthread_cond_t wake;
    atomic_int awake;
    atomic_long posted, acks;
    long seen_at_start[SEQGRAPH_MAX_WORKERS + 1];
    int workers;
    pid_t pid;
    const i64* volatile job;
    volatile int parts;
} seqgraph_pool;
static atomic_flag seqgraph_pool_setup = ATOMIC_FLAG_INIT;

/* A thread waiting on another spins a few microseconds, then yields its core at each turn:
   where the scheduler has put both on one core (another process busy on the other), the
   one waited for runs at once instead of after a time slice of milliseconds. */
#define SEQGRAPH_LINGER 0.02 /* s */
static double seqgraph_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec + 1e-9 * now.tv_nsec;
}
static inline void seqgraph_wait(long turns) {
    if (turns < 4096)
        SEQGRAPH_PAUSE();
    else
        sched_yield();
}

static void* seqgraph_worker(void* arg) {
    const int id = (int)(intptr_t)arg;
    long seen = seqgraph_pool.seen_at_start[id];
    for (;;) {
        /* the next program is often a moment away (backward after forward, the next
           step): waiting for it awake saves the wake-up from sleep, 0.5 ms on the 2-core
           virtual machine (a program of two small products: 538 us, 21 back to back) */
        const double until = seqgraph_now() + SEQGRAPH_LINGER;
        for (long turns = 0; !atomic_load(&seqgraph_pool.awake) && seqgraph_now() < until;)
            seqgraph_wait(++turns);
        pthread_mutex_lock(&seqgraph_pool.sleep);
        while (!atomic_load(&seqgraph_pool.awake))
            pthread_cond_wait(&seqgraph_pool.wake, &seqgraph_pool.sleep);
        pthread_mutex_unlock(&seqgraph_pool.sleep);
        for (long idle = 0; atomic_load_explicit(&seqgraph_pool.awake, memory_order_acquire);) {
            const long posted = atomic_load_explicit(&seqgraph_pool.posted, memory_order_acquire);
            if (posted == seen) {
                seqgraph_wait(++idle);
                continue;
            }
            seen = posted;
            idle = 0;
            if (id < seqgraph_pool.parts) seqgraph_part(seqgraph_pool.job, id, seqgraph_pool.parts);
            atomic_fetch_add_explicit(&seqgraph_pool.acks, 1, memory_order_release);
        }
    }
    return 0;
}

/* Threads for this program (the calling one counted): 1 where `want` is 1 or another
   program holds the pool. */
static int seqgraph_pool_enter(int want) {
    if (want < 2) return 1;
    while (atomic_flag_test_and_set(&seqgraph_pool_setup)) SEQGRAPH_PAUSE();
    if (seqgraph_pool.pid != getpid()) {  /* first use in this process */
        pthread_mutex_init(&seqgraph_pool.busy, 0);
        pthread_mutex_init(&seqgraph_pool.sleep, 0);
        pthread_cond_init(&seqgraph_pool.wake, 0);
        atomic_store(&seqgraph_pool.awake, 0);
        seqgraph_pool.workers = 0;
        seqgraph_pool.pid = getpid();
    }
    atomic_flag_clear(&seqgraph_pool_setup);
    if (pthread_mutex_trylock(&seqgraph_pool.busy)) return 1;
    if (want > SEQGRAPH_MAX_WORKERS + 1) want = SEQGRAPH_MAX_WORKERS + 1;
    while (seqgraph_pool.workers < want - 1) {
        const int id = seqgraph_pool.workers + 1;
        pthread_t thread;
        pthread_attr_t attr;
        seqgraph_pool.seen_at_start[id] = atomic_load(&seqgraph_pool.posted);
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int failed = pthread_create(&thread, &attr, seqgraph_worker, (void*)(intptr_t)id);
        pthread_attr_destroy(&attr);
        if (failed) break;
        seqgraph_pool.workers = id;
    }
    if (seqgraph_pool.workers == 0) {
        pthread_mutex_unlock(&seqgraph_pool.busy);
        return 1;
    }
    return want < seqgraph_pool.workers + 1 ? want : seqgraph_pool.workers + 1;
}

static void seqgraph_pool_sleep(void) {
    atomic_store(&seqgraph_pool.awake, 0);
}

static void seqgraph_pool_wake(void) {
    pthread_mutex_lock(&seqgraph_pool.sleep);
    atomic_store(&seqgraph_pool.awake, 1);
    pthread_cond_broadcast(&seqgraph_pool.wake);
    pthread_mutex_unlock(&seqgraph_pool.sleep);
}

/* One instruction over `threads` threads, the calling one taking the first share. */
static void seqgraph_shared(const i64* q, int threads) {
    const i64 lanes = q[0] == 7 || q[0] == 1 ? 32 : 16;
    const i64 panels = q[0] == 9 ? 2 : (seqgraph_columns(q) + lanes - 1) / lanes;
    const int parts = panels < threads ? (int)panels : threads;
    if (parts < 2) {
        seqgraph_part(q, 0, 1);
        return;
    }
    seqgraph_pool.job = q;
    seqgraph_pool.parts = parts;
    const long acks = atomic_load(&seqgraph_pool.acks) + seqgraph_pool.workers;
    atomic_fetch_add_explicit(&seqgraph_pool.posted, 1, memory_order_release);
    seqgraph_part(q, 0, parts);
    for (long idle = 0; atomic_load_explicit(&seqgraph_pool.acks, memory_order_acquire) != acks;)
        seqgraph_wait(++idle);
}

void {name}(const i64* a) {
    const i64* const end = a + 2 + a[0] * 16;
    /* a[1]: where `threads_shared` says how many threads the program may use, or 0 */
    const int threads = a[1] ? seqgraph_pool_enter((int)*(const i64*)a[1]) : 1;
    if (threads > 1) seqgraph_pool_wake();
    for (const i64* q = a + 2; q < end; q += 16) {
        switch (q[0]) {
        case 0:
            ((seqgraph_kernel)q[1])((const i64*)q[2]);
            break;
        case 1:
        case 2:
            if (threads > 1 && q[13]) {  /* worth sharing */
                seqgraph_shared(q, threads);
            } else if (q[0] == 1) {
                ((seqgraph_sgemm)q[1])(101, (int)q[2], (int)q[3], q[4], q[5], q[6], 1.0f,
                    (const float*)q[7], q[8], (const float*)q[9], q[10], 0.0f, (float*)q[11],
                    q[12]);
            } else {
                ((seqgraph_dgemm)q[1])(101, (int)q[2], (int)q[3], q[4], q[5], q[6], 1.0,
                    (const double*)q[7], q[8], (const double*)q[9], q[10], 0.0, (double*)q[11],
                    q[12]);
            }
            break;
        case 3:
            ((seqgraph_sgemv)q[1])((int)q[2], (int)q[3], q[4], q[5], 1.0f, (const float*)q[6], q[7],
                (const float*)q[8], q[9], 0.0f, (float*)q[10], 1);
            break;
        case 4:
            ((seqgraph_dgemv)q[1])((int)q[2], (int)q[3], q[4], q[5], 1.0, (const double*)q[6], q[7],
                (const double*)q[8], q[9], 0.0, (double*)q[10], 1);
            break;
        case 5:
            SEQGRAPH_ADD(float)
            break;
        case 6:
            SEQGRAPH_ADD(double)
            break;
        case 9:
            if (threads > 1)
                seqgraph_shared(q, threads);
            else
                ((seqgraph_kernel)q[1])((const i64*)q[2]);
            break;
        default:
            if (!SEQGRAPH_HAS_PACKED) {  /* the product as NumPy calls it */
                if (q[0] == 7)
                    ((seqgraph_sgemm)q[1])(101, 111, (int)q[7], q[10], q[11], q[12], 1.0f,
                        (const float*)q[3], q[4], (const float*)q[5], q[6], 0.0f, (float*)q[8],
                        q[9]);
                else
                    ((seqgraph_dgemm)q[1])(101, 111, (int)q[7], q[10], q[11], q[12], 1.0,
                        (const double*)q[3], q[4], (const double*)q[5], q[6], 0.0, (double*)q[8],
                        q[9]);
            } else if (threads > 1 && q[14]) {  /* worth sharing */
                seqgraph_shared(q, threads);
            } else {
                seqgraph_part(q, 0, 1);
            }
        }
    }
    if (threads > 1) {
        seqgraph_pool_sleep();
        pthread_mutex_unlock(&seqgraph_pool.busy);
    }
}
"""
