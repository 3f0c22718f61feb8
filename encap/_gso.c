/* encap._gso: encap/gso.py's segment_tcp, coalesce, join and finish_checksum in C.
 *
 * The same operations with the same results, byte for byte (tests/encap/test_gso.py
 * holds them to it); only faster: the checksum sums 64 bits at a time, and the
 * copies are memcpy. Input is never trusted: anything that does not parse makes a
 * function return None (gso.py raises DecodeError for it), never read out of bounds.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define PROTO_TCP 6
#define PROTO_UDP 17
#define MAX_UDP_SEGMENTS 64
#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_CWR 0x80
#define MAX_COALESCED 0xFFFF
#define MAX_TRAIN_SEGMENTS 128
#define ETHERTYPE_IPV4 0x0800
#define ETHERTYPE_IPV6 0x86DD

static inline uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v & 0xFF; }
static inline void put32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24; p[1] = (v >> 16) & 0xFF; p[2] = (v >> 8) & 0xFF; p[3] = v & 0xFF;
}

/* The one's-complement sum of p[0:n] as big-endian 16-bit words, plus `initial`:
 * 0 only when everything was zero, else 1..0xFFFF (RFC 1071's end-around carry). */
static uint32_t ones_sum(const uint8_t *p, size_t n, uint32_t initial) {
    uint64_t sum = 0;
    while (n >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        sum += (word & 0xFFFFFFFFu) + (word >> 32);
        p += 8;
        n -= 8;
    }
    while (n >= 2) {
        uint16_t word;
        memcpy(&word, p, 2);
        sum += word;
        p += 2;
        n -= 2;
    }
    if (n) {
        uint8_t last[2] = {p[0], 0};
        uint16_t word;
        memcpy(&word, last, 2);
        sum += word;
    }
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    /* Native words summed: back to big-endian (the sum commutes with the swap). */
    uint16_t native = (uint16_t)sum;
    uint8_t bytes[2];
    memcpy(bytes, &native, 2);
    uint32_t total = (uint32_t)get16(bytes) + initial;
    while (total >> 16)
        total = (total & 0xFFFF) + (total >> 16);
    return total;
}

static uint32_t pseudo_sum_of(const uint8_t *ip, int version, uint32_t length, int protocol) {
    uint32_t sum = (uint32_t)protocol + (length & 0xFFFF) + (length >> 16);
    if (version == 4)
        return ones_sum(ip + 12, 8, sum);
    return ones_sum(ip + 8, 32, sum);
}

static uint32_t pseudo_sum(const uint8_t *ip, int version, uint32_t tcp_length) {
    return pseudo_sum_of(ip, version, tcp_length, PROTO_TCP);
}

static void set_ipv4_length(uint8_t *ip, uint16_t total_length, uint16_t identification) {
    size_t header_length = (size_t)(ip[0] & 0x0F) * 4;
    put16(ip + 2, total_length);
    put16(ip + 4, identification);
    put16(ip + 10, 0);
    put16(ip + 10, (uint16_t)~ones_sum(ip, header_length, 0));
}

/* (version, header end) of the TCP packet at inner_ip, or version 0 if it is not one. */
static int inner_layout(const uint8_t *p, Py_ssize_t length, Py_ssize_t inner_ip,
                        Py_ssize_t transport, Py_ssize_t *header_end) {
    if (!(0 <= inner_ip && inner_ip < transport && transport <= length - 20))
        return 0;
    int version = p[inner_ip] >> 4;
    if (version == 4) {
        if (transport != inner_ip + (p[inner_ip] & 0x0F) * 4 || p[inner_ip + 9] != PROTO_TCP)
            return 0;
    } else if (version == 6) {
        if (transport < inner_ip + 40)
            return 0;
    } else {
        return 0;
    }
    *header_end = transport + (p[transport + 12] >> 4) * 4;
    if (!(transport + 20 <= *header_end && *header_end <= length))
        return 0;
    return version;
}

static PyObject *segment_tcp(PyObject *self, PyObject *args) {
    Py_buffer source, arena;
    Py_ssize_t inner_ip, transport, gso_size;
    int outer_ipv4, remote_checksum = 0;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "y*nnnpw*|p", &source, &inner_ip, &transport, &gso_size,
                          &outer_ipv4, &arena, &remote_checksum))
        return NULL;
    const uint8_t *src = source.buf;
    uint8_t *dst = arena.buf;
    Py_ssize_t header_end;
    int version = inner_layout(src, source.len, inner_ip, transport, &header_end);
    if (!version || gso_size < 1 || (outer_ipv4 && (inner_ip < 20 || src[0] >> 4 != 4))) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    Py_ssize_t payload = source.len - header_end;
    Py_ssize_t count = payload > 0 ? (payload + gso_size - 1) / gso_size : 1;
    Py_ssize_t stride = header_end + gso_size;
    Py_ssize_t last_length = header_end + payload - (count - 1) * gso_size;
    if (arena.len < (count - 1) * stride + last_length) {
        PyErr_Format(PyExc_ValueError, "the arena holds %zd bytes; %zd segments need more",
                     arena.len, count);
        goto done;
    }
    uint8_t flags = src[transport + 13];
    uint32_t sequence = get32(src + transport + 4);
    uint16_t inner_id = version == 4 ? get16(src + inner_ip + 4) : 0;
    uint16_t outer_id = outer_ipv4 ? get16(src + 4) : 0;
    for (Py_ssize_t k = 0; k < count; k++) {
        uint8_t *segment = dst + k * stride;
        Py_ssize_t length = k < count - 1 ? stride : last_length;
        memcpy(segment, src, header_end);
        memcpy(segment + header_end, src + header_end + k * gso_size, length - header_end);
        if (outer_ipv4)
            set_ipv4_length(segment, (uint16_t)length, (uint16_t)(outer_id + k));
        if (version == 4)
            set_ipv4_length(segment + inner_ip, (uint16_t)(length - inner_ip),
                            (uint16_t)(inner_id + k));
        else
            put16(segment + inner_ip + 4, (uint16_t)(length - inner_ip - 40));
        uint8_t *tcp = segment + transport;
        put32(tcp + 4, sequence + (uint32_t)(k * gso_size));
        uint8_t segment_flags = flags;
        if (k > 0)
            segment_flags &= ~TCP_CWR;
        if (k < count - 1)
            segment_flags &= ~(TCP_FIN | TCP_PSH);
        tcp[13] = segment_flags;
        uint32_t tcp_length = (uint32_t)(length - transport);
        uint32_t pseudo = pseudo_sum(segment + inner_ip, version, tcp_length);
        if (remote_checksum) {
            put16(tcp + 16, (uint16_t)pseudo);
            continue;
        }
        put16(tcp + 16, 0);
        put16(tcp + 16, (uint16_t)~ones_sum(tcp, tcp_length, pseudo));
    }
    result = Py_BuildValue("nnn", count, stride, last_length);
done:
    PyBuffer_Release(&source);
    PyBuffer_Release(&arena);
    return result;
}

static PyObject *finish_checksum(PyObject *self, PyObject *args) {
    Py_buffer packet;
    Py_ssize_t start, offset;
    if (!PyArg_ParseTuple(args, "w*nn", &packet, &start, &offset))
        return NULL;
    Py_ssize_t field = start + offset;
    PyObject *result = Py_False;
    if (0 <= start && start <= field && field <= packet.len - 2) {
        uint8_t *p = packet.buf;
        uint16_t checksum = (uint16_t)~ones_sum(p + start, (size_t)(packet.len - start), 0);
        if (checksum == 0 && offset == 6)
            checksum = 0xFFFF;
        put16(p + field, checksum);
        result = Py_True;
    }
    PyBuffer_Release(&packet);
    return Py_NewRef(result);
}

/* -- coalescing ------------------------------------------------------------------------ */

typedef struct {
    int version, protocol;
    Py_ssize_t transport, header_end;
    uint32_t sequence;
    uint8_t flags;
} Segment;

/* Whether two one's-complement sums are equal (0 and 0xFFFF are both zero). */
static int same_sum(uint16_t a, uint16_t b) {
    return a == b || (a == 0 && b == 0xFFFF) || (a == 0xFFFF && b == 0);
}

/* Whether the packet may be joined to others (gso.py's _joinable): a TCP data segment
 * (ACK, maybe PSH) or a UDP datagram with data, no IPv4 options or fragments, no IPv6
 * extension headers, exact lengths, a valid checksum (or, if remote_checksum, the
 * pseudo-header sum a sender left for the receiver to finish), and behind an Ethernet
 * header the EtherType of its IP version. */
static int joinable(const uint8_t *p, Py_ssize_t length, Py_ssize_t l2, int ethernet,
                    int remote_checksum, Segment *s) {
    if (length < l2 + 28)
        return 0;
    const uint8_t *ip = p + l2;
    int version = ip[0] >> 4;
    if (version == 4) {
        s->protocol = ip[9];
        if (ip[0] != 0x45 || (ip[6] & 0x3F) || ip[7] || get16(ip + 2) != length - l2 ||
            (ethernet && get16(ip - 2) != ETHERTYPE_IPV4))
            return 0;
        s->transport = l2 + 20;
    } else if (version == 6) {
        s->protocol = ip[6];
        if (length < l2 + 48 || get16(ip + 4) != length - l2 - 40 ||
            (ethernet && get16(ip - 2) != ETHERTYPE_IPV6))
            return 0;
        s->transport = l2 + 40;
    } else {
        return 0;
    }
    const uint8_t *header = p + s->transport;
    int unchecked = 0;
    if (s->protocol == PROTO_TCP) {
        if (length < s->transport + 20)
            return 0;
        s->header_end = s->transport + (header[12] >> 4) * 4;
        s->flags = header[13];
        if (s->header_end < s->transport + 20 || s->header_end >= length ||
            (s->flags & ~TCP_PSH) != TCP_ACK)
            return 0;
        s->sequence = get32(header + 4);
    } else if (s->protocol == PROTO_UDP) {
        s->header_end = s->transport + 8;
        s->flags = 0;
        s->sequence = 0;
        if (s->header_end >= length || get16(header + 4) != length - s->transport)
            return 0;
        unchecked = version == 4 && get16(header + 6) == 0;
    } else {
        return 0;
    }
    uint32_t transport_length = (uint32_t)(length - s->transport);
    uint32_t pseudo = pseudo_sum_of(ip, version, transport_length, s->protocol);
    uint16_t field = get16(header + (s->protocol == PROTO_TCP ? 16 : 6));
    int left_to_us = remote_checksum && same_sum(field, (uint16_t)pseudo);
    if (!unchecked && !left_to_us && ones_sum(header, transport_length, pseudo) != 0xFFFF)
        return 0;
    s->version = version;
    return 1;
}

static int same_range(const uint8_t *a, const uint8_t *b, Py_ssize_t start, Py_ssize_t end) {
    return memcmp(a + start, b + start, end - start) == 0;
}

static int same_stream(const uint8_t *first, const Segment *f, const uint8_t *packet,
                       const Segment *s, Py_ssize_t l2) {
    if (s->version != f->version || s->protocol != f->protocol ||
        s->header_end != f->header_end || !same_range(first, packet, 0, l2))
        return 0;
    if (s->version == 4) {
        if (!same_range(first, packet, l2 + 1, l2 + 2) ||
            !same_range(first, packet, l2 + 6, l2 + 10) ||
            !same_range(first, packet, l2 + 12, l2 + 20))
            return 0;
    } else if (!same_range(first, packet, l2, l2 + 4) ||
               !same_range(first, packet, l2 + 6, l2 + 40)) {
        return 0;
    }
    Py_ssize_t t = s->transport;
    if (!same_range(first, packet, t, t + 4))
        return 0;
    if (s->protocol == PROTO_UDP)
        return 1;
    return same_range(first, packet, t + 8, t + 13) && same_range(first, packet, t + 14, t + 16) &&
           same_range(first, packet, t + 20, s->header_end);
}

typedef struct {
    const uint8_t *data;
    Py_ssize_t length;
} Packet;

typedef struct {
    Py_ssize_t end, gso_size, transport;
    int joined;
} Run;

/* Copy packets[0] to out + start and join to it what follows of its stream, as far as
 * out_length allows (room for packets[0] is the caller's to check). Returns how many
 * packets the run took. */
static Py_ssize_t join_run(const Packet *packets, Py_ssize_t count, Py_ssize_t l2, int ethernet,
                           int remote_checksum, uint8_t *out, Py_ssize_t out_length,
                           Py_ssize_t start, Run *run) {
    const uint8_t *first = packets[0].data;
    Py_ssize_t end = start + packets[0].length, i = 1;
    memcpy(out + start, first, packets[0].length);
    Segment f, s;
    run->gso_size = run->transport = 0;
    run->joined = 1;
    if (joinable(first, packets[0].length, l2, ethernet, remote_checksum, &f)) {
        Py_ssize_t size = packets[0].length - f.header_end;
        uint32_t next_sequence = f.sequence + (uint32_t)size;
        uint8_t flags = f.flags;
        Py_ssize_t limit = MAX_COALESCED + (f.version == 6 ? 40 : 0);
        int tcp = f.protocol == PROTO_TCP;
        while (i < count && !(flags & TCP_PSH) && (tcp || run->joined < MAX_UDP_SEGMENTS)) {
            const uint8_t *packet = packets[i].data;
            Py_ssize_t length = packets[i].length;
            if (!joinable(packet, length, l2, ethernet, remote_checksum, &s))
                break;
            Py_ssize_t added = length - f.header_end;
            if ((tcp && s.sequence != next_sequence) || added > size ||
                end + added - start - l2 > limit || end + added > out_length ||
                !same_stream(first, &f, packet, &s, l2))
                break;
            memcpy(out + end, packet + s.header_end, added);
            end += added;
            next_sequence += (uint32_t)added;
            flags |= s.flags;
            run->joined++;
            i++;
            if (added < size)
                break;
        }
        if (run->joined > 1) {
            uint8_t *ip = out + start + l2;
            if (f.version == 4)
                set_ipv4_length(ip, (uint16_t)(end - start - l2), get16(ip + 4));
            else
                put16(ip + 4, (uint16_t)(end - start - l2 - 40));
            uint8_t *header = out + start + f.transport;
            uint32_t whole = (uint32_t)(end - start - f.transport);
            uint16_t pseudo = (uint16_t)pseudo_sum_of(ip, f.version, whole, f.protocol);
            if (tcp) {
                header[13] = flags;
                put16(header + 16, pseudo);
            } else {
                put16(header + 4, (uint16_t)whole);
                put16(header + 6, pseudo);
            }
            run->gso_size = size;
            run->transport = f.transport;
        }
    }
    run->end = end;
    return i;
}

static PyObject *coalesce(PyObject *self, PyObject *args) {
    PyObject *packets;
    Py_ssize_t count, l2, headroom;
    int ethernet;
    Py_buffer arena;
    if (!PyArg_ParseTuple(args, "Onnpw*n", &packets, &count, &l2, &ethernet, &arena, &headroom))
        return NULL;
    PyObject *runs = PyList_New(0);
    Py_buffer *views = NULL;
    Packet *parts = NULL;
    Py_ssize_t got = 0;
    if (runs == NULL)
        goto fail;
    if (count < 0 || l2 < 0 || headroom < 0 || (ethernet && l2 < 14)) {
        PyErr_SetString(PyExc_ValueError, "count, l2 and headroom may not be negative, and an "
                                          "Ethernet link header is 14 bytes at least");
        goto fail;
    }
    views = PyMem_Calloc(count ? count : 1, sizeof(Py_buffer));
    parts = PyMem_Calloc(count ? count : 1, sizeof(Packet));
    if (views == NULL || parts == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (; got < count; got++) {
        PyObject *item = PySequence_GetItem(packets, got);
        if (item == NULL)
            goto fail;
        int failed = PyObject_GetBuffer(item, &views[got], PyBUF_SIMPLE);
        Py_DECREF(item);
        if (failed)
            goto fail;
        parts[got].data = views[got].buf;
        parts[got].length = views[got].len;
    }
    Py_ssize_t at = 0, i = 0;
    while (i < count) {
        Py_ssize_t start = at + headroom;
        if (start + parts[i].length > arena.len) {
            PyErr_SetString(PyExc_ValueError, "the arena is too small for the packets");
            goto fail;
        }
        Run run;
        i += join_run(parts + i, count - i, l2, ethernet, 0, arena.buf, arena.len, start, &run);
        at = run.end;
        PyObject *entry = Py_BuildValue("nnnni", start, run.end, run.gso_size, run.transport,
                                        run.joined);
        if (entry == NULL || PyList_Append(runs, entry) < 0) {
            Py_XDECREF(entry);
            goto fail;
        }
        Py_DECREF(entry);
    }
    for (Py_ssize_t k = 0; k < got; k++)
        PyBuffer_Release(&views[k]);
    PyMem_Free(views);
    PyMem_Free(parts);
    PyBuffer_Release(&arena);
    return runs;
fail:
    for (Py_ssize_t k = 0; k < got; k++)
        PyBuffer_Release(&views[k]);
    PyMem_Free(views);
    PyMem_Free(parts);
    PyBuffer_Release(&arena);
    Py_XDECREF(runs);
    return NULL;
}

/* gso.py's join: the run that starts at train[at:], in a train of datagrams of step bytes
 * each (the last may be shorter) that ends at end, copied to out[0:]. */
static PyObject *join(PyObject *self, PyObject *args) {
    Py_buffer train, out;
    Py_ssize_t at, end, step, l2;
    int ethernet, remote_checksum = 0;
    if (!PyArg_ParseTuple(args, "y*nnnnpw*|p", &train, &at, &end, &step, &l2, &ethernet, &out,
                          &remote_checksum))
        return NULL;
    PyObject *result = NULL;
    if (at < 0 || at > end || end > train.len || step <= 0 || l2 < 0 || (ethernet && l2 < 14)) {
        PyErr_SetString(PyExc_ValueError, "at, end, step or l2 out of range");
        goto done;
    }
    Packet parts[MAX_TRAIN_SEGMENTS];
    Py_ssize_t count = 0;
    for (Py_ssize_t k = at; k < end && count < MAX_TRAIN_SEGMENTS; k += step, count++) {
        parts[count].data = (const uint8_t *)train.buf + k;
        parts[count].length = end - k < step ? end - k : step;
    }
    if (count == 0) {
        parts[0].data = train.buf;
        parts[0].length = 0;
        count = 1;
    }
    if (parts[0].length > out.len) {
        PyErr_SetString(PyExc_ValueError, "out is too small for a datagram of the train");
        goto done;
    }
    Run run;
    join_run(parts, count, l2, ethernet, remote_checksum, out.buf, out.len, 0, &run);
    result = Py_BuildValue("nnni", run.end, run.gso_size, run.transport, run.joined);
done:
    PyBuffer_Release(&train);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"segment_tcp", segment_tcp, METH_VARARGS,
     "segment_tcp(datagram, inner_ip, transport, gso_size, outer_ipv4, arena, "
     "remote_checksum=False) -> "
     "(count, stride, last_length), or None if the packet does not parse"},
    {"finish_checksum", finish_checksum, METH_VARARGS,
     "finish_checksum(packet, start, offset) -> False if the offsets do not fit"},
    {"coalesce", coalesce, METH_VARARGS,
     "coalesce(packets, count, l2, ethernet, arena, headroom) -> "
     "[(start, end, gso_size, transport, joined)]"},
    {"join", join, METH_VARARGS,
     "join(train, at, end, step, l2, ethernet, out, remote_checksum=False) -> "
     "(end, gso_size, transport, joined)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "encap._gso",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__gso(void) { return PyModule_Create(&module); }
