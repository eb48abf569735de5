// The C boundary. Every entry point runs its body inside guard(), which turns any C++ exception
// (bsm::Error, TVM's errors, std::bad_alloc, anything else) into a status code plus a thread-local
// message, so nothing ever unwinds into C callers.
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "bitsmith/runtime.h"
#include "error.h"
#include "model.h"

#ifndef BITSMITH_RUNTIME_VERSION
#define BITSMITH_RUNTIME_VERSION "0.0.0"
#endif

struct bsm_model {
  explicit bsm_model(const std::string& dir) : model(dir) {}
  bsm::Model model;
};

namespace {

thread_local std::string g_last_error;

bsm_status set_error(bsm_status status, const std::string& message) {
  try {
    g_last_error = message;
  } catch (...) {  // out of memory while storing the message: keep the status at least
    g_last_error.clear();
  }
  return status;
}

template <typename Body>
bsm_status guard(Body&& body) noexcept {
  try {
    body();
    return BSM_OK;
  } catch (const bsm::Error& e) {
    return set_error(e.status(), e.what());
  } catch (const std::bad_alloc&) {
    return set_error(BSM_ERROR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {  // TVM errors that escaped a tvm_call, std:: failures
    return set_error(BSM_ERROR_RUNTIME, e.what());
  } catch (...) {
    return set_error(BSM_ERROR_INTERNAL, "unknown C++ exception");
  }
}

void require(const void* pointer, const char* what) {
  if (pointer == nullptr) bsm::fail(BSM_ERROR_INVALID_ARGUMENT, std::string(what) + " is NULL");
}

void fill_info(const bsm::TensorSpec& spec, bsm_tensor_info* info) {
  info->name = spec.name.c_str();
  info->dtype = spec.dtype->name;
  info->ndim = int32_t(spec.shape.size());
  info->shape = spec.shape.data();
  info->num_bytes = spec.num_bytes;
}

const bsm::TensorSpec& spec_at(const std::vector<bsm::TensorSpec>& specs, size_t index, const char* kind) {
  if (index >= specs.size()) {
    bsm::fail(BSM_ERROR_INVALID_ARGUMENT, std::string(kind) + " index " + std::to_string(index) +
                                              " is out of range: the model has " + std::to_string(specs.size()) + " " +
                                              kind + "s");
  }
  return specs[index];
}

size_t index_of(const std::vector<bsm::TensorSpec>& specs, const char* name, const char* kind) {
  require(name, "name");
  std::string known;
  for (size_t i = 0; i < specs.size(); ++i) {
    if (specs[i].name == name) return i;
    known += (i ? ", '" : "'") + specs[i].name + "'";
  }
  bsm::fail(BSM_ERROR_INVALID_ARGUMENT, std::string("the model has no ") + kind + " '" + name + "' (its " + kind +
                                            "s: " + known + ")");
}

}  // namespace

extern "C" {

const char* bsm_version(void) { return BITSMITH_RUNTIME_VERSION; }

const char* bsm_last_error(void) { return g_last_error.c_str(); }

const char* bsm_status_name(bsm_status status) {
  switch (status) {
    case BSM_OK: return "BSM_OK";
    case BSM_ERROR_INVALID_ARGUMENT: return "BSM_ERROR_INVALID_ARGUMENT";
    case BSM_ERROR_IO: return "BSM_ERROR_IO";
    case BSM_ERROR_ARTIFACT: return "BSM_ERROR_ARTIFACT";
    case BSM_ERROR_VERIFICATION: return "BSM_ERROR_VERIFICATION";
    case BSM_ERROR_MISMATCH: return "BSM_ERROR_MISMATCH";
    case BSM_ERROR_STATE: return "BSM_ERROR_STATE";
    case BSM_ERROR_UNSUPPORTED: return "BSM_ERROR_UNSUPPORTED";
    case BSM_ERROR_RUNTIME: return "BSM_ERROR_RUNTIME";
    case BSM_ERROR_OUT_OF_MEMORY: return "BSM_ERROR_OUT_OF_MEMORY";
    case BSM_ERROR_INTERNAL: return "BSM_ERROR_INTERNAL";
  }
  return "BSM_ERROR_UNKNOWN";
}

bsm_status bsm_open(const char* artifact_dir, bsm_model** out) {
  if (out != nullptr) *out = nullptr;
  return guard([&] {
    require(out, "out");
    require(artifact_dir, "artifact_dir");
    *out = new bsm_model(artifact_dir);
  });
}

void bsm_close(bsm_model* model) { delete model; }  // ~Model does not throw

size_t bsm_input_count(const bsm_model* model) { return model ? model->model.manifest().inputs.size() : 0; }

size_t bsm_output_count(const bsm_model* model) { return model ? model->model.manifest().outputs.size() : 0; }

bsm_status bsm_input_info(const bsm_model* model, size_t index, bsm_tensor_info* info) {
  return guard([&] {
    require(model, "model");
    require(info, "info");
    fill_info(spec_at(model->model.manifest().inputs, index, "input"), info);
  });
}

bsm_status bsm_output_info(const bsm_model* model, size_t index, bsm_tensor_info* info) {
  return guard([&] {
    require(model, "model");
    require(info, "info");
    fill_info(spec_at(model->model.manifest().outputs, index, "output"), info);
  });
}

bsm_status bsm_find_input(const bsm_model* model, const char* name, size_t* index) {
  return guard([&] {
    require(model, "model");
    require(index, "index");
    *index = index_of(model->model.manifest().inputs, name, "input");
  });
}

bsm_status bsm_find_output(const bsm_model* model, const char* name, size_t* index) {
  return guard([&] {
    require(model, "model");
    require(index, "index");
    *index = index_of(model->model.manifest().outputs, name, "output");
  });
}

bsm_status bsm_set_input(bsm_model* model, size_t index, const void* data, const char* dtype, int32_t ndim,
                         const int64_t* shape) {
  return guard([&] {
    require(model, "model");
    require(dtype, "dtype");
    if (ndim < 0) bsm::fail(BSM_ERROR_INVALID_ARGUMENT, "ndim is negative");
    if (ndim > 0) require(shape, "shape");
    model->model.set_input(index, data, dtype, std::vector<int64_t>(shape, shape + ndim));
  });
}

bsm_status bsm_set_input_npy(bsm_model* model, size_t index, const char* path) {
  return guard([&] {
    require(model, "model");
    require(path, "path");
    model->model.set_input_npy(index, path);
  });
}

bsm_status bsm_run(bsm_model* model) {
  return guard([&] {
    require(model, "model");
    model->model.run();
  });
}

bsm_status bsm_get_output(const bsm_model* model, size_t index, void* dst, size_t dst_bytes) {
  return guard([&] {
    require(model, "model");
    const bsm::TensorSpec& spec = spec_at(model->model.manifest().outputs, index, "output");
    const void* data = model->model.output_data(index);
    if (dst_bytes < spec.num_bytes) {
      bsm::fail(BSM_ERROR_MISMATCH, "output '" + spec.name + "' (" + spec.describe() + ") needs " +
                                        std::to_string(spec.num_bytes) + " bytes, the buffer holds " +
                                        std::to_string(dst_bytes));
    }
    if (spec.num_bytes > 0) {
      require(dst, "dst");
      std::memcpy(dst, data, spec.num_bytes);
    }
  });
}

bsm_status bsm_output_data(const bsm_model* model, size_t index, const void** data) {
  return guard([&] {
    require(model, "model");
    require(data, "data");
    *data = model->model.output_data(index);
  });
}

bsm_status bsm_save_output_npy(const bsm_model* model, size_t index, const char* path) {
  return guard([&] {
    require(model, "model");
    require(path, "path");
    model->model.save_output_npy(index, path);
  });
}

bsm_status bsm_time(bsm_model* model, int32_t warmup, int32_t repeat, double* ms) {
  return guard([&] {
    require(model, "model");
    model->model.time(warmup, repeat, ms);
  });
}

}  // extern "C"
