/*
 * bitsmith runtime: load a bitsmith artifact and run it without Python.
 *
 * An artifact is a directory written by the bitsmith compiler (manifest.json, model.so,
 * weights.safetensors, ...). bsm_open() verifies it before any of its code is loaded: the manifest
 * must be a bitsmith artifact of a known version, every member name must stay inside the directory,
 * and the SHA-256 of every listed file must match. Only then is the compiled library loaded into the
 * TVM Relax VM and the weights read.
 *
 * Conventions
 *   - Every function that can fail returns a bsm_status; BSM_OK is 0. On failure,
 *     bsm_last_error() returns a message for the calling thread (what failed, which file, input or
 *     option, and what to do). No C++ exception ever crosses this interface.
 *   - Strings and shape arrays returned by the library are owned by the model and stay valid until
 *     bsm_close(). Output data pointers (bsm_output_data) stay valid until the next bsm_run,
 *     bsm_time or bsm_close on that model.
 *   - A model handle must be used by one thread at a time; distinct handles are independent.
 *   - Worker threads: the TVM thread pool sizes itself from the TVM_NUM_THREADS environment variable
 *     (default: the number of physical cores) when a model first runs.
 *
 * Minimal use:
 *     bsm_model* m;
 *     if (bsm_open("out/model", &m) != BSM_OK) { fprintf(stderr, "%s\n", bsm_last_error()); ... }
 *     int64_t shape[4] = {1, 3, 224, 224};
 *     bsm_set_input(m, 0, pixels, "float32", 4, shape);
 *     bsm_run(m);
 *     const void* logits; bsm_output_data(m, 0, &logits);
 *     bsm_close(m);
 */
#ifndef BITSMITH_RUNTIME_H_
#define BITSMITH_RUNTIME_H_

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define BSM_API __declspec(dllexport)
#elif defined(__GNUC__)
#define BSM_API __attribute__((visibility("default")))
#else
#define BSM_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* The artifact format versions this runtime reads (manifest "version"). */
#define BSM_ARTIFACT_VERSION 1

typedef enum bsm_status {
  BSM_OK = 0,
  BSM_ERROR_INVALID_ARGUMENT = 1, /* null pointer, index out of range, bad option */
  BSM_ERROR_IO = 2,               /* a file cannot be opened, read or written */
  BSM_ERROR_ARTIFACT = 3,         /* not a bitsmith artifact, or a malformed manifest/weights file */
  BSM_ERROR_VERIFICATION = 4,     /* a listed file is missing or its SHA-256 differs: tampered */
  BSM_ERROR_MISMATCH = 5,         /* an input's dtype/shape or a buffer size does not match */
  BSM_ERROR_STATE = 6,            /* call order: an input never set, outputs read before a run */
  BSM_ERROR_UNSUPPORTED = 7,      /* a device, dtype or format this runtime build cannot handle */
  BSM_ERROR_RUNTIME = 8,          /* TVM failed while loading or running the model */
  BSM_ERROR_OUT_OF_MEMORY = 9,
  BSM_ERROR_INTERNAL = 10
} bsm_status;

/* An opened, verified artifact with its VM, weights and input/output buffers. */
typedef struct bsm_model bsm_model;

/* Describes one input or output as the manifest declares it. Pointers are owned by the model. */
typedef struct bsm_tensor_info {
  const char* name;
  const char* dtype;    /* numpy-style name: "float32", "int64", "int32", "int8", "uint8", ... */
  int32_t ndim;
  const int64_t* shape; /* ndim entries */
  size_t num_bytes;     /* product(shape) * element size */
} bsm_tensor_info;

/* Library version string, e.g. "0.1.0". */
BSM_API const char* bsm_version(void);

/* The message of the last failure on the calling thread ("" if none). Valid until the next failing
 * call on this thread. */
BSM_API const char* bsm_last_error(void);

/* A short constant name for a status, e.g. "BSM_ERROR_VERIFICATION". */
BSM_API const char* bsm_status_name(bsm_status status);

/* Verify and load the artifact in directory `artifact_dir`. On success *out is a new model; on
 * failure *out is NULL. */
BSM_API bsm_status bsm_open(const char* artifact_dir, bsm_model** out);

/* Free a model (NULL is allowed). Invalidates every pointer the model handed out. */
BSM_API void bsm_close(bsm_model* model);

/* Number of inputs / outputs (0 for a NULL model). */
BSM_API size_t bsm_input_count(const bsm_model* model);
BSM_API size_t bsm_output_count(const bsm_model* model);

/* Describe input / output `index` (in manifest order). */
BSM_API bsm_status bsm_input_info(const bsm_model* model, size_t index, bsm_tensor_info* info);
BSM_API bsm_status bsm_output_info(const bsm_model* model, size_t index, bsm_tensor_info* info);

/* The index of the input / output called `name`. */
BSM_API bsm_status bsm_find_input(const bsm_model* model, const char* name, size_t* index);
BSM_API bsm_status bsm_find_output(const bsm_model* model, const char* name, size_t* index);

/* Copy a caller buffer, described by dtype/ndim/shape, into input `index`. The description must
 * equal the manifest's (BSM_ERROR_MISMATCH otherwise, with a message such as
 * "input 'x' must be float32[1,3,24,24], got float64[1,3,24,24]"). The data is C-contiguous. */
BSM_API bsm_status bsm_set_input(bsm_model* model, size_t index, const void* data, const char* dtype,
                                 int32_t ndim, const int64_t* shape);

/* Read input `index` from a .npy file (little-endian, C order), with the same checks. */
BSM_API bsm_status bsm_set_input_npy(bsm_model* model, size_t index, const char* path);

/* Run the model once on the inputs set so far (every input must have been set). */
BSM_API bsm_status bsm_run(bsm_model* model);

/* Copy output `index` of the last run into `dst` (capacity `dst_bytes`, at least num_bytes). */
BSM_API bsm_status bsm_get_output(const bsm_model* model, size_t index, void* dst, size_t dst_bytes);

/* Point *data at output `index` of the last run (C-contiguous, num_bytes long). The pointer stays
 * valid until the next bsm_run, bsm_time or bsm_close on this model. */
BSM_API bsm_status bsm_output_data(const bsm_model* model, size_t index, const void** data);

/* Write output `index` of the last run to a .npy file. */
BSM_API bsm_status bsm_save_output_npy(const bsm_model* model, size_t index, const char* path);

/* Run `warmup` untimed runs, then `repeat` timed runs; ms[i] receives the wall time in milliseconds
 * of timed run i (`ms` holds `repeat` doubles). The outputs afterwards are those of the last run. */
BSM_API bsm_status bsm_time(bsm_model* model, int32_t warmup, int32_t repeat, double* ms);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* BITSMITH_RUNTIME_H_ */
