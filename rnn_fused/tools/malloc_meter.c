/* Allocation meter for the benchmark's peak-memory column, loaded with LD_PRELOAD into
 * a child process. It wraps glibc's allocator entry points, counts live bytes (by
 * malloc_usable_size) and keeps a peak that the benchmark resets before the measured
 * call: every allocation of either implementation is counted the same way, whatever
 * glibc's heap happens to hold from earlier calls. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdatomic.h>
#include <stddef.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static _Atomic long live_bytes;
static _Atomic long peak_bytes;

static void count_alloc(void *p) {
  if (!p) return;
  long now = atomic_fetch_add(&live_bytes, (long)malloc_usable_size(p)) + (long)malloc_usable_size(p);
  long peak = atomic_load(&peak_bytes);
  while (now > peak && !atomic_compare_exchange_weak(&peak_bytes, &peak, now)) {
  }
}

static void count_free(void *p) {
  if (p) atomic_fetch_sub(&live_bytes, (long)malloc_usable_size(p));
}

void *malloc(size_t n) { void *p = __libc_malloc(n); count_alloc(p); return p; }
void *calloc(size_t a, size_t b) { void *p = __libc_calloc(a, b); count_alloc(p); return p; }
void free(void *p) { count_free(p); __libc_free(p); }
void *memalign(size_t align, size_t n) { void *p = __libc_memalign(align, n); count_alloc(p); return p; }
void *aligned_alloc(size_t align, size_t n) { return memalign(align, n); }
int posix_memalign(void **out, size_t align, size_t n) {
  void *p = __libc_memalign(align, n);
  if (!p) return ENOMEM;
  count_alloc(p);
  *out = p;
  return 0;
}
void *realloc(void *p, size_t n) {
  long old = p ? (long)malloc_usable_size(p) : 0;
  void *q = __libc_realloc(p, n);
  if (q || n == 0) {
    atomic_fetch_sub(&live_bytes, old);
    count_alloc(q);
  }
  return q;
}

long malloc_meter_live_bytes(void) { return atomic_load(&live_bytes); }
long malloc_meter_peak_bytes(void) { return atomic_load(&peak_bytes); }
void malloc_meter_reset_peak(void) { atomic_store(&peak_bytes, atomic_load(&live_bytes)); }
