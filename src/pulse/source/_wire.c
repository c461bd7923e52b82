/*
 * pulse.source._wire: the replication stream's hot path, in C.
 *
 * Why C: on two cores the walsender takes one, and Pulse's Python reader,
 * decoder and enrichment share one interpreter. Reading a CopyData message
 * through psycopg2 costs ~4 us and decoding an Insert ~3 us in Python, which
 * caps the pipeline near 0.4x the walsender's rate. Here the messages are
 * read through psycopg2's own libpq (function pointers resolved by
 * `pulse.source.native`, so the PGconn and the library always match) with
 * the GIL released, and consecutive Inserts of one relation (the "fast
 * relation", engagement_events) are decoded straight into Arrow-layout
 * column buffers.
 *
 * The split of work is deliberate and conservative:
 *
 * - only Inserts of the fast relation, outside streamed transactions, whose
 *   every value parses, are decoded here; every other message (and any
 *   Insert with a value this code does not accept: a timestamp outside
 *   0001..9999, an integer that does not fit, invalid UTF-8, a binary
 *   value, a column count that does not match, text that would take a
 *   column of the run past int32 offsets) is handed on untouched as
 *   raw payload bytes for the Python decoder, in stream order;
 * - a read returns right after a Relation or Stream Commit message, so the
 *   caller can re-derive the fast relation's layout before any later Insert
 *   is decoded with a stale one;
 * - keepalives are not answered here: the read returns and the caller sends
 *   the standby status update (psycopg2's send_feedback, on the same
 *   connection), so acknowledgement stays in one place.
 *
 * A run of decoded Inserts is returned as
 *     (n, raw, raw_offsets, columns)
 * where raw / raw_offsets are the original payloads (int64 offsets, n + 1),
 * for callers that want rows after all, and columns has one entry per
 * decoded column in relation order:
 *     'i' integer, 't' timestamptz:  (validity, int64 values)
 *     's' text:                      (validity, int32 offsets (n + 1), data)
 * timestamptz values are microseconds since 1970-01-01 UTC; validity is an
 * Arrow (LSB-first) bitmap. Columns of kind 'x' are checked and skipped.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- libpq, through the caller's function pointers --------------------- */

typedef int (*getcopydata_fn)(void *conn, char **buffer, int async);
typedef int (*consumeinput_fn)(void *conn);
typedef int (*socket_fn)(const void *conn);
typedef void (*freemem_fn)(void *ptr);

static getcopydata_fn pq_getcopydata;
static consumeinput_fn pq_consumeinput;
static socket_fn pq_socket;
static freemem_fn pq_freemem;

/* ---- growable buffers ------------------------------------------------------ */

typedef struct {
    char *data;
    size_t len;
    size_t cap;
} Buf;

static int buf_reserve(Buf *b, size_t more)
{
    if (b->len + more <= b->cap)
        return 0;
    if (more > SIZE_MAX / 4 - b->len)
        return -1;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    char *p = realloc(b->data, cap);
    if (p == NULL)
        return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

static int buf_append(Buf *b, const void *src, size_t n)
{
    if (n == 0)
        return 0; /* b->data may still be NULL: memcpy(NULL, ..., 0) is undefined */
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, src, n);
    b->len += n;
    return 0;
}

static void buf_free(Buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* ---- big-endian reads ------------------------------------------------------ */

static inline uint16_t be16(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t be64(const unsigned char *p) { return (uint64_t)be32(p) << 32 | be32(p + 4); }

/* ---- value parsers (strict: anything unexpected goes to the Python path) --- */

static int parse_int(const unsigned char *s, size_t n, int64_t *out)
{
    size_t i = 0;
    int neg = 0;
    if (n == 0)
        return -1;
    if (s[0] == '-') {
        neg = 1;
        i = 1;
        if (n == 1)
            return -1;
    }
    /* Accumulate negatively: INT64_MIN has no positive counterpart. */
    int64_t v = 0;
    for (; i < n; i++) {
        unsigned d = (unsigned)s[i] - '0';
        if (d > 9)
            return -1;
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_sub_overflow(v, (int64_t)d, &v))
            return -1;
    }
    if (!neg) {
        if (v == INT64_MIN)
            return -1;
        v = -v;
    }
    *out = v;
    return 0;
}

static int digits(const unsigned char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        unsigned d = (unsigned)s[i] - '0';
        if (d > 9)
            return -1;
        v = v * 10 + (int)d;
    }
    *out = v;
    return 0;
}

/* Days from 1970-01-01 to y-m-d, proleptic Gregorian (H. Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const int64_t yoe = y - era * 400;
    const int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int days_in_month(int y, int m)
{
    static const int dm[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return 29;
    return dm[m - 1];
}

/* 0001-01-01 and 10000-01-01 UTC in microseconds since the epoch: what a
 * Python datetime holds (the same bounds as the backfill's SQL check). */
#define TS_MIN (-62135596800000000LL)
#define TS_END (253402300800000000LL)

/* timestamptz text in DateStyle ISO: "YYYY-MM-DD HH:MM:SS[.ffffff](+|-)HH[:MM[:SS]]". */
static int parse_timestamptz(const unsigned char *s, size_t n, int64_t *out)
{
    int y, mo, d, h, mi, sec;
    if (n < 22 || s[4] != '-' || s[7] != '-' || s[10] != ' ' || s[13] != ':' || s[16] != ':')
        return -1;
    if (digits(s, 4, &y) || digits(s + 5, 2, &mo) || digits(s + 8, 2, &d) || digits(s + 11, 2, &h) ||
        digits(s + 14, 2, &mi) || digits(s + 17, 2, &sec))
        return -1;
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 59)
        return -1;
    size_t i = 19;
    int64_t frac = 0;
    if (s[i] == '.') {
        int nd = 0;
        i++;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            if (nd == 6)
                return -1;
            frac = frac * 10 + (s[i] - '0');
            nd++;
            i++;
        }
        if (nd == 0)
            return -1;
        for (; nd < 6; nd++)
            frac *= 10;
    }
    if (i + 3 > n || (s[i] != '+' && s[i] != '-'))
        return -1;
    int sign = s[i] == '-' ? -1 : 1, oh, om = 0, os = 0;
    if (digits(s + i + 1, 2, &oh))
        return -1;
    i += 3;
    if (i < n) {
        if (i + 3 > n || s[i] != ':' || digits(s + i + 1, 2, &om))
            return -1;
        i += 3;
        if (i < n) {
            if (i + 3 != n || s[i] != ':' || digits(s + i + 1, 2, &os))
                return -1;
            i += 3;
        }
    }
    if (i != n || oh > 15 || om > 59 || os > 59)
        return -1;
    int64_t secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec;
    secs -= sign * (oh * 3600 + om * 60 + os);
    int64_t us = secs * 1000000 + frac;
    if (us < TS_MIN || us >= TS_END)
        return -1;
    *out = us;
    return 0;
}

/* Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF), as Python's decoder. */
static int valid_utf8(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF)
            need = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else
            return 0;
        if (i + need >= n)
            return 0;
        unsigned c1 = s[i + 1];
        if (c1 < lo || c1 > hi)
            return 0;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
        i += need + 1;
    }
    return 1;
}

/* ---- the run of decoded Inserts ---------------------------------------------- */

#define MAX_COLS 1600 /* PostgreSQL's MaxTupleAttributeNumber */

typedef struct {
    char kind;   /* 'i', 't', 's' or 'x' */
    Buf validity;
    Buf values;  /* int64 values, or int32 offsets for 's' */
    Buf data;    /* 's' only */
} Column;

typedef struct {
    uint32_t oid;       /* 0: no fast relation */
    int ncols;
    Column *cols;
    int64_t n;
    Buf raw;
    Buf raw_offsets;
} Run;

typedef struct {
    const unsigned char *p;
    uint32_t len;
    int64_t iv;
    char null;
} Parsed;

static void run_reset(Run *r)
{
    r->n = 0;
    r->raw.len = 0;
    r->raw_offsets.len = 0;
    for (int j = 0; j < r->ncols; j++) {
        r->cols[j].validity.len = 0;
        r->cols[j].values.len = 0;
        r->cols[j].data.len = 0;
    }
}

static void run_free(Run *r)
{
    for (int j = 0; j < r->ncols; j++) {
        buf_free(&r->cols[j].validity);
        buf_free(&r->cols[j].values);
        buf_free(&r->cols[j].data);
    }
    free(r->cols);
    r->cols = NULL;
    r->ncols = 0;
    r->oid = 0;
    buf_free(&r->raw);
    buf_free(&r->raw_offsets);
    r->n = 0;
}

/* Parse an Insert of the fast relation into `tmp`; 0 when every value is accepted.
 * A text column's offsets are int32 (Arrow's string layout): a row whose text
 * would take a column of the run past INT32_MAX bytes is not accepted either
 * (the run is closed and the row goes to the Python decoder). With runs capped
 * at 1 GiB (Reader_init) this takes one value near PostgreSQL's 1 GB limit. */
static int parse_insert(const Run *r, const unsigned char *p, size_t len, Parsed *tmp)
{
    if (r->oid == 0 || len < 8 || p[0] != 'I' || be32(p + 1) != r->oid || p[5] != 'N')
        return -1;
    if (be16(p + 6) != r->ncols)
        return -1;
    size_t pos = 8;
    for (int j = 0; j < r->ncols; j++) {
        if (pos >= len)
            return -1;
        unsigned char kind = p[pos];
        Parsed *v = &tmp[j];
        if (kind == 'n') {
            v->null = 1;
            pos += 1;
            continue;
        }
        if (kind != 't' || pos + 5 > len)
            return -1; /* 'u' cannot occur in an Insert; 'b' is not ours */
        uint32_t vlen = be32(p + pos + 1);
        pos += 5;
        if (vlen > len - pos)
            return -1;
        v->null = 0;
        v->p = p + pos;
        v->len = vlen;
        pos += vlen;
        switch (r->cols[j].kind) {
        case 'i':
            if (parse_int(v->p, vlen, &v->iv))
                return -1;
            break;
        case 't':
            if (parse_timestamptz(v->p, vlen, &v->iv))
                return -1;
            break;
        case 's':
            if ((size_t)vlen > (size_t)INT32_MAX - r->cols[j].data.len || !valid_utf8(v->p, vlen))
                return -1;
            break;
        default:
            break;
        }
    }
    return pos == len ? 0 : -1;
}

static int set_valid(Buf *b, int64_t i, int valid)
{
    if ((i & 7) == 0) {
        unsigned char zero = 0;
        if (buf_append(b, &zero, 1) < 0)
            return -1;
    }
    if (valid)
        ((unsigned char *)b->data)[i >> 3] |= (unsigned char)(1u << (i & 7));
    return 0;
}

static int run_append(Run *r, const unsigned char *p, size_t len, const Parsed *tmp)
{
    int64_t i = r->n;
    if (i == 0) {
        int64_t zero = 0;
        if (buf_append(&r->raw_offsets, &zero, 8) < 0)
            return -1;
        for (int j = 0; j < r->ncols; j++) {
            if (r->cols[j].kind == 's') {
                int32_t z = 0;
                if (buf_append(&r->cols[j].values, &z, 4) < 0)
                    return -1;
            }
        }
    }
    if (buf_append(&r->raw, p, len) < 0)
        return -1;
    int64_t end = (int64_t)r->raw.len;
    if (buf_append(&r->raw_offsets, &end, 8) < 0)
        return -1;
    for (int j = 0; j < r->ncols; j++) {
        Column *c = &r->cols[j];
        const Parsed *v = &tmp[j];
        if (c->kind == 'x')
            continue;
        if (set_valid(&c->validity, i, !v->null) < 0)
            return -1;
        if (c->kind == 's') {
            if (!v->null && buf_append(&c->data, v->p, v->len) < 0)
                return -1;
            if (c->data.len > INT32_MAX)
                return -1; /* parse_insert keeps this from happening */
            int32_t off = (int32_t)c->data.len;
            if (buf_append(&c->values, &off, 4) < 0)
                return -1;
        } else {
            int64_t iv = v->null ? 0 : v->iv;
            if (buf_append(&c->values, &iv, 8) < 0)
                return -1;
        }
    }
    r->n++;
    return 0;
}

static PyObject *bytes_of(const Buf *b)
{
    return PyBytes_FromStringAndSize(b->data ? b->data : "", (Py_ssize_t)b->len);
}

/* The run as the Python tuple described at the top; resets the run. GIL held. */
static PyObject *run_emit(Run *r)
{
    PyObject *cols = NULL, *out = NULL;
    int ndecoded = 0;
    for (int j = 0; j < r->ncols; j++)
        ndecoded += r->cols[j].kind != 'x';
    cols = PyTuple_New(ndecoded);
    if (cols == NULL)
        goto done;
    int k = 0;
    for (int j = 0; j < r->ncols; j++) {
        Column *c = &r->cols[j];
        PyObject *entry;
        if (c->kind == 'x')
            continue;
        if (c->kind == 's')
            entry = Py_BuildValue("(NNN)", bytes_of(&c->validity), bytes_of(&c->values), bytes_of(&c->data));
        else
            entry = Py_BuildValue("(NN)", bytes_of(&c->validity), bytes_of(&c->values));
        if (entry == NULL)
            goto done;
        PyTuple_SET_ITEM(cols, k++, entry);
    }
    out = Py_BuildValue("(LNNO)", (long long)r->n, bytes_of(&r->raw), bytes_of(&r->raw_offsets), cols);
done:
    Py_XDECREF(cols);
    run_reset(r);
    return out;
}

/* ---- the stream state shared by Reader and decode_payloads ------------------ */

typedef struct {
    Run run;
    int in_stream;     /* between Stream Start and Stream Stop: Inserts carry an xid */
    int64_t run_max;   /* rows per run */
    size_t run_max_bytes;
    Parsed *tmp;
} State;

static int state_set_fast(State *st, uint32_t oid, const char *kinds, Py_ssize_t ncols)
{
    run_free(&st->run);
    free(st->tmp);
    st->tmp = NULL;
    if (oid == 0 || ncols <= 0)
        return 0;
    if (ncols > MAX_COLS) {
        PyErr_SetString(PyExc_ValueError, "too many columns");
        return -1;
    }
    for (Py_ssize_t j = 0; j < ncols; j++) {
        if (strchr("itsx", kinds[j]) == NULL || kinds[j] == 0) {
            PyErr_Format(PyExc_ValueError, "unknown column kind %c", kinds[j]);
            return -1;
        }
    }
    st->run.cols = calloc((size_t)ncols, sizeof(Column));
    st->tmp = calloc((size_t)ncols, sizeof(Parsed));
    if (st->run.cols == NULL || st->tmp == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t j = 0; j < ncols; j++)
        st->run.cols[j].kind = kinds[j];
    st->run.ncols = (int)ncols;
    st->run.oid = oid;
    return 0;
}

/* An output slot: a raw payload (owned by libpq or borrowed) or a finished run. */
typedef struct {
    const char *payload;  /* NULL: a run marker (the run's tuple is built in place) */
    size_t len;
    char *to_free;        /* libpq buffer to free once copied */
} Slot;

typedef struct {
    Slot *slots;
    size_t n, cap;
} Slots;

static int slots_push(Slots *s, const char *payload, size_t len, char *to_free)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        Slot *p = realloc(s->slots, cap * sizeof(Slot));
        if (p == NULL)
            return -1;
        s->slots = p;
        s->cap = cap;
    }
    s->slots[s->n].payload = payload;
    s->slots[s->n].len = len;
    s->slots[s->n].to_free = to_free;
    s->n++;
    return 0;
}

/*
 * One payload (no GIL). Returns 1 when it was decoded into the run, 0 when it
 * must be handed on raw (the caller closes the run first), -1 on no memory.
 * *stop is set after messages that may change the fast relation's layout.
 */
static int state_take(State *st, const unsigned char *p, size_t len, int *stop)
{
    if (len == 0)
        return 0;
    switch (p[0]) {
    case 'I':
        if (!st->in_stream && parse_insert(&st->run, p, len, st->tmp) == 0)
            return run_append(&st->run, p, len, st->tmp) < 0 ? -1 : 1;
        return 0;
    case 'S':
        st->in_stream = 1;
        return 0;
    case 'E':
        st->in_stream = 0;
        return 0;
    case 'R':
    case 'c':
    case 'Y':
        *stop = 1;
        return 0;
    default:
        return 0;
    }
}

static int run_full(const State *st)
{
    return st->run.n >= st->run_max || st->run.raw.len >= st->run_max_bytes;
}

/* ---- Reader --------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    void *conn;
    State st;
    unsigned long long wal_end;
    unsigned long long messages;
} Reader;

static int Reader_init(Reader *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"pgconn_ptr", "run_max", "run_max_bytes", NULL};
    unsigned long long ptr;
    long long run_max = 65536, run_max_bytes = 64 << 20;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "K|LL", kwlist, &ptr, &run_max, &run_max_bytes))
        return -1;
    if (pq_getcopydata == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pulse.source._wire: bind_libpq() was not called");
        return -1;
    }
    if (ptr == 0 || run_max < 1 || run_max_bytes < 1 || run_max_bytes > (1LL << 30)) {
        PyErr_SetString(PyExc_ValueError, "bad Reader arguments");
        return -1;
    }
    self->conn = (void *)(uintptr_t)ptr;
    self->st.run_max = run_max;
    self->st.run_max_bytes = (size_t)run_max_bytes;
    return 0;
}

static void Reader_dealloc(Reader *self)
{
    run_free(&self->st.run);
    free(self->st.tmp);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Reader_set_fast(Reader *self, PyObject *args)
{
    unsigned long oid;
    const char *kinds;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "ky#", &oid, &kinds, &n))
        return NULL;
    if (self->st.run.n != 0) {
        PyErr_SetString(PyExc_RuntimeError, "set_fast with a run in progress");
        return NULL;
    }
    if (state_set_fast(&self->st, (uint32_t)oid, kinds, n) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Build the Python list from the slots (GIL held); frees libpq buffers. */
static PyObject *emit_slots(Slots *slots, PyObject **runs, size_t nruns)
{
    PyObject *list = PyList_New((Py_ssize_t)slots->n);
    size_t ri = 0;
    for (size_t i = 0; i < slots->n; i++) {
        Slot *s = &slots->slots[i];
        PyObject *item;
        if (s->payload == NULL) {
            item = ri < nruns ? runs[ri] : NULL;
            runs[ri++] = NULL;
        } else {
            item = list ? PyBytes_FromStringAndSize(s->payload, (Py_ssize_t)s->len) : NULL;
        }
        if (s->to_free)
            pq_freemem(s->to_free);
        if (list == NULL || item == NULL) {
            Py_XDECREF(item);
            Py_CLEAR(list);
            continue;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    for (; ri < nruns; ri++)
        Py_XDECREF(runs[ri]);
    return list;
}

enum { FLAG_REPLY = 1, FLAG_ENDED = 2, FLAG_NOMEM = 4 };

/*
 * read(timeout_ms, max_messages, max_bytes) -> (items, flags)
 *
 * Reads what has arrived (waiting up to timeout_ms once when nothing has),
 * up to max_messages / max_bytes, and returns the items in stream order.
 * flags: 1 a keepalive asked for a reply; 2 the copy ended or failed
 * (call psycopg2's read_message to get its error).
 */
static PyObject *Reader_read(Reader *self, PyObject *args)
{
    int timeout_ms;
    long long max_messages, max_bytes;
    if (!PyArg_ParseTuple(args, "iLL", &timeout_ms, &max_messages, &max_bytes))
        return NULL;
    if (self->conn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Reader.read before Reader.__init__");
        return NULL;
    }
    State *st = &self->st;
    Slots slots = {0};
    PyObject **runs = NULL;
    size_t nruns = 0, runs_cap = 0;
    int flags = 0, waited = 0;
    long long count = 0, bytes = 0;
    unsigned long long wal_end = self->wal_end;

    for (;;) {
        int stop = 0;
        char *buf = NULL;
        int r;
        Py_BEGIN_ALLOW_THREADS
        for (;;) {
            r = pq_getcopydata(self->conn, &buf, 1);
            if (r > 0) {
                const unsigned char *m = (const unsigned char *)buf;
                if (m[0] == 'w' && r >= 25) {
                    uint64_t we = be64(m + 9);
                    if (we > wal_end)
                        wal_end = we;
                    const unsigned char *p = m + 25;
                    size_t len = (size_t)r - 25;
                    count++;
                    bytes += len;
                    int took = state_take(st, p, len, &stop);
                    if (took < 0) {
                        flags |= FLAG_NOMEM;
                        pq_freemem(buf);
                        buf = NULL; /* freed: the code after this loop must not free it again */
                        break;
                    }
                    if (took == 1) {
                        pq_freemem(buf);
                        buf = NULL;
                        if (run_full(st))
                            break; /* emit the run (needs the GIL) */
                    } else {
                        if (st->run.n > 0)
                            break; /* close the run first; this message is still in buf */
                        if (slots_push(&slots, (const char *)p, len, buf) < 0) {
                            flags |= FLAG_NOMEM;
                            pq_freemem(buf);
                            buf = NULL;
                            break;
                        }
                    }
                    buf = NULL;
                } else if (m[0] == 'k' && r >= 18) {
                    uint64_t we = be64(m + 1);
                    if (we > wal_end)
                        wal_end = we;
                    if (m[17])
                        flags |= FLAG_REPLY;
                    pq_freemem(buf);
                    buf = NULL;
                } else {
                    pq_freemem(buf); /* unknown CopyData: psycopg2 ignores them too */
                    buf = NULL;
                }
                /* The limits end a read between runs: a run is only cut by
                 * its own bounds (run_max, run_max_bytes). */
                if (stop || (flags & FLAG_REPLY) ||
                    (st->run.n == 0 && (count >= max_messages || bytes >= max_bytes)))
                    break;
                continue;
            }
            if (r == 0) {
                /* Nothing buffered. Mid-run means mid-transaction: the server
                 * sends a committed transaction whole, so the rest is on its
                 * way; wait for it rather than cut the run at a packet
                 * boundary. Otherwise return what we have (latency), or
                 * wait once. */
                if (st->run.n == 0 && (slots.n > 0 || waited))
                    break;
                struct pollfd pfd = {pq_socket(self->conn), POLLIN, 0};
                waited = 1;
                if (pfd.fd < 0 || poll(&pfd, 1, timeout_ms) <= 0)
                    break;
                if (!pq_consumeinput(self->conn)) {
                    flags |= FLAG_ENDED;
                    break;
                }
                continue;
            }
            flags |= FLAG_ENDED; /* -1: copy done; -2: error */
            break;
        }
        Py_END_ALLOW_THREADS

        if (st->run.n > 0) {
            /* Close the run: it goes before whatever broke it. */
            if (nruns == runs_cap) {
                size_t cap = runs_cap ? runs_cap * 2 : 8;
                PyObject **p = realloc(runs, cap * sizeof(PyObject *));
                if (p == NULL) {
                    flags |= FLAG_NOMEM;
                } else {
                    runs = p;
                    runs_cap = cap;
                }
            }
            if (!(flags & FLAG_NOMEM)) {
                PyObject *t = run_emit(&st->run);
                if (t == NULL)
                    flags |= FLAG_NOMEM;
                else if (slots_push(&slots, NULL, 0, NULL) < 0) {
                    Py_DECREF(t);
                    flags |= FLAG_NOMEM;
                } else
                    runs[nruns++] = t;
            }
        }
        if (buf != NULL && !(flags & FLAG_NOMEM)) {
            /* The raw message that closed the run. */
            const unsigned char *m = (const unsigned char *)buf;
            if (slots_push(&slots, (const char *)(m + 25), (size_t)r - 25, buf) < 0) {
                pq_freemem(buf);
                flags |= FLAG_NOMEM;
            }
            buf = NULL;
        } else if (buf != NULL) {
            pq_freemem(buf);
            buf = NULL;
        }
        if (flags & FLAG_NOMEM) {
            /* A failed run_append may have left the run half-written: drop it
             * (the read raises MemoryError; nothing of it was acknowledged). */
            run_reset(&st->run);
            break;
        }
        if (stop || (flags & (FLAG_REPLY | FLAG_ENDED)) || count >= max_messages || bytes >= max_bytes ||
            r == 0)
            break;
        /* a full run was emitted, or a run was closed by a raw message: keep reading */
    }

    self->wal_end = wal_end;
    self->messages += (unsigned long long)count;
    PyObject *list = emit_slots(&slots, runs, nruns);
    free(slots.slots);
    free(runs);
    if (flags & FLAG_NOMEM) {
        Py_XDECREF(list);
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        return NULL;
    }
    if (list == NULL)
        return NULL;
    return Py_BuildValue("(Ni)", list, flags);
}

static PyMethodDef Reader_methods[] = {
    {"set_fast", (PyCFunction)Reader_set_fast, METH_VARARGS,
     "set_fast(oid, kinds) -- decode Inserts of relation `oid` (0: none); kinds: one of 'itsx' per column"},
    {"read", (PyCFunction)Reader_read, METH_VARARGS,
     "read(timeout_ms, max_messages, max_bytes) -> (items, flags)"},
    {NULL}
};

static PyObject *Reader_get_wal_end(Reader *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->wal_end);
}

static PyObject *Reader_get_messages(Reader *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->messages);
}

static PyObject *Reader_get_in_stream(Reader *self, void *closure)
{
    return PyBool_FromLong(self->st.in_stream);
}

static PyGetSetDef Reader_getset[] = {
    {"wal_end", (getter)Reader_get_wal_end, NULL, "highest WAL end the server reported", NULL},
    {"messages", (getter)Reader_get_messages, NULL, "XLogData messages read", NULL},
    {"in_stream", (getter)Reader_get_in_stream, NULL, "inside a streamed transaction's segment", NULL},
    {NULL}
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pulse.source._wire.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Reader(pgconn_ptr, run_max=65536, run_max_bytes=64 MiB): reads a replication COPY",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Reader_init,
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_methods = Reader_methods,
    .tp_getset = Reader_getset,
};

/* ---- module functions ------------------------------------------------------------ */

static PyObject *bind_libpq(PyObject *mod, PyObject *args)
{
    unsigned long long a, b, c, d;
    if (!PyArg_ParseTuple(args, "KKKK", &a, &b, &c, &d))
        return NULL;
    if (!a || !b || !c || !d) {
        PyErr_SetString(PyExc_ValueError, "null libpq function pointer");
        return NULL;
    }
    pq_getcopydata = (getcopydata_fn)(uintptr_t)a;
    pq_consumeinput = (consumeinput_fn)(uintptr_t)b;
    pq_socket = (socket_fn)(uintptr_t)c;
    pq_freemem = (freemem_fn)(uintptr_t)d;
    Py_RETURN_NONE;
}

/*
 * decode_payloads(payloads, oid, kinds, in_stream=False, run_max=65536) -> items
 *
 * The reader's decoding without a connection: for tests, and for anyone
 * replaying captured payloads. Same items, same order, same run splits.
 */
static PyObject *decode_payloads(PyObject *mod, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"payloads", "oid", "kinds", "in_stream", "run_max", NULL};
    PyObject *payloads;
    unsigned long oid;
    const char *kinds;
    Py_ssize_t nk;
    int in_stream = 0;
    long long run_max = 65536;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Oky#|pL", kwlist, &payloads, &oid, &kinds, &nk, &in_stream,
                                     &run_max))
        return NULL;
    if (run_max < 1) {
        PyErr_SetString(PyExc_ValueError, "run_max must be >= 1");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(payloads, "payloads must be a sequence of bytes");
    if (seq == NULL)
        return NULL;
    State st = {0};
    st.run_max = run_max;
    st.run_max_bytes = 64 << 20;
    st.in_stream = in_stream;
    PyObject *out = NULL;
    if (state_set_fast(&st, (uint32_t)oid, kinds, nk) < 0)
        goto done;
    out = PyList_New(0);
    if (out == NULL)
        goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "payloads must be bytes");
            Py_CLEAR(out);
            goto done;
        }
        int stop = 0;
        int took = state_take(&st, (const unsigned char *)PyBytes_AS_STRING(item), (size_t)PyBytes_GET_SIZE(item),
                              &stop);
        if (took < 0) {
            PyErr_NoMemory();
            Py_CLEAR(out);
            goto done;
        }
        if ((took == 0 || run_full(&st)) && st.run.n > 0) {
            PyObject *t = run_emit(&st.run);
            if (t == NULL || PyList_Append(out, t) < 0) {
                Py_XDECREF(t);
                Py_CLEAR(out);
                goto done;
            }
            Py_DECREF(t);
        }
        if (took == 0 && PyList_Append(out, item) < 0) {
            Py_CLEAR(out);
            goto done;
        }
    }
    if (st.run.n > 0) {
        PyObject *t = run_emit(&st.run);
        if (t == NULL || PyList_Append(out, t) < 0) {
            Py_XDECREF(t);
            Py_CLEAR(out);
        } else
            Py_DECREF(t);
    }
done:
    run_free(&st.run);
    free(st.tmp);
    Py_DECREF(seq);
    return out;
}

/* ---- binary COPY (the backfill's chunks) ------------------------------------------ */

/* Microseconds from 1970-01-01 to 2000-01-01, PostgreSQL's timestamp epoch. */
#define PG_EPOCH_US 946684800000000LL

static void uuid_text(const unsigned char *u, char *out)
{
    static const char hex[] = "0123456789abcdef";
    int k = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[k++] = '-';
        out[k++] = hex[u[i] >> 4];
        out[k++] = hex[u[i] & 15];
    }
}

/*
 * parse_copy_binary(data, kinds) -> (n, columns)
 *
 * `data` is the whole output of COPY ... TO STDOUT (FORMAT binary); kinds has
 * one letter per field: 'i' integer (2, 4 or 8 bytes), 'u' uuid (as text),
 * 's' text, 'j' jsonb (as its text), 't' timestamptz. Columns come back in
 * the run layout (see the top of this file); a 't' column has a third
 * buffer, a bitmap of the values a Python datetime cannot hold (infinity,
 * outside 0001..9999), which are NULL in the values. Raises ValueError on
 * anything malformed.
 */
static PyObject *parse_copy_binary(PyObject *mod, PyObject *args)
{
    Py_buffer in;
    const char *kinds;
    Py_ssize_t nk;
    if (!PyArg_ParseTuple(args, "y*y#", &in, &kinds, &nk))
        return NULL;
    const unsigned char *p = in.buf;
    size_t len = (size_t)in.len, pos = 0;
    PyObject *out = NULL;
    int ncols = (int)nk;
    Column *cols = NULL;
    Buf *bad = NULL;
    int64_t n = 0;
    const char *err = NULL;

    if (ncols <= 0 || ncols > MAX_COLS) {
        err = "bad kinds";
        goto fail;
    }
    for (int j = 0; j < ncols; j++)
        if (strchr("iusjt", kinds[j]) == NULL || kinds[j] == 0) {
            err = "unknown kind";
            goto fail;
        }
    cols = calloc((size_t)ncols, sizeof(Column));
    bad = calloc((size_t)ncols, sizeof(Buf));
    if (cols == NULL || bad == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (len == 0) {
        /* No output at all: no rows (an empty COPY still has a header, but be lenient). */
    } else {
        static const unsigned char sig[11] = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', 0xFF, '\r', '\n', 0};
        if (len < 19 || memcmp(p, sig, 11) != 0) {
            err = "not a binary COPY stream";
            goto fail;
        }
        pos = 15;
        uint32_t ext = be32(p + pos);
        pos += 4;
        if (ext > len - pos) {
            err = "truncated header";
            goto fail;
        }
        pos += ext;
    }
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    for (int j = 0; j < ncols && ok; j++) {
        if (kinds[j] == 'u' || kinds[j] == 's' || kinds[j] == 'j') {
            int32_t z = 0;
            ok = buf_append(&cols[j].values, &z, 4) == 0;
        }
    }
    while (ok && len > 0) {
        if (pos + 2 > len) {
            err = "truncated tuple";
            break;
        }
        int16_t nf = (int16_t)be16(p + pos);
        pos += 2;
        if (nf == -1)
            break; /* trailer */
        if (nf != ncols) {
            err = "field count does not match";
            break;
        }
        for (int j = 0; j < ncols && !err; j++) {
            if (pos + 4 > len) {
                err = "truncated field";
                break;
            }
            int32_t flen = (int32_t)be32(p + pos);
            pos += 4;
            const unsigned char *v = p + pos;
            int isnull = flen == -1;
            if (!isnull && (flen < 0 || (size_t)flen > len - pos)) {
                err = "truncated value";
                break;
            }
            if (!isnull)
                pos += (size_t)flen;
            Column *c = &cols[j];
            int64_t iv = 0;
            int badts = 0;
            switch (kinds[j]) {
            case 'i':
                if (!isnull) {
                    if (flen == 8)
                        iv = (int64_t)be64(v);
                    else if (flen == 4)
                        iv = (int32_t)be32(v);
                    else if (flen == 2)
                        iv = (int16_t)be16(v);
                    else
                        err = "integer of unexpected size";
                }
                break;
            case 't':
                if (!isnull) {
                    if (flen != 8) {
                        err = "timestamp of unexpected size";
                        break;
                    }
                    int64_t pg = (int64_t)be64(v);
                    if (pg == INT64_MAX || pg == INT64_MIN || pg < TS_MIN - PG_EPOCH_US ||
                        pg >= TS_END - PG_EPOCH_US) {
                        badts = 1;
                        isnull = 1;
                    } else
                        iv = pg + PG_EPOCH_US;
                }
                break;
            case 'u':
                if (!isnull) {
                    char text[36];
                    if (flen != 16) {
                        err = "uuid of unexpected size";
                        break;
                    }
                    uuid_text(v, text);
                    ok = buf_append(&c->data, text, 36) == 0;
                }
                break;
            case 'j':
                if (!isnull) {
                    if (flen < 1 || v[0] != 1) {
                        err = "unknown jsonb version";
                        break;
                    }
                    v++;
                    flen--;
                }
                /* fall through */
            case 's':
                if (!isnull) {
                    if (!valid_utf8(v, (size_t)flen)) {
                        err = "invalid UTF-8";
                        break;
                    }
                    ok = buf_append(&c->data, v, (size_t)flen) == 0;
                }
                break;
            }
            if (err || !ok)
                break;
            ok = set_valid(&c->validity, n, !isnull) == 0;
            if (ok && kinds[j] == 't')
                ok = set_valid(&bad[j], n, badts) == 0;
            if (!ok)
                break;
            if (kinds[j] == 'i' || kinds[j] == 't') {
                ok = buf_append(&c->values, &iv, 8) == 0;
            } else if (c->data.len > INT32_MAX) {
                err = "chunk too large for 32-bit offsets";
            } else {
                int32_t off = (int32_t)c->data.len;
                ok = buf_append(&c->values, &off, 4) == 0;
            }
        }
        if (err || !ok)
            break;
        n++;
    }
    Py_END_ALLOW_THREADS
    if (!ok && !err) {
        PyErr_NoMemory();
        goto done;
    }
    if (err)
        goto fail;
    {
        PyObject *t = PyTuple_New(ncols);
        if (t == NULL)
            goto done;
        for (int j = 0; j < ncols; j++) {
            PyObject *entry;
            Column *c = &cols[j];
            if (kinds[j] == 'i')
                entry = Py_BuildValue("(NN)", bytes_of(&c->validity), bytes_of(&c->values));
            else if (kinds[j] == 't')
                entry = Py_BuildValue("(NNN)", bytes_of(&c->validity), bytes_of(&c->values), bytes_of(&bad[j]));
            else
                entry = Py_BuildValue("(NNN)", bytes_of(&c->validity), bytes_of(&c->values), bytes_of(&c->data));
            if (entry == NULL) {
                Py_DECREF(t);
                goto done;
            }
            PyTuple_SET_ITEM(t, j, entry);
        }
        out = Py_BuildValue("(LN)", (long long)n, t);
    }
    goto done;
fail:
    PyErr_Format(PyExc_ValueError, "binary COPY: %s (row %lld)", err ? err : "malformed", (long long)n);
done:
    if (cols) {
        for (int j = 0; j < ncols; j++) {
            buf_free(&cols[j].validity);
            buf_free(&cols[j].values);
            buf_free(&cols[j].data);
            buf_free(&bad[j]);
        }
    }
    free(cols);
    free(bad);
    PyBuffer_Release(&in);
    return out;
}

static PyObject *py_parse_timestamptz(PyObject *mod, PyObject *arg)
{
    char *s;
    Py_ssize_t n;
    int64_t us;
    if (PyBytes_AsStringAndSize(arg, &s, &n) < 0)
        return NULL;
    if (parse_timestamptz((const unsigned char *)s, (size_t)n, &us) < 0)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(us);
}

/* -- SHA-256 of many strings ---------------------------------------------------
 *
 * Not the stream's: the external sink's CloudEvent ids of a chunk of inserts
 * (`sinks/external_columns.py`) carry a SHA-256 of each row's values. One call
 * hashes every row of a chunk with the GIL released, instead of a hashlib
 * object per row. FIPS 180-4; tests compare it with hashlib.
 */

static const uint32_t SHA256_K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define SHA256_ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(uint32_t h[8], const unsigned char *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 |
               (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = SHA256_ROR(w[i - 15], 7) ^ SHA256_ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = SHA256_ROR(w[i - 2], 17) ^ SHA256_ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (SHA256_ROR(e, 6) ^ SHA256_ROR(e, 11) ^ SHA256_ROR(e, 25)) + ((e & f) ^ (~e & g)) +
                      SHA256_K[i] + w[i];
        uint32_t t2 = (SHA256_ROR(a, 2) ^ SHA256_ROR(a, 13) ^ SHA256_ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += k;
}

static void sha256(const unsigned char *p, size_t len, unsigned char out[32])
{
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    size_t full = len / 64, rem = len % 64;
    for (size_t i = 0; i < full; i++)
        sha256_block(h, p + 64 * i);
    unsigned char tail[128];
    memset(tail, 0, sizeof tail);
    if (rem)
        memcpy(tail, p + 64 * full, rem);
    tail[rem] = 0x80;
    size_t tlen = rem + 1 + 8 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++)
        tail[tlen - 1 - i] = (unsigned char)(bits >> (8 * i));
    sha256_block(h, tail);
    if (tlen == 128)
        sha256_block(h, tail + 64);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(h[i] >> 8);
        out[4 * i + 3] = (unsigned char)h[i];
    }
}

/* sha256_many(data, offsets) -> bytes: the 32-byte digests of data[offsets[i]:offsets[i + 1]], end to end.
 * `offsets`: n + 1 native int64 (an Arrow large_string's offsets, relative to `data`). */
static PyObject *sha256_many(PyObject *mod, PyObject *args)
{
    Py_buffer data, offs;
    if (!PyArg_ParseTuple(args, "y*y*", &data, &offs))
        return NULL;
    PyObject *out = NULL;
    if (offs.len % 8 != 0 || offs.len < 8) {
        PyErr_SetString(PyExc_ValueError, "sha256_many: offsets must be n + 1 int64 values");
        goto done;
    }
    Py_ssize_t n = offs.len / 8 - 1;
    const int64_t *off = (const int64_t *)offs.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (off[i] < 0 || off[i + 1] < off[i] || off[i + 1] > (int64_t)data.len) {
            PyErr_SetString(PyExc_ValueError, "sha256_many: offsets out of order or beyond the data");
            goto done;
        }
    }
    out = PyBytes_FromStringAndSize(NULL, n * 32);
    if (out == NULL)
        goto done;
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    const unsigned char *d = (const unsigned char *)data.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        sha256(d + off[i], (size_t)(off[i + 1] - off[i]), o + 32 * i);
    Py_END_ALLOW_THREADS
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&offs);
    return out;
}

/* join_rows(pieces, n) -> (data, offsets): row i is the concatenation, in order, of each piece's row i.
 * A piece is bytes (a literal, the same in every row) or (data, offsets) with `offsets` n + 1 native
 * int64 relative to `data` (an Arrow large_string without nulls). `offsets` of the result: n + 1 int64.
 * What pyarrow's binary_join_element_wise with an empty separator makes, copied once without the GIL. */
static PyObject *join_rows(PyObject *mod, PyObject *args)
{
    PyObject *seq_in;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "On", &seq_in, &n))
        return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "join_rows: n must be >= 0");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(seq_in, "join_rows: pieces must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(seq);
    Py_buffer *bufs = PyMem_Calloc((size_t)(2 * k + 1), sizeof(Py_buffer));
    int *held = PyMem_Calloc((size_t)(2 * k + 1), sizeof(int));
    PyObject *data_out = NULL, *off_out = NULL, *result = NULL;
    if (bufs == NULL || held == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t p = 0; p < k; p++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, p);
        if (PyBytes_Check(item)) {
            if (PyObject_GetBuffer(item, &bufs[2 * p], PyBUF_SIMPLE) < 0)
                goto done;
            held[2 * p] = 1;
            continue;
        }
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "join_rows: a piece is bytes or (data, offsets)");
            goto done;
        }
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(item, 0), &bufs[2 * p], PyBUF_SIMPLE) < 0)
            goto done;
        held[2 * p] = 1;
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(item, 1), &bufs[2 * p + 1], PyBUF_SIMPLE) < 0)
            goto done;
        held[2 * p + 1] = 1;
        if (bufs[2 * p + 1].len != (n + 1) * 8) {
            PyErr_SetString(PyExc_ValueError, "join_rows: offsets must be n + 1 int64 values");
            goto done;
        }
        const int64_t *off = (const int64_t *)bufs[2 * p + 1].buf;
        for (Py_ssize_t i = 0; i < n; i++) {
            if (off[i] < 0 || off[i + 1] < off[i] || off[i + 1] > (int64_t)bufs[2 * p].len) {
                PyErr_SetString(PyExc_ValueError, "join_rows: offsets out of order or beyond the data");
                goto done;
            }
        }
        if (n == 0 && (off[0] < 0 || off[0] > (int64_t)bufs[2 * p].len)) {
            PyErr_SetString(PyExc_ValueError, "join_rows: offsets beyond the data");
            goto done;
        }
    }
    off_out = PyBytes_FromStringAndSize(NULL, (n + 1) * 8);
    if (off_out == NULL)
        goto done;
    int64_t *out_off = (int64_t *)PyBytes_AS_STRING(off_out);
    int64_t total = 0;
    for (Py_ssize_t p = 0; p < k; p++) {
        if (held[2 * p + 1]) {
            const int64_t *off = (const int64_t *)bufs[2 * p + 1].buf;
            total += off[n] - off[0];
        } else {
            total += (int64_t)bufs[2 * p].len * n;
        }
    }
    data_out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (data_out == NULL)
        goto done;
    char *out = PyBytes_AS_STRING(data_out);
    Py_BEGIN_ALLOW_THREADS
    int64_t at = 0;
    out_off[0] = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        for (Py_ssize_t p = 0; p < k; p++) {
            const char *src = (const char *)bufs[2 * p].buf;
            if (held[2 * p + 1]) {
                const int64_t *off = (const int64_t *)bufs[2 * p + 1].buf;
                int64_t len = off[i + 1] - off[i];
                memcpy(out + at, src + off[i], (size_t)len);
                at += len;
            } else {
                memcpy(out + at, src, (size_t)bufs[2 * p].len);
                at += bufs[2 * p].len;
            }
        }
        out_off[i + 1] = at;
    }
    Py_END_ALLOW_THREADS
    result = PyTuple_Pack(2, data_out, off_out);
done:
    if (bufs != NULL && held != NULL)
        for (Py_ssize_t j = 0; j < 2 * k; j++)
            if (held[j])
                PyBuffer_Release(&bufs[j]);
    PyMem_Free(bufs);
    PyMem_Free(held);
    Py_XDECREF(data_out);
    Py_XDECREF(off_out);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef module_methods[] = {
    {"bind_libpq", bind_libpq, METH_VARARGS,
     "bind_libpq(PQgetCopyData, PQconsumeInput, PQsocket, PQfreemem) -- function addresses"},
    {"decode_payloads", (PyCFunction)(void (*)(void))decode_payloads, METH_VARARGS | METH_KEYWORDS,
     "decode_payloads(payloads, oid, kinds, in_stream=False, run_max=65536) -> items"},
    {"parse_copy_binary", parse_copy_binary, METH_VARARGS,
     "parse_copy_binary(data, kinds) -> (n, columns): COPY (FORMAT binary) output into column buffers"},
    {"join_rows", join_rows, METH_VARARGS,
     "join_rows(pieces, n) -> (data, offsets): each row the concatenation of the pieces' rows (bytes: a literal)"},
    {"sha256_many", sha256_many, METH_VARARGS,
     "sha256_many(data, offsets) -> bytes: SHA-256 of each data[offsets[i]:offsets[i + 1]], 32 bytes each"},
    {"parse_timestamptz", py_parse_timestamptz, METH_O,
     "parse_timestamptz(text: bytes) -> microseconds since the epoch, or None if not accepted"},
    {NULL}
};

static struct PyModuleDef wire_module = {
    PyModuleDef_HEAD_INIT, "pulse.source._wire",
    "The replication stream's hot path: reading CopyData without the GIL, Inserts into columns.", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__wire(void)
{
    if (PyType_Ready(&ReaderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&wire_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&ReaderType);
    if (PyModule_AddObject(m, "Reader", (PyObject *)&ReaderType) < 0) {
        Py_DECREF(&ReaderType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "FLAG_REPLY", FLAG_REPLY);
    PyModule_AddIntConstant(m, "FLAG_ENDED", FLAG_ENDED);
    return m;
}
