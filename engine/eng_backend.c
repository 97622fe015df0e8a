/*
 * eng_backend.c - device names and the choice of backend table: the one place
 * that knows which backends this build has (eng_backend_cuda only where
 * MLS_HAVE_CUDA).
 */
#include <string.h>

#include "eng_internal.h"

static const char *const eng_device_names[ENG_DEVICE_COUNT] = {
    [ENG_DEVICE_CPU] = "cpu",
    [ENG_DEVICE_CUDA] = "cuda",
};

const char *eng_device_name(eng_device device)
{
    return (unsigned)device < ENG_DEVICE_COUNT ? eng_device_names[device] : "?";
}

mls_status eng_device_parse(const char *name, eng_device *device_p)
{
    for (int d = 0; d < ENG_DEVICE_COUNT; d++) {
        if (strcmp(name, eng_device_names[d]) == 0) {
            *device_p = (eng_device)d;
            return MLS_OK;
        }
    }
    return MLS_ERR_INVALID_ARG;
}

mls_status eng_backend_get(eng_device device, const eng_backend_ops **ops_p, mls_err *err)
{
    switch (device) {
    case ENG_DEVICE_CPU:
        *ops_p = &eng_backend_cpu;
        return MLS_OK;
    case ENG_DEVICE_CUDA:
#ifdef MLS_HAVE_CUDA
        *ops_p = &eng_backend_cuda;
        return MLS_OK;
#else
        mls_err_set(err, "built without CUDA: this mlaserve has no CUDA backend (nvcc was not "
                         "found or MLS_CUDA=OFF)");
        return MLS_ERR_UNSUPPORTED;
#endif
    default:
        mls_err_set(err, "unknown device %d", (int)device);
        return MLS_ERR_INVALID_ARG;
    }
}

mls_status eng_device_check(eng_device device, int index, mls_err *err)
{
    const eng_backend_ops *ops;
    mls_status st = eng_backend_get(device, &ops, err);

    if (st != MLS_OK) {
        return st;
    }
    return ops->probe(index, err);
}
