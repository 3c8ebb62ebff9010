/* The compiled fast path of distcache.protocol.decoder.MessageDecoder.next_event.
 *
 * One call decodes the commonest input a server or proxy sees: a whole, legal, single-frame
 * message at the start of the decoder's buffer. Anything else (a partial or illegal header, a
 * frame of the wrong direction, a multi-frame message, the end of the stream) returns None and
 * the pure-Python decoder handles it, so every error and every unusual path has exactly one
 * implementation. Every constant and check comes from _cdecoder_schema.h, generated from the
 * construct schema (distcache/wire/cheader.py); tests/test_accelerator.py proves that both
 * decoders agree on arbitrary bytes split at every point.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_cdecoder_schema.h"

static PyTypeObject *event_class[2];  /* Request, Response: indexed by is_response */
static PyObject *operations;          /* tuple of the Operation members, indexed by value */
static PyObject *need_data;           /* the NEED_DATA sentinel */

static int
check_event_class(PyObject *cls)
{
    PyTypeObject *type = (PyTypeObject *)cls;
    if (!PyType_Check(cls) || !PyType_IsSubtype(type, &PyTuple_Type) ||
        type->tp_basicsize != PyTuple_Type.tp_basicsize || type->tp_dictoffset != 0) {
        PyErr_SetString(PyExc_TypeError, "event classes must be tuple subclasses without slots");
        return -1;
    }
    return 0;
}

/* configure(request_class, response_class, operations, need_data) */
static PyObject *
configure(PyObject *module, PyObject *args)
{
    PyObject *request, *response, *ops, *sentinel;
    if (!PyArg_ParseTuple(args, "OOO!O", &request, &response, &PyTuple_Type, &ops, &sentinel))
        return NULL;
    if (check_event_class(request) < 0 || check_event_class(response) < 0)
        return NULL;
    Py_INCREF(request);
    Py_INCREF(response);
    Py_INCREF(ops);
    Py_INCREF(sentinel);
    Py_XDECREF(event_class[0]);
    Py_XDECREF(event_class[1]);
    Py_XDECREF(operations);
    Py_XDECREF(need_data);
    event_class[0] = (PyTypeObject *)request;
    event_class[1] = (PyTypeObject *)response;
    operations = ops;
    need_data = sentinel;
    Py_RETURN_NONE;
}

/* decode_single(buf, pos, receives, base, eof) -> event, NEED_DATA, or None (decode in Python).
 *
 * buf: the decoder's bytes; pos: its next unparsed byte; receives: the direction accepted (an
 * int) or None for both; base: the stream offset of buf[0]; eof: whether input has ended.
 * Called only between messages (no multi-frame message in progress). */
static PyObject *
decode_single(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "decode_single takes 5 arguments");
        return NULL;
    }
    if (operations == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "decode_single called before configure");
        return NULL;
    }
    PyObject *buf = args[0];
    if (!PyBytes_CheckExact(buf))
        Py_RETURN_NONE;
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t size = PyBytes_GET_SIZE(buf);
    if (pos < 0 || pos > size)
        Py_RETURN_NONE;
    Py_ssize_t available = size - pos;
    if (available < DC_HEADER_SIZE) {
        if (available < DC_MIN_BYTES_EXAMINED) {
            int eof = PyObject_IsTrue(args[4]);
            if (eof < 0)
                return NULL;
            if (!eof)
                return Py_NewRef(need_data);
        }
        Py_RETURN_NONE;
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(buf) + pos;
    unsigned long proto_level = DC_FIELD_proto_level(p);
    unsigned long is_response = DC_FIELD_is_response(p);
    unsigned long request_uid = DC_FIELD_request_uid(p);
    unsigned long op_class = DC_FIELD_op_class(p);
    unsigned long operation = DC_FIELD_operation(p);
    unsigned long complete = DC_FIELD_complete(p);
    unsigned long data_len = DC_FIELD_data_len(p);
    (void)op_class;
    if (!DC_HEADER_LEGAL || !complete || data_len > DC_MAX_PAYLOAD)
        Py_RETURN_NONE;
    if (is_response > 1 || operation >= (unsigned long)PyTuple_GET_SIZE(operations))
        Py_RETURN_NONE; /* the schema allows what the event tables do not know */
    if (args[2] != Py_None) {
        long receives = PyLong_AsLong(args[2]);
        if (receives == -1 && PyErr_Occurred())
            return NULL;
        if ((unsigned long)receives != is_response)
            Py_RETURN_NONE;
    }
    if ((Py_ssize_t)(DC_HEADER_SIZE + data_len) > available)
        Py_RETURN_NONE;
    Py_ssize_t base = PyLong_AsSsize_t(args[3]);
    if (base == -1 && PyErr_Occurred())
        return NULL;

    PyTypeObject *cls = event_class[is_response];
    PyObject *event = cls->tp_alloc(cls, 6);
    if (event == NULL)
        return NULL;
    PyObject *items[6] = {
        PyLong_FromUnsignedLong(request_uid),
        Py_NewRef(PyTuple_GET_ITEM(operations, operation)),
        PyBytes_FromStringAndSize((const char *)p + DC_HEADER_SIZE, (Py_ssize_t)data_len),
        PyLong_FromLong(1),
        PyLong_FromSsize_t(base + pos),
        PyLong_FromUnsignedLong(proto_level),
    };
    for (int i = 0; i < 6; i++) {
        if (items[i] == NULL) {
            for (int j = 0; j < 6; j++)
                Py_XDECREF(items[j]);
            Py_DECREF(event);
            return NULL;
        }
    }
    for (int i = 0; i < 6; i++)
        PyTuple_SET_ITEM(event, i, items[i]);
    return event;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(request_class, response_class, operations, need_data): what events are made of."},
    {"decode_single", (PyCFunction)(void (*)(void))decode_single, METH_FASTCALL,
     "decode_single(buf, pos, receives, base, eof) -> event, NEED_DATA or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "distcache.protocol._cdecoder",
    "The compiled fast path of the message decoder (optional; see decoder.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__cdecoder(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddStringConstant(m, "SCHEMA_DIGEST", DC_SCHEMA_DIGEST) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
