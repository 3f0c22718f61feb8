/* tunnelrouter.io._mmsg: sendmmsg(2) and recvmmsg(2), which Python's socket module lacks.
 *
 * One system call for a batch of datagrams instead of one each: for a raw socket,
 * which has no GSO, this is most of what batching can save. io/underlay.py (sending) and
 * io/raw_socket.py (receiving) use these on real sockets and fall back to one call per
 * datagram where this module was not built; the two give the same datagrams and the
 * same counts (tests/tunnelrouter/io/).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#define CHUNK 64

typedef struct {
    struct sockaddr_storage storage;
    socklen_t length;
} Address;

/* (host, port[, flowinfo, scope_id]) -> sockaddr, by the text of host (an IPv6 address
 * has a colon), as Python's socket module takes it. */
static int parse_address(PyObject *address, Address *out) {
    const char *host;
    int port;
    unsigned int flow_info = 0, scope_id = 0;
    if (!PyTuple_Check(address)) {
        PyErr_SetString(PyExc_TypeError, "an address is a (host, port[, flowinfo, scope_id]) "
                                         "tuple");
        return -1;
    }
    if (!PyArg_ParseTuple(address, "si|II", &host, &port, &flow_info, &scope_id))
        return -1;
    memset(out, 0, sizeof(*out));
    if (strchr(host, ':')) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&out->storage;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        in6->sin6_flowinfo = htonl(flow_info);
        in6->sin6_scope_id = scope_id;
        if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1)
            goto bad;
        out->length = sizeof(*in6);
    } else {
        struct sockaddr_in *in4 = (struct sockaddr_in *)&out->storage;
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &in4->sin_addr) != 1)
            goto bad;
        out->length = sizeof(*in4);
    }
    return 0;
bad:
    PyErr_Format(PyExc_ValueError, "not an IP address: %s", host);
    return -1;
}

/* One datagram of iovec[0] to the address. */
static void address_message(struct mmsghdr *message, struct iovec *iovec, Address *address) {
    message->msg_hdr.msg_name = &address->storage;
    message->msg_hdr.msg_namelen = address->length;
    message->msg_hdr.msg_iov = iovec;
    message->msg_hdr.msg_iovlen = 1;
}

/* Send messages[0:count]; a message that fails is tried once more (an ICMP error about
 * an earlier datagram fails the next send without sending it), unless the socket is
 * full. Returns (sent, sent_bytes, [(index, errno) of each message that failed]). */
static PyObject *send_messages(int fd, struct mmsghdr *messages, struct iovec *iovecs,
                               Py_ssize_t count) {
    Py_ssize_t i = 0, sent = 0, sent_bytes = 0;
    int retried = 0;
    PyObject *errors = PyList_New(0);
    if (errors == NULL)
        return NULL;
    while (i < count) {
        int n = (int)(count - i < CHUNK ? count - i : CHUNK), result;
        Py_BEGIN_ALLOW_THREADS
        result = sendmmsg(fd, messages + i, (unsigned)n, MSG_DONTWAIT);
        Py_END_ALLOW_THREADS
        if (result > 0) {
            for (int k = 0; k < result; k++)
                sent_bytes += (Py_ssize_t)iovecs[i + k].iov_len;
            sent += result;
            i += result;
            retried = 0;
            continue;
        }
        int error = errno;
        if (result == 0)
            error = EIO;
        if (error == EINTR)
            continue;
        if (!retried && error != EAGAIN && error != ENOBUFS) {
            retried = 1;
            continue;
        }
        PyObject *failure = Py_BuildValue("ni", i, error);
        if (failure == NULL || PyList_Append(errors, failure) < 0) {
            Py_XDECREF(failure);
            Py_DECREF(errors);
            return NULL;
        }
        Py_DECREF(failure);
        i++;
        retried = 0;
    }
    return Py_BuildValue("nnN", sent, sent_bytes, errors);
}

/* send_strided(fd, buffer, stride, length, (host, port)): buffer[0:length] as datagrams of
 * `stride` bytes (the last may be shorter), all to one address. */
static PyObject *send_strided(PyObject *self, PyObject *args) {
    int fd;
    Py_buffer buffer;
    Py_ssize_t stride, length;
    PyObject *address_object, *result = NULL;
    Address address;
    struct mmsghdr *messages = NULL;
    struct iovec *iovecs = NULL;
    if (!PyArg_ParseTuple(args, "iy*nnO", &fd, &buffer, &stride, &length, &address_object))
        return NULL;
    if (stride < 1 || length < 0 || length > buffer.len) {
        PyErr_SetString(PyExc_ValueError, "stride and length do not fit the buffer");
        goto done;
    }
    if (parse_address(address_object, &address) < 0)
        goto done;
    Py_ssize_t count = (length + stride - 1) / stride;
    messages = PyMem_Calloc(count ? count : 1, sizeof(*messages));
    iovecs = PyMem_Calloc(count ? count : 1, sizeof(*iovecs));
    if (messages == NULL || iovecs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < count; k++) {
        Py_ssize_t at = k * stride;
        iovecs[k].iov_base = (char *)buffer.buf + at;
        iovecs[k].iov_len = (size_t)(length - at < stride ? length - at : stride);
        address_message(&messages[k], &iovecs[k], &address);
    }
    result = send_messages(fd, messages, iovecs, count);
done:
    PyMem_Free(messages);
    PyMem_Free(iovecs);
    PyBuffer_Release(&buffer);
    return result;
}

/* send_many(fd, buffers, (host, port)): each buffer as one datagram, all to one address. */
static PyObject *send_many(PyObject *self, PyObject *args) {
    int fd;
    PyObject *sequence, *address_object, *fast, *result = NULL;
    Address address;
    if (!PyArg_ParseTuple(args, "iOO", &fd, &sequence, &address_object))
        return NULL;
    if (parse_address(address_object, &address) < 0)
        return NULL;
    fast = PySequence_Fast(sequence, "buffers must be a sequence");
    if (fast == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(fast), got = 0;
    struct mmsghdr *messages = PyMem_Calloc(count ? count : 1, sizeof(*messages));
    struct iovec *iovecs = PyMem_Calloc(count ? count : 1, sizeof(*iovecs));
    Py_buffer *views = PyMem_Calloc(count ? count : 1, sizeof(*views));
    if (messages == NULL || iovecs == NULL || views == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; got < count; got++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, got), &views[got],
                               PyBUF_SIMPLE) < 0)
            goto done;
        iovecs[got].iov_base = views[got].buf;
        iovecs[got].iov_len = (size_t)views[got].len;
        address_message(&messages[got], &iovecs[got], &address);
    }
    result = send_messages(fd, messages, iovecs, count);
done:
    for (Py_ssize_t k = 0; k < got; k++)
        PyBuffer_Release(&views[k]);
    PyMem_Free(views);
    PyMem_Free(messages);
    PyMem_Free(iovecs);
    Py_DECREF(fast);
    return result;
}

/* The text of a source address; the last one is kept, as datagrams come in runs from
 * one peer. */
static PyObject *address_text(const struct sockaddr_storage *source) {
    static struct sockaddr_storage last;
    static PyObject *last_text = NULL;
    size_t size = source->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                : sizeof(struct sockaddr_in);
    if (last_text != NULL && memcmp(&last, source, size) == 0)
        return Py_NewRef(last_text);
    char text[INET6_ADDRSTRLEN];
    const void *raw = source->ss_family == AF_INET6
                          ? (const void *)&((const struct sockaddr_in6 *)source)->sin6_addr
                          : (const void *)&((const struct sockaddr_in *)source)->sin_addr;
    if (inet_ntop(source->ss_family, raw, text, sizeof(text)) == NULL)
        text[0] = '\0';
    PyObject *made = PyUnicode_FromString(text);
    if (made == NULL)
        return NULL;
    Py_XSETREF(last_text, Py_NewRef(made));
    memcpy(&last, source, size);
    return made;
}

/* recv_into(fd, buffers, count, ends, addresses) -> how many datagrams one recvmmsg read
 * into buffers[0:n]; their lengths go to ends[0:n], their sources' text to addresses.
 * OSError as recv would raise it (BlockingIOError when nothing waits). */
static PyObject *recv_into(PyObject *self, PyObject *args) {
    int fd;
    PyObject *buffers, *ends, *addresses;
    Py_ssize_t count;
    if (!PyArg_ParseTuple(args, "iOnOO", &fd, &buffers, &count, &ends, &addresses))
        return NULL;
    if (count < 1 || count > CHUNK)
        count = count < 1 ? 1 : CHUNK;
    struct mmsghdr messages[CHUNK];
    struct iovec iovecs[CHUNK];
    struct sockaddr_storage sources[CHUNK];
    Py_buffer views[CHUNK];
    Py_ssize_t got = 0;
    PyObject *result = NULL;
    memset(messages, 0, sizeof(messages[0]) * count);
    for (; got < count; got++) {
        PyObject *item = PySequence_GetItem(buffers, got);
        if (item == NULL)
            goto done;
        int failed = PyObject_GetBuffer(item, &views[got], PyBUF_WRITABLE);
        Py_DECREF(item);
        if (failed)
            goto done;
        iovecs[got].iov_base = views[got].buf;
        iovecs[got].iov_len = (size_t)views[got].len;
        messages[got].msg_hdr.msg_name = &sources[got];
        messages[got].msg_hdr.msg_namelen = sizeof(sources[got]);
        messages[got].msg_hdr.msg_iov = &iovecs[got];
        messages[got].msg_hdr.msg_iovlen = 1;
    }
    int n;
    Py_BEGIN_ALLOW_THREADS
    n = recvmmsg(fd, messages, (unsigned)count, MSG_DONTWAIT, NULL);
    Py_END_ALLOW_THREADS
    if (n < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    for (int k = 0; k < n; k++) {
        PyObject *length = PyLong_FromUnsignedLong(messages[k].msg_len);
        PyObject *source = address_text(&sources[k]);
        if (length == NULL || source == NULL || PySequence_SetItem(ends, k, length) < 0 ||
            PySequence_SetItem(addresses, k, source) < 0) {
            Py_XDECREF(length);
            Py_XDECREF(source);
            goto done;
        }
        Py_DECREF(length);
        Py_DECREF(source);
    }
    result = PyLong_FromLong(n);
done:
    for (Py_ssize_t k = 0; k < got; k++)
        PyBuffer_Release(&views[k]);
    return result;
}

static PyMethodDef methods[] = {
    {"send_strided", send_strided, METH_VARARGS,
     "send_strided(fd, buffer, stride, length, (host, port)) -> (sent, bytes, [(index, errno)])"},
    {"send_many", send_many, METH_VARARGS,
     "send_many(fd, buffers, (host, port)) -> (sent, bytes, [(index, errno)])"},
    {"recv_into", recv_into, METH_VARARGS,
     "recv_into(fd, buffers, count, ends, addresses) -> datagrams read"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "tunnelrouter.io._mmsg",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__mmsg(void) { return PyModule_Create(&module); }
