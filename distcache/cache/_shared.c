/* The memory engine in shared memory: one session cache for every worker of dc_server -workers.
 *
 * The cache lives in one anonymous MAP_SHARED mapping made before the workers are forked, so
 * every worker reads and writes the same sessions without a process in between. A robust,
 * process-shared mutex guards it: when a worker dies holding it (SIGKILL, a crash), the next
 * process to lock it gets EOWNERDEAD, rebuilds every index from the slots (whose `used` flag is
 * the only truth, written last when a slot is filled and first when it is emptied) and carries
 * on. A worker *stopped* holding it (SIGSTOP, a debugger) cannot be detected that way, so a
 * process waits for the lock at most `lock_wait_ms`, then fails the call with the `busy`
 * exception it was given (the server answers the request as it does when a store is out of
 * reach), naming the holder's pid; until it gets the lock again it does not wait at all, so
 * its requests fail at once instead of each waiting in turn.
 *
 * The semantics are those of distcache.cache.memory.MemoryCache, operation by operation
 * (tests/test_cache_shared.py compares both): expired entries (now > expiry) are dropped first;
 * a duplicate ADD changes nothing; an ADD into the full cache evicts the `batch` entries that
 * expire soonest, ties broken by insertion order. Every limit (capacity, batch, id and session
 * sizes, the timeout range) is passed in by distcache.cache.shared from distcache.wire.
 *
 * Layout of the mapping: header | slot metadata [capacity] | hash buckets [nbuckets] |
 * heap [capacity] | free stack [capacity] | slot data [capacity][data_size]. The data region
 * is by far the largest and is mapped MAP_NORESERVE: only the pages that sessions touch become
 * resident.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int64_t expiry;        /* ms; live while now <= expiry */
    uint64_t seq;          /* insertion order, the tie-break of eviction */
    uint64_t hash;
    int32_t next;          /* hash chain, -1 at its end */
    int32_t heap_pos;
    uint32_t session_len;
    uint16_t id_len;
    uint8_t used;          /* written last when filled, first when emptied */
    uint8_t pad;
} slot_meta;

typedef struct {
    pthread_mutex_t lock;
    int32_t holder;        /* pid of the process that last took the lock (for the error) */
    uint64_t key[2];       /* SipHash key: ids come from clients, chains must not be chosen */
    int64_t capacity, batch, max_id, max_session, data_size, nbuckets;
    int64_t count, bytes_held, evicted, expired, recoveries;
    uint64_t next_seq;
    int64_t heap_len, free_len;
} shared_header;

typedef struct {
    PyObject_HEAD
    shared_header *h;
    size_t map_len;
    slot_meta *meta;
    int32_t *buckets, *heap, *free_stack;
    unsigned char *data;
    int64_t max_timeout;
    PyObject *stored, *duplicate, *clock, *busy;
    int64_t lock_wait_ns;  /* how long a call waits for the lock before it fails */
    int outage;            /* the last wait timed out: try the lock without waiting */
    int held;              /* this object holds the lock through _hold_lock (tests) */
} CacheObject;

/* This process's pid, kept current across fork (getpid is a system call on every lock). */
static pid_t my_pid;

static void
after_fork_in_child(void)
{
    my_pid = getpid();
}

/* Testing hook: the step of an ADD at which the process kills itself (0: never). */
static int crash_at;

#define CRASH_POINT(n) do { if (crash_at == (n)) kill(getpid(), SIGKILL); } while (0)

/* -- SipHash-1-3 ------------------------------------------------------------------------------ */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                  \
    do {                                                                                          \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                                 \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                                    \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                                    \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                                 \
    } while (0)

static uint64_t
siphash13(const uint64_t key[2], const unsigned char *in, size_t len)
{
    uint64_t v0 = 0x736f6d6570736575ULL ^ key[0], v1 = 0x646f72616e646f6dULL ^ key[1];
    uint64_t v2 = 0x6c7967656e657261ULL ^ key[0], v3 = 0x7465646279746573ULL ^ key[1];
    uint64_t b = (uint64_t)len << 56, m;
    size_t i, whole = len & ~(size_t)7;
    for (i = 0; i < whole; i += 8) {
        memcpy(&m, in + i, 8);
        v3 ^= m; SIPROUND; v0 ^= m;
    }
    for (size_t j = 0; i + j < len; j++)
        b |= (uint64_t)in[i + j] << (8 * j);
    v3 ^= b; SIPROUND; v0 ^= b;
    v2 ^= 0xff; SIPROUND; SIPROUND; SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* -- the index: hash chains and a binary heap ordered by (expiry, seq) ------------------------ */

static inline unsigned char *
slot_data(CacheObject *c, int32_t slot)
{
    return c->data + (size_t)slot * (size_t)c->h->data_size;
}

static inline int
earlier(CacheObject *c, int32_t a, int32_t b)
{
    slot_meta *x = &c->meta[a], *y = &c->meta[b];
    return x->expiry < y->expiry || (x->expiry == y->expiry && x->seq < y->seq);
}

static inline void
heap_set(CacheObject *c, int64_t pos, int32_t slot)
{
    c->heap[pos] = slot;
    c->meta[slot].heap_pos = (int32_t)pos;
}

static void
sift_up(CacheObject *c, int64_t pos)
{
    int32_t slot = c->heap[pos];
    while (pos > 0) {
        int64_t parent = (pos - 1) / 2;
        if (!earlier(c, slot, c->heap[parent]))
            break;
        heap_set(c, pos, c->heap[parent]);
        pos = parent;
    }
    heap_set(c, pos, slot);
}

static void
sift_down(CacheObject *c, int64_t pos)
{
    int64_t n = c->h->heap_len;
    int32_t slot = c->heap[pos];
    for (;;) {
        int64_t child = 2 * pos + 1;
        if (child >= n)
            break;
        if (child + 1 < n && earlier(c, c->heap[child + 1], c->heap[child]))
            child++;
        if (!earlier(c, c->heap[child], slot))
            break;
        heap_set(c, pos, c->heap[child]);
        pos = child;
    }
    heap_set(c, pos, slot);
}

static void
heap_remove(CacheObject *c, int64_t pos)
{
    int64_t last = --c->h->heap_len;
    if (pos == last)
        return;
    heap_set(c, pos, c->heap[last]);
    if (pos > 0 && earlier(c, c->heap[pos], c->heap[(pos - 1) / 2]))
        sift_up(c, pos);
    else
        sift_down(c, pos);
}

static int32_t *
bucket_of(CacheObject *c, uint64_t hash)
{
    return &c->buckets[hash & (uint64_t)(c->h->nbuckets - 1)];
}

/* The live slot holding `id`, or -1; *link is set to the pointer that leads to it. */
static int32_t
find(CacheObject *c, const unsigned char *id, size_t id_len, uint64_t hash, int32_t **link)
{
    int32_t *at = bucket_of(c, hash);
    while (*at >= 0) {
        slot_meta *m = &c->meta[*at];
        if (m->hash == hash && m->id_len == id_len && memcmp(slot_data(c, *at), id, id_len) == 0) {
            if (link)
                *link = at;
            return *at;
        }
        at = &m->next;
    }
    return -1;
}

/* Empty a live slot: the flag first, so that a death half-way leaves a slot a rebuild drops. */
static void
drop(CacheObject *c, int32_t slot)
{
    slot_meta *m = &c->meta[slot];
    shared_header *h = c->h;
    __atomic_store_n(&m->used, 0, __ATOMIC_RELEASE);
    int32_t *at = bucket_of(c, m->hash);
    while (*at != slot)
        at = &c->meta[*at].next;
    *at = m->next;
    heap_remove(c, m->heap_pos);
    h->count--;
    h->bytes_held -= (int64_t)m->id_len + (int64_t)m->session_len;
    c->free_stack[h->free_len++] = slot;
}

static void
purge_expired(CacheObject *c, int64_t now)
{
    while (c->h->heap_len > 0 && c->meta[c->heap[0]].expiry < now) {
        drop(c, c->heap[0]);
        c->h->expired++;
    }
}

/* After a holder died: rebuild buckets, heap, free stack and totals from the slots' flags. */
static void
rebuild(CacheObject *c)
{
    shared_header *h = c->h;
    uint64_t last_seq = 0;
    for (int64_t b = 0; b < h->nbuckets; b++)
        c->buckets[b] = -1;
    h->count = h->bytes_held = h->heap_len = h->free_len = 0;
    for (int32_t slot = (int32_t)h->capacity - 1; slot >= 0; slot--) {
        slot_meta *m = &c->meta[slot];
        if (m->used) {
            unsigned char *id = slot_data(c, slot);
            int valid = m->id_len <= h->max_id && m->session_len <= h->max_session;
            if (valid) {
                m->hash = siphash13(h->key, id, m->id_len);
                valid = find(c, id, m->id_len, m->hash, NULL) < 0;
            }
            if (valid) {
                int32_t *at = bucket_of(c, m->hash);
                m->next = *at;
                *at = slot;
                heap_set(c, h->heap_len++, slot);
                h->count++;
                h->bytes_held += (int64_t)m->id_len + (int64_t)m->session_len;
                if (m->seq >= last_seq)
                    last_seq = m->seq + 1;
                continue;
            }
            m->used = 0;
        }
        c->free_stack[h->free_len++] = slot;
    }
    for (int64_t pos = h->heap_len / 2 - 1; pos >= 0; pos--)
        sift_down(c, pos);
    if (h->next_seq < last_seq)
        h->next_seq = last_seq;
    h->recoveries++;
}

static int
lock(CacheObject *c)
{
    int rc = pthread_mutex_trylock(&c->h->lock);  /* free: no clock to read */
    if (rc == EBUSY && c->outage) {
        rc = ETIMEDOUT;
    } else if (rc == EBUSY) {
        struct timespec deadline;
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        int64_t ns = deadline.tv_nsec + c->lock_wait_ns;
        deadline.tv_sec += ns / 1000000000;
        deadline.tv_nsec = ns % 1000000000;
        rc = pthread_mutex_clocklock(&c->h->lock, CLOCK_MONOTONIC, &deadline);
    }
    if (rc == ETIMEDOUT) {
        c->outage = 1;
        PyErr_Format(c->busy, "the shared cache has been locked for over %lld ms by process %d "
                     "(stopped or stuck?)", (long long)(c->lock_wait_ns / 1000000),
                     (int)c->h->holder);
        return -1;
    }
    c->outage = 0;
    if (rc == EOWNERDEAD) {
        rebuild(c);
        rc = pthread_mutex_consistent(&c->h->lock);
    }
    if (rc != 0) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    c->h->holder = (int32_t)my_pid;
    return 0;
}

static inline void
unlock(CacheObject *c)
{
    pthread_mutex_unlock(&c->h->lock);
}

/* -- arguments -------------------------------------------------------------------------------- */

/* The current time in ms: the clock object's, or CLOCK_MONOTONIC (time.monotonic_ns's). */
static int
now_ms(CacheObject *c, int64_t *now)
{
    if (c->clock == Py_None) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        *now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
        return 0;
    }
    PyObject *value = PyObject_CallMethod(c->clock, "now_ms", NULL);
    if (value == NULL)
        return -1;
    *now = PyLong_AsLongLong(value);
    Py_DECREF(value);
    return (*now == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int
get_bytes(const char *name, PyObject *obj, Py_buffer *view)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0) {
        PyErr_Format(PyExc_TypeError, "%s must be bytes, not %.100s", name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    return 0;
}

/* -- methods ---------------------------------------------------------------------------------- */

static PyObject *
cache_add(CacheObject *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "add(session_id, session, timeout_ms)");
        return NULL;
    }
    if (!PyLong_Check(args[2]) || PyBool_Check(args[2])) {
        PyErr_Format(PyExc_TypeError, "timeout_ms must be an int, not %.100s",
                     Py_TYPE(args[2])->tp_name);
        return NULL;
    }
    int overflow;
    long long timeout = PyLong_AsLongLongAndOverflow(args[2], &overflow);
    if (timeout == -1 && PyErr_Occurred())
        return NULL;
    if (overflow || timeout < 0 || timeout > c->max_timeout) {
        PyErr_Format(PyExc_ValueError, "timeout_ms must be 0..%lld ms, got %S",
                     (long long)c->max_timeout, args[2]);
        return NULL;
    }
    Py_buffer id, session;
    if (get_bytes("session_id", args[0], &id) < 0)
        return NULL;
    if (get_bytes("session", args[1], &session) < 0) {
        PyBuffer_Release(&id);
        return NULL;
    }
    shared_header *h = c->h;
    PyObject *result = NULL;
    int64_t now;
    if (id.len > h->max_id || session.len > h->max_session) {
        PyErr_Format(PyExc_ValueError, "an id of at most %lld bytes and a session of at most "
                     "%lld bytes fit in a slot", (long long)h->max_id, (long long)h->max_session);
        goto done;
    }
    if (now_ms(c, &now) < 0 || lock(c) < 0)
        goto done;
    purge_expired(c, now);
    uint64_t hash = siphash13(h->key, id.buf, (size_t)id.len);
    if (find(c, id.buf, (size_t)id.len, hash, NULL) >= 0) {
        unlock(c);
        result = Py_NewRef(c->duplicate);
        goto done;
    }
    if (h->count >= h->capacity) {
        for (int64_t n = 0; n < h->batch && h->heap_len > 0; n++) {
            drop(c, c->heap[0]);
            h->evicted++;
        }
    }
    int32_t slot = c->free_stack[--h->free_len];
    CRASH_POINT(1);
    slot_meta *m = &c->meta[slot];
    unsigned char *data = slot_data(c, slot);
    memcpy(data, id.buf, (size_t)id.len);
    memcpy(data + id.len, session.buf, (size_t)session.len);
    m->id_len = (uint16_t)id.len;
    m->session_len = (uint32_t)session.len;
    m->hash = hash;
    m->expiry = now + timeout;
    m->seq = h->next_seq++;
    __atomic_store_n(&m->used, 1, __ATOMIC_RELEASE);
    CRASH_POINT(2);
    int32_t *at = bucket_of(c, hash);
    m->next = *at;
    *at = slot;
    CRASH_POINT(3);
    heap_set(c, h->heap_len++, slot);
    sift_up(c, h->heap_len - 1);
    h->count++;
    h->bytes_held += id.len + session.len;
    unlock(c);
    result = Py_NewRef(c->stored);
done:
    PyBuffer_Release(&id);
    PyBuffer_Release(&session);
    return result;
}

/* GET, HAVE, REMOVE: what = 0, 1, 2. */
static PyObject *
lookup(CacheObject *c, PyObject *arg, int what)
{
    Py_buffer id;
    int64_t now;
    if (get_bytes("session_id", arg, &id) < 0)
        return NULL;
    if (now_ms(c, &now) < 0 || lock(c) < 0) {
        PyBuffer_Release(&id);
        return NULL;
    }
    purge_expired(c, now);
    int32_t slot = -1;
    if (id.len <= c->h->max_id)
        slot = find(c, id.buf, (size_t)id.len, siphash13(c->h->key, id.buf, (size_t)id.len), NULL);
    PyObject *result;
    if (what == 0) {
        if (slot < 0)
            result = Py_NewRef(Py_None);
        else  /* copied under the lock: another process may reuse the slot right after */
            result = PyBytes_FromStringAndSize((char *)slot_data(c, slot) + c->meta[slot].id_len,
                                               c->meta[slot].session_len);
    } else {
        if (what == 2 && slot >= 0)
            drop(c, slot);
        result = PyBool_FromLong(slot >= 0);
    }
    unlock(c);
    PyBuffer_Release(&id);
    return result;
}

static PyObject *cache_get(CacheObject *c, PyObject *id) { return lookup(c, id, 0); }
static PyObject *cache_have(CacheObject *c, PyObject *id) { return lookup(c, id, 1); }
static PyObject *cache_remove(CacheObject *c, PyObject *id) { return lookup(c, id, 2); }

static PyObject *
cache_count(CacheObject *c, PyObject *unused)
{
    int64_t now;
    if (now_ms(c, &now) < 0 || lock(c) < 0)
        return NULL;
    purge_expired(c, now);
    int64_t count = c->h->count;
    unlock(c);
    return PyLong_FromLongLong(count);
}

static PyObject *
cache_clear(CacheObject *c, PyObject *unused)
{
    if (lock(c) < 0)
        return NULL;
    while (c->h->heap_len > 0)
        drop(c, c->heap[0]);
    unlock(c);
    Py_RETURN_NONE;
}

/* (sessions held, bytes held, evicted, expired, recoveries), read in one locked step. */
static PyObject *
cache_stats(CacheObject *c, PyObject *unused)
{
    if (lock(c) < 0)
        return NULL;
    shared_header *h = c->h;
    PyObject *stats = Py_BuildValue("(LLLLL)", (long long)h->count, (long long)h->bytes_held,
                                    (long long)h->evicted, (long long)h->expired,
                                    (long long)h->recoveries);
    unlock(c);
    return stats;
}

/* Testing hook: raise AssertionError if the index disagrees with the slots. */
static PyObject *
cache_audit(CacheObject *c, PyObject *unused)
{
    if (lock(c) < 0)
        return NULL;
    shared_header *h = c->h;
    const char *error = NULL;
    int64_t used = 0, bytes = 0, chained = 0;
    for (int64_t slot = 0; slot < h->capacity && !error; slot++) {
        slot_meta *m = &c->meta[slot];
        if (!m->used)
            continue;
        used++;
        bytes += m->id_len + m->session_len;
        if (m->heap_pos < 0 || m->heap_pos >= h->heap_len || c->heap[m->heap_pos] != slot)
            error = "a live slot is not in the heap";
        else if (find(c, slot_data(c, (int32_t)slot), m->id_len, m->hash, NULL) != slot)
            error = "a live slot is not found by its id";
    }
    for (int64_t b = 0; b < h->nbuckets && !error; b++)
        for (int32_t at = c->buckets[b]; at >= 0 && chained <= h->capacity; at = c->meta[at].next)
            chained++;
    for (int64_t pos = 1; pos < h->heap_len && !error; pos++)
        if (earlier(c, c->heap[pos], c->heap[(pos - 1) / 2]))
            error = "the heap is out of order";
    if (!error && (used != h->count || chained != used || h->heap_len != used))
        error = "the count, the chains and the heap disagree";
    if (!error && bytes != h->bytes_held)
        error = "bytes_held disagrees with the slots";
    if (!error && h->free_len + used != h->capacity)
        error = "the free slots and the live ones do not add up to the capacity";
    unlock(c);
    if (error) {
        PyErr_SetString(PyExc_AssertionError, error);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Testing hooks: take the lock and keep it (a process then dies or stops holding it). */
static PyObject *
cache_hold_lock(CacheObject *c, PyObject *unused)
{
    if (lock(c) < 0)
        return NULL;
    c->held = 1;
    Py_RETURN_NONE;
}

static PyObject *
cache_release_lock(CacheObject *c, PyObject *unused)
{
    if (c->held) {
        c->held = 0;
        unlock(c);
    }
    Py_RETURN_NONE;
}

static PyObject *
set_crash_at(PyObject *module, PyObject *arg)
{
    long step = PyLong_AsLong(arg);
    if (step == -1 && PyErr_Occurred())
        return NULL;
    crash_at = (int)step;
    Py_RETURN_NONE;
}

/* -- the type --------------------------------------------------------------------------------- */

static size_t
round_up(size_t n, size_t to)
{
    return (n + to - 1) / to * to;
}

/* Cache(capacity, batch, max_id, max_session, max_timeout, stored, duplicate, busy,
 *       lock_wait_ms, clock) */
static PyObject *
cache_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"capacity", "batch", "max_id", "max_session", "max_timeout",
                            "stored", "duplicate", "busy", "lock_wait_ms", "clock", NULL};
    long long capacity, batch, max_id, max_session, max_timeout, lock_wait_ms;
    PyObject *stored, *duplicate, *busy, *clock = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "LLLLLOOOL|O", names, &capacity, &batch,
                                     &max_id, &max_session, &max_timeout, &stored, &duplicate,
                                     &busy, &lock_wait_ms, &clock))
        return NULL;
    if (!PyExceptionClass_Check(busy)) {
        PyErr_SetString(PyExc_TypeError, "busy must be an exception class");
        return NULL;
    }
    if (capacity < 1 || capacity > INT32_MAX / 4 || batch < 1 || max_id < 0 || max_id > 65535 ||
        max_session < 0 || max_session > INT32_MAX / 2 || max_timeout < 0 || lock_wait_ms < 1 ||
        lock_wait_ms > 3600000) {
        PyErr_SetString(PyExc_ValueError, "cache parameters out of range");
        return NULL;
    }
    int64_t nbuckets = 1;
    while (nbuckets < 2 * capacity)
        nbuckets *= 2;
    size_t data_size = round_up((size_t)(max_id + max_session), 8);
    size_t off_meta = round_up(sizeof(shared_header), 64);
    size_t off_buckets = off_meta + round_up((size_t)capacity * sizeof(slot_meta), 64);
    size_t off_heap = off_buckets + round_up((size_t)nbuckets * sizeof(int32_t), 64);
    size_t off_free = off_heap + round_up((size_t)capacity * sizeof(int32_t), 64);
    size_t off_data = round_up(off_free + (size_t)capacity * sizeof(int32_t), 4096);
    size_t map_len = off_data + (size_t)capacity * data_size;

    CacheObject *c = (CacheObject *)type->tp_alloc(type, 0);
    if (c == NULL)
        return NULL;
    c->stored = Py_NewRef(stored);
    c->duplicate = Py_NewRef(duplicate);
    c->clock = Py_NewRef(clock);
    c->busy = Py_NewRef(busy);
    c->lock_wait_ns = lock_wait_ms * 1000000;
    void *base = mmap(NULL, map_len, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(c);
        return NULL;
    }
    c->h = base;
    c->map_len = map_len;
    c->meta = (slot_meta *)((char *)base + off_meta);
    c->buckets = (int32_t *)((char *)base + off_buckets);
    c->heap = (int32_t *)((char *)base + off_heap);
    c->free_stack = (int32_t *)((char *)base + off_free);
    c->data = (unsigned char *)base + off_data;
    c->max_timeout = max_timeout;

    shared_header *h = c->h;
    h->capacity = capacity;
    h->batch = batch;
    h->max_id = max_id;
    h->max_session = max_session;
    h->data_size = (int64_t)data_size;
    h->nbuckets = nbuckets;
    if (getrandom(h->key, sizeof h->key, 0) != sizeof h->key) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(c);
        return NULL;
    }
    for (int64_t b = 0; b < nbuckets; b++)
        c->buckets[b] = -1;
    for (int64_t n = 0; n < capacity; n++)  /* slot 0 on top: the first pages are used first */
        c->free_stack[n] = (int32_t)(capacity - 1 - n);
    h->free_len = capacity;

    pthread_mutexattr_t attr;
    int rc = pthread_mutexattr_init(&attr);
    if (rc == 0)
        rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    if (rc == 0)
        rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    if (rc == 0)
        rc = pthread_mutex_init(&h->lock, &attr);
    pthread_mutexattr_destroy(&attr);
    if (rc != 0) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(c);
        return NULL;
    }
    return (PyObject *)c;
}

static void
cache_dealloc(CacheObject *c)
{
    if (c->h != NULL) {
        if (c->held)
            unlock(c);
        munmap(c->h, c->map_len);  /* this process's view; the memory goes with the last one */
    }
    Py_XDECREF(c->stored);
    Py_XDECREF(c->duplicate);
    Py_XDECREF(c->clock);
    Py_XDECREF(c->busy);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

#define HEADER_GETTER(field)                                                                      \
    static PyObject *get_##field(CacheObject *c, void *closure)                                   \
    {                                                                                             \
        return PyLong_FromLongLong(c->h->field);                                                  \
    }
HEADER_GETTER(capacity)
HEADER_GETTER(batch)
HEADER_GETTER(count)
HEADER_GETTER(bytes_held)
HEADER_GETTER(evicted)
HEADER_GETTER(expired)
HEADER_GETTER(recoveries)

static PyObject *
get_mapped_bytes(CacheObject *c, void *closure)
{
    return PyLong_FromSize_t(c->map_len);
}

static PyObject *
get_clock(CacheObject *c, void *closure)
{
    return Py_NewRef(c->clock);
}

static PyGetSetDef cache_getset[] = {
    {"capacity", (getter)get_capacity, NULL, "The most sessions held at once.", NULL},
    {"eviction_batch", (getter)get_batch, NULL, "Sessions an ADD into the full cache evicts.",
     NULL},
    {"sessions_held", (getter)get_count, NULL, "Sessions held (expired ones until dropped).",
     NULL},
    {"bytes_held", (getter)get_bytes_held, NULL, "Bytes of ids and sessions held.", NULL},
    {"evicted", (getter)get_evicted, NULL, "Sessions evicted so far, by every process.", NULL},
    {"expired", (getter)get_expired, NULL, "Sessions expired so far, by every process.", NULL},
    {"recoveries", (getter)get_recoveries, NULL, "Rebuilds after a lock holder died.", NULL},
    {"mapped_bytes", (getter)get_mapped_bytes, NULL, "Size of the shared mapping.", NULL},
    {"clock", (getter)get_clock, NULL, "The clock object (None: CLOCK_MONOTONIC).", NULL},
    {NULL},
};

static PyMethodDef cache_methods[] = {
    {"add", (PyCFunction)(void (*)(void))cache_add, METH_FASTCALL,
     "add(session_id, session, timeout_ms) -> stored or duplicate"},
    {"get", (PyCFunction)cache_get, METH_O, "get(session_id) -> session or None"},
    {"have", (PyCFunction)cache_have, METH_O, "have(session_id) -> bool"},
    {"remove", (PyCFunction)cache_remove, METH_O, "remove(session_id) -> bool"},
    {"count", (PyCFunction)cache_count, METH_NOARGS, "Live sessions (expired ones dropped)."},
    {"clear", (PyCFunction)cache_clear, METH_NOARGS, "Forget every session."},
    {"stats", (PyCFunction)cache_stats, METH_NOARGS,
     "(sessions, bytes, evicted, expired, recoveries) in one locked read."},
    {"_audit", (PyCFunction)cache_audit, METH_NOARGS, "Testing hook: check the index."},
    {"_hold_lock", (PyCFunction)cache_hold_lock, METH_NOARGS, "Testing hook: take the lock."},
    {"_release_lock", (PyCFunction)cache_release_lock, METH_NOARGS,
     "Testing hook: release a lock taken by _hold_lock."},
    {NULL},
};

static PyTypeObject CacheType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "distcache.cache._shared.Cache",
    .tp_basicsize = sizeof(CacheObject),
    .tp_dealloc = (destructor)cache_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "A session cache in memory shared with the processes forked after it.",
    .tp_methods = cache_methods,
    .tp_getset = cache_getset,
    .tp_new = cache_new,
};

static PyMethodDef module_methods[] = {
    {"_crash_at", set_crash_at, METH_O,
     "Testing hook: an ADD kills its process at this step (1: slot taken, 2: slot filled, "
     "3: chained; 0: never)."},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "distcache.cache._shared", NULL, -1, module_methods,
};

PyMODINIT_FUNC
PyInit__shared(void)
{
    if (PyType_Ready(&CacheType) < 0)
        return NULL;
    my_pid = getpid();
    if (pthread_atfork(NULL, NULL, after_fork_in_child) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "pthread_atfork failed");
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Cache", (PyObject *)&CacheType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
