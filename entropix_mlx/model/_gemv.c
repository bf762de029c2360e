/* A `cblas_sgemm` that hands matrix-vector products to `cblas_sgemv`.
 *
 * MLX's CPU backend computes every matmul with `cblas_sgemm`, including the 1-row products of
 * token-by-token decoding. OpenBLAS's sgemm packs the whole weight matrix for those (it does not
 * forward M == 1 or N == 1 to gemv), which costs 2-3x the time of sgemv on the same matrix.
 * Loaded with RTLD_GLOBAL before OpenBLAS and MLX, this symbol is the one MLX binds; everything
 * else goes to the real sgemm. `blas.py` sets both pointers before this library joins the global
 * scope, i.e. before MLX can bind to it.
 */

enum { RowMajor = 101, NoTrans = 111, Trans = 112 };

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *,
                         int, float, float *, int);
typedef void (*sgemv_fn)(int, int, int, int, float, const float *, int, const float *, int, float,
                         float *, int);

sgemm_fn entropix_sgemm;
sgemv_fn entropix_sgemv;
long entropix_gemv_calls; /* how many products took the gemv route (read by the tests) */

void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float *a,
                 int lda, const float *b, int ldb, float beta, float *c, int ldc) {
  /* k == 0 stays with sgemm: gemv returns early without applying beta. */
  if (order == RowMajor && m == 1 && n > 1 && k > 0) {
    /* c[1, n] = op(a)[1, k] @ op(b)[k, n], i.e. op(b)^T @ a, with b stored n x k or k x n. */
    entropix_sgemv(RowMajor, tb == Trans ? NoTrans : Trans, tb == Trans ? n : k,
                   tb == Trans ? k : n, alpha, b, ldb, a, ta == Trans ? lda : 1, beta, c, 1);
    entropix_gemv_calls++;
    return;
  }
  if (order == RowMajor && n == 1 && m > 1 && k > 0) {
    /* c[m, 1] = op(a)[m, k] @ op(b)[k, 1], with a stored m x k or k x m. */
    entropix_sgemv(RowMajor, ta, ta == Trans ? k : m, ta == Trans ? m : k, alpha, a, lda, b,
                   tb == Trans ? 1 : ldb, beta, c, ldc);
    entropix_gemv_calls++;
    return;
  }
  entropix_sgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
