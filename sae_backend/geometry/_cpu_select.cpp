// Fused candidate selection for topk.py's bf16 path on CPUs (built by _cpu_select.py).
//
// topk.py scores a block of rows of A against all of B in bf16, in a strided layout: member r
// of group j (B row j*G + r) sits in score column r*NG + j. From that block the torch path
// takes group maxima, the k-th best group maximum t, the threshold tau (the rigorous bf16
// error bound, see topk.py), the entries >= tau in the kept groups and the rows whose
// candidates do not fit: about ten passes over a block that no longer fits in any cache.
// `sae_candidates` does the same in one pass per row while the row is in cache, with the same
// arithmetic (float32, no contraction into FMAs), so it picks the same candidates and the same
// rows to fall back. `sae_top_pairs` is the final (value desc, index asc) selection of the
// re-scored candidates. Plain C ABI (called through ctypes), no torch headers, std::thread.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <thread>

#ifdef __SSE2__
#include <emmintrin.h>
#endif
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include <vector>

namespace {

inline float bf16_to_float(uint16_t h) {
    uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

// A monotone int16 key of a bf16 value: a larger float has a larger key, so group maxima are
// integer maxima (one vector instruction for 32 scores). The map is its own inverse.
inline int16_t flip(int16_t x) { return int16_t(x ^ ((x >> 15) & 0x7FFF)); }

const float NEG_INF = -std::numeric_limits<float>::infinity();

// The k-th largest of v[0..n) (a multiset; -inf when n < k).
float kth_largest(const float* v, int64_t n, int64_t k, std::vector<float>& work) {
    if (k <= 32) {
        float top[32];
        for (int64_t q = 0; q < k; ++q) top[q] = NEG_INF;
        for (int64_t j = 0; j < n; ++j) {
            float x = v[j];
            if (x > top[k - 1]) {
                int64_t q = k - 1;
                while (q > 0 && top[q - 1] < x) {
                    top[q] = top[q - 1];
                    --q;
                }
                top[q] = x;
            }
        }
        return top[k - 1];
    }
    if (n < k) return NEG_INF;
    work.assign(v, v + n);
    std::nth_element(work.begin(), work.begin() + (k - 1), work.end(), std::greater<float>());
    return work[k - 1];
}

struct Block {
    const uint16_t* s;  // [m, G * ng] bf16 bits, strided layout
    int64_t ng, group, n_b;
    int64_t self_offset;  // -1, or row i's own B index is self_offset + i
    int64_t k, n_keep, max_pairs;
    const float* delta;  // [m] bound on the bf16 error of row i's scores
    int64_t* cand;       // [m, max_pairs] out: candidate B indices, ascending, then zeros
    int64_t* counts;     // [m] out: candidates >= tau (may exceed max_pairs)
    uint8_t* complete;   // [m] out: 1 when the row's candidates are all in `cand`
    float* tau_out;      // [m] out: the threshold (for tests)
    const float* floor;  // [m] or null: a value row i's k-th best exact score is known to
                         // reach (topk_tiles.py: the best k found in earlier tiles)
};

void rows(const Block& p, int64_t r0, int64_t r1) {
    const int64_t ng = p.ng, G = p.group, width = ng * G;
    std::vector<int16_t> key(ng);
    std::vector<float> gmax(ng), work;
    for (int64_t i = r0; i < r1; ++i) {
        const uint16_t* row = p.s + i * width;
        const int16_t* srow = reinterpret_cast<const int16_t*>(row);
        int16_t* kk = key.data();
        for (int64_t j = 0; j < ng; ++j) kk[j] = flip(srow[j]);
        for (int64_t r = 1; r < G; ++r) {
            const int16_t* rr = srow + r * ng;
            for (int64_t j = 0; j < ng; ++j) kk[j] = std::max(kk[j], flip(rr[j]));
        }
        for (int64_t j = 0; j < ng; ++j) gmax[j] = bf16_to_float(uint16_t(flip(kk[j])));

        // columns that are not targets: padding past n_b (last group), the row's own index
        const int64_t own = p.self_offset >= 0 ? p.self_offset + i : -1;
        auto skip = [&](int64_t col) { return col >= p.n_b || col == own; };
        auto masked_max = [&](int64_t j) {
            float best = NEG_INF;
            for (int64_t r = 0; r < G; ++r)
                if (!skip(j * G + r)) best = std::max(best, bf16_to_float(row[r * ng + j]));
            return best;
        };
        if (ng * G > p.n_b) gmax[ng - 1] = masked_max(ng - 1);
        if (own >= 0) gmax[own / G] = masked_max(own / G);

        // t: the k-th best group maximum (<= the k-th best score), or with fewer kept groups
        // than k the k-th best score itself, as in topk.py
        float t;
        if (p.k <= p.n_keep) {
            t = kth_largest(gmax.data(), ng, p.k, work);
        } else {
            std::vector<float> all;
            all.reserve(p.n_b);
            for (int64_t j = 0; j < ng; ++j)
                for (int64_t r = 0; r < G; ++r)
                    if (!skip(j * G + r)) all.push_back(bf16_to_float(row[r * ng + j]));
            t = kth_largest(all.data(), int64_t(all.size()), p.k, work);
        }
        // a known floor on the k-th best exact score raises t: tau's formula holds for any
        // lower bound on it (the floor is exact, tighter than a bf16 score's)
        if (p.floor != nullptr) t = std::max(t, p.floor[i]);
        // tau, in topk.py's float32 operations and order
        const float y = (t - 0.00390625f * std::fabs(t)) - 2.0f * p.delta[i];
        const float tau = (y >= 0.0f ? y / 1.00390625f : y / 0.99609375f) - float(1e-6);
        p.tau_out[i] = tau;

        // candidates: entries >= tau, all in groups whose maximum is >= tau. The torch path
        // keeps the n_keep best groups, so a row with n_keep or more such groups is incomplete
        // there (it falls back): the same here, and so is one with too many candidates.
        int64_t hot = 0, count = 0;
        bool ok = true;
        int64_t* out = p.cand + i * p.max_pairs;
        for (int64_t j = 0; j < ng && ok; ++j) {
            if (!(gmax[j] >= tau)) continue;
            if (++hot >= p.n_keep && p.n_keep < ng) ok = false;
            for (int64_t r = 0; r < G && ok; ++r) {
                const int64_t col = j * G + r;
                if (skip(col) || !(bf16_to_float(row[r * ng + j]) >= tau)) continue;
                if (count < p.max_pairs) out[count] = col;
                if (++count > p.max_pairs) ok = false;
            }
        }
        // j ascending, then r: the B indices j*G + r come out ascending
        for (int64_t q = std::min(count, p.max_pairs); q < p.max_pairs; ++q) out[q] = 0;
        p.counts[i] = count;
        p.complete[i] = ok ? 1 : 0;
    }
}

// Exact float32 dot products of pairs (a row, b row), the way torch.bmm computes the torch
// path's re-scores on CPUs: one rounded product and one rounded sum per term, in order from
// the first coordinate (no FMA, no reassociation; the build passes -ffp-contract=off). Each
// dot is a chain of dependent additions, so 16 pairs run side by side in vector lanes: with
// AVX-512 their products are formed row by row and transposed in registers (3x faster here
// than the portable version, which transposes the coordinates through the stack).
// _cpu_select.py checks the bits against torch.bmm when it loads the library.
constexpr int64_t LANES = 16, TILE = 64;

#ifdef __AVX512F__
// r[i] (16 rows of 16 floats) becomes its transpose, in four rounds of 2 x 2 block swaps of
// halving size (8, 4, 2, 1): each round pairs rows i and i + b and exchanges their blocks.
struct Swap16 {
    alignas(64) int32_t lo[4][16], hi[4][16];
    Swap16() {
        for (int s = 0, b = 8; b >= 1; ++s, b >>= 1)
            for (int j = 0; j < 16; ++j) {
                lo[s][j] = (j & b) == 0 ? j : 16 + (j - b);
                hi[s][j] = (j & b) == 0 ? j + b : 16 + j;
            }
    }
};
const Swap16 SWAP16;

inline void transpose16(__m512* r) {
    for (int s = 0, b = 8; b >= 1; ++s, b >>= 1) {
        const __m512i lo = _mm512_load_si512(SWAP16.lo[s]), hi = _mm512_load_si512(SWAP16.hi[s]);
        for (int i = 0; i < 16; ++i)
            if ((i & b) == 0) {
                const __m512 a = _mm512_permutex2var_ps(r[i], lo, r[i + b]);
                r[i + b] = _mm512_permutex2var_ps(r[i], hi, r[i + b]);
                r[i] = a;
            }
    }
}
#endif

void dots(const float* const* x, const float* const* y, int64_t n, int64_t d, float* out) {
#ifdef __AVX512F__
    // the products of 16 pairs over 16 coordinates, each a row (contiguous loads, one rounded
    // product each), transposed so that lane l holds pair l: then the same in-order sums
    for (int64_t p0 = 0; p0 < n; p0 += LANES) {
        const int64_t np = std::min(LANES, n - p0);
        __m512 acc = _mm512_setzero_ps();
        for (int64_t k0 = 0; k0 < d; k0 += 16) {
            const int64_t nk = std::min<int64_t>(16, d - k0);
            const __mmask16 m = nk == 16 ? __mmask16(0xFFFF) : __mmask16((1u << nk) - 1);
            __m512 r[16];
            for (int64_t l = 0; l < LANES; ++l) {
                const int64_t q = p0 + std::min(l, np - 1);
                r[l] = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x[q] + k0),
                                     _mm512_maskz_loadu_ps(m, y[q] + k0));
            }
            transpose16(r);
            for (int64_t c = 0; c < nk; ++c) acc = _mm512_add_ps(acc, r[c]);
        }
        alignas(64) float lanes[LANES];
        _mm512_store_ps(lanes, acc);
        for (int64_t l = 0; l < np; ++l) out[p0 + l] = lanes[l];
    }
#else
    alignas(64) float xt[TILE][LANES], yt[TILE][LANES], acc[LANES];
    for (int64_t p0 = 0; p0 < n; p0 += LANES) {
        const int64_t np = std::min(LANES, n - p0);
        for (int64_t l = 0; l < LANES; ++l) acc[l] = 0.0f;
        for (int64_t k0 = 0; k0 < d; k0 += TILE) {
            const int64_t nk = std::min(TILE, d - k0);
            for (int64_t l = 0; l < LANES; ++l) {
                const float* xl = x[p0 + std::min(l, np - 1)] + k0;
                const float* yl = y[p0 + std::min(l, np - 1)] + k0;
                for (int64_t q = 0; q < nk; ++q) {
                    xt[q][l] = xl[q];
                    yt[q][l] = yl[q];
                }
            }
            for (int64_t q = 0; q < nk; ++q)
                for (int64_t l = 0; l < LANES; ++l) acc[l] = acc[l] + xt[q][l] * yt[q][l];
        }
        for (int64_t l = 0; l < np; ++l) out[p0 + l] = acc[l];
    }
#endif
}

// Top-k of n (value, index) pairs: value descending, then index ascending; (-inf, 0) padding.
void top_pairs(const float* v, const int64_t* ix, int64_t n, int64_t k, float* out_v,
               int64_t* out_i, std::vector<int64_t>& order) {
    order.resize(std::max<int64_t>(n, 1));
    for (int64_t q = 0; q < n; ++q) order[q] = q;
    const int64_t take = std::min(n, k);
    std::partial_sort(order.begin(), order.begin() + take, order.begin() + n,
                      [&](int64_t x, int64_t y) {
                          return v[x] > v[y] || (v[x] == v[y] && ix[x] < ix[y]);
                      });
    for (int64_t q = 0; q < k; ++q) {
        out_v[q] = q < take ? v[order[q]] : NEG_INF;
        out_i[q] = q < take ? ix[order[q]] : 0;
    }
}

// Rows r0..r1 of a block, whole: candidates, exact re-scores, top-k. Rows that are not
// complete are left to the caller's exact fallback (their outputs are padding).
void block_rows(const Block& p, const float* a, const int64_t* a_index, const float* b, int64_t d,
                float* out_v, int64_t* out_i, int64_t r0, int64_t r1) {
    rows(p, r0, r1);
    std::vector<const float*> x, y;
    std::vector<int64_t> start(r1 - r0 + 1, 0), order;
    for (int64_t i = r0; i < r1; ++i) {
        const int64_t n = p.complete[i] ? p.counts[i] : 0;
        start[i - r0 + 1] = start[i - r0] + n;
        for (int64_t q = 0; q < n; ++q) {
            x.push_back(b + p.cand[i * p.max_pairs + q] * d);
            y.push_back(a + (a_index != nullptr ? a_index[i] : i) * d);
        }
    }
    std::vector<float> vals(x.size());
    dots(x.data(), y.data(), int64_t(x.size()), d, vals.data());
    for (int64_t i = r0; i < r1; ++i) {
        const int64_t lo = start[i - r0], n = start[i - r0 + 1] - lo;
        top_pairs(vals.data() + lo, p.cand + i * p.max_pairs, n, p.k, out_v + i * p.k,
                  out_i + i * p.k, order);
    }
}

template <class F>
void parallel_rows(int64_t m, int n_threads, F&& body) {
    const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(n_threads, m / 8));
    if (parts <= 1) {
        body(0, m);
        return;
    }
    std::vector<std::thread> pool;
    const int64_t step = (m + parts - 1) / parts;
    for (int64_t q = 1; q < parts; ++q) {
        const int64_t lo = q * step, hi = std::min(m, lo + step);
        if (lo < hi) pool.emplace_back([&body, lo, hi] { body(lo, hi); });
    }
    body(0, std::min(m, step));
    for (auto& th : pool) th.join();
}

}  // namespace

extern "C" {

int sae_select_abi_version() { return 3; }

// Candidates only (for tests): cand [m, max_pairs], counts, complete, tau per row.
void sae_candidates(const uint16_t* s, int64_t m, int64_t ng, int64_t group, int64_t n_b,
                    int64_t self_offset, int64_t k, int64_t n_keep, const float* delta,
                    int64_t max_pairs, int64_t* cand, int64_t* counts, uint8_t* complete,
                    float* tau, int n_threads) {
    Block p{s, ng, group, n_b, self_offset, k, n_keep, max_pairs, delta, cand, counts, complete,
            tau, nullptr};
    parallel_rows(m, n_threads, [&p](int64_t lo, int64_t hi) { rows(p, lo, hi); });
}

// One block of topk.py's bf16 path: scores s [m, G*ng] of rows a [m, d] against b [n_b, d];
// top-k values/indices [m, k] for rows with complete[i] = 1 (the others need the fallback).
// floor: null, or [m] known lower bounds on each row's k-th best exact score. a_index: null
// (row i of the scores is a's row i), or [m] the row of a behind each score row.
void sae_block(const uint16_t* s, const float* a, const int64_t* a_index, const float* b,
               int64_t m, int64_t d,
               int64_t ng, int64_t group, int64_t n_b, int64_t self_offset, int64_t k,
               int64_t n_keep, const float* delta, int64_t max_pairs, const float* floor,
               float* out_v, int64_t* out_i, uint8_t* complete, int n_threads) {
    std::vector<int64_t> cand(m * max_pairs), counts(m);
    std::vector<float> tau(m);
    Block p{s, ng, group, n_b, self_offset, k, n_keep, max_pairs, delta, cand.data(),
            counts.data(), complete, tau.data(), floor};
    parallel_rows(m, n_threads, [&](int64_t lo, int64_t hi) {
        block_rows(p, a, a_index, b, d, out_v, out_i, lo, hi);
    });
}

// Dot products of rows x[pi[q]] and y[pj[q]] (for tests and the load-time check).
void sae_dots(const float* x, const float* y, int64_t d, const int64_t* pi, const int64_t* pj,
              int64_t n, float* out) {
    std::vector<const float*> xs(n), ys(n);
    for (int64_t q = 0; q < n; ++q) {
        xs[q] = x + pi[q] * d;
        ys[q] = y + pj[q] * d;
    }
    dots(xs.data(), ys.data(), n, d, out);
}

// An 8 x 8 block of 16-bit elements: dst[c * ld_dst + r] = src[r * ld_src + c].
inline void transpose8(const uint16_t* src, int64_t ld_src, uint16_t* dst, int64_t ld_dst) {
#ifdef __SSE2__
    __m128i a[8], b[8], c[8];
    for (int r = 0; r < 8; ++r)
        a[r] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + r * ld_src));
    for (int q = 0; q < 4; ++q) {  // pairs of rows interleaved: columns 0-3 and 4-7
        b[2 * q] = _mm_unpacklo_epi16(a[2 * q], a[2 * q + 1]);
        b[2 * q + 1] = _mm_unpackhi_epi16(a[2 * q], a[2 * q + 1]);
    }
    for (int q = 0; q < 2; ++q) {  // then fours of rows: two columns per register
        c[4 * q] = _mm_unpacklo_epi32(b[4 * q], b[4 * q + 2]);
        c[4 * q + 1] = _mm_unpackhi_epi32(b[4 * q], b[4 * q + 2]);
        c[4 * q + 2] = _mm_unpacklo_epi32(b[4 * q + 1], b[4 * q + 3]);
        c[4 * q + 3] = _mm_unpackhi_epi32(b[4 * q + 1], b[4 * q + 3]);
    }
    for (int q = 0; q < 4; ++q) {  // all eight rows: one column per register
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (2 * q) * ld_dst),
                         _mm_unpacklo_epi64(c[q], c[q + 4]));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (2 * q + 1) * ld_dst),
                         _mm_unpackhi_epi64(c[q], c[q + 4]));
    }
#else
    for (int c = 0; c < 8; ++c)
        for (int r = 0; r < 8; ++r) dst[c * ld_dst + r] = src[r * ld_src + c];
#endif
}

// dst [cols, rows] = src [rows, cols] transposed, 16-bit elements (bf16 scores). A square
// tile is copied row by row into a small buffer, then written out column by column: reading
// a tile's column straight from src would touch rows a power of two apart, which share L1
// sets and evict each other (torch's strided copy runs at ~1.5 GB/s here for that reason).
void sae_transpose16(const uint16_t* src, int64_t rows, int64_t cols, uint16_t* dst,
                     int n_threads) {
    constexpr int64_t T = 64;
    const int64_t row_tiles = (rows + T - 1) / T;
    parallel_rows(row_tiles, n_threads, [&](int64_t lo, int64_t hi) {
        alignas(64) uint16_t buf[T][T];
        for (int64_t r0 = lo * T; r0 < std::min(rows, hi * T); r0 += T) {
            const int64_t nr = std::min(T, rows - r0);
            for (int64_t c0 = 0; c0 < cols; c0 += T) {
                const int64_t nc = std::min(T, cols - c0);
                for (int64_t r = 0; r < nr; ++r)
                    std::memcpy(buf[r], src + (r0 + r) * cols + c0, nc * sizeof(uint16_t));
                if (nr == T && nc == T) {
                    for (int64_t c = 0; c < T; c += 8)
                        for (int64_t r = 0; r < T; r += 8)
                            transpose8(&buf[r][c], T, dst + (c0 + c) * rows + r0 + r, rows);
                    continue;
                }
                for (int64_t c = 0; c < nc; ++c) {
                    uint16_t* out = dst + (c0 + c) * rows + r0;
                    for (int64_t r = 0; r < nr; ++r) out[r] = buf[r][c];
                }
            }
        }
    });
}

// Top-k of each row's first counts[i] (value, index) pairs of vals/idx [m, w].
void sae_top_pairs(const float* vals, const int64_t* idx, int64_t m, int64_t w,
                   const int64_t* counts, int64_t k, float* out_v, int64_t* out_i,
                   int n_threads) {
    parallel_rows(m, n_threads, [&](int64_t lo, int64_t hi) {
        std::vector<int64_t> order;
        for (int64_t i = lo; i < hi; ++i) {
            const int64_t n = std::min<int64_t>(w, std::max<int64_t>(0, counts[i]));
            top_pairs(vals + i * w, idx + i * w, n, k, out_v + i * k, out_i + i * k, order);
        }
    });
}

}  // extern "C"
