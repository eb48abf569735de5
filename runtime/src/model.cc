#include "model.h"

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <utility>

#include "error.h"
#include "npy.h"
#include "safetensors.h"

namespace ffi = tvm::ffi;

namespace bsm {
namespace {

constexpr const char* kMain = "main";
constexpr const char* kTransformParams = "main_transform_params";
constexpr int kPooledAllocator = 2;  // relax.VirtualMachine.POOLED_ALLOCATOR
constexpr size_t kAlignment = 64;    // what TVM's own CPU allocator guarantees to kernels

// Host memory for tensors the runtime creates (inputs, weights), aligned like TVM's.
struct AlignedCpuAlloc {
  void AllocData(DLTensor* tensor) {
    size_t bytes = (ffi::GetDataSize(*tensor) + kAlignment - 1) / kAlignment * kAlignment;
    tensor->data = std::aligned_alloc(kAlignment, bytes == 0 ? kAlignment : bytes);
    if (tensor->data == nullptr) throw std::bad_alloc();
  }
  void FreeData(DLTensor* tensor) { std::free(tensor->data); }
};

// The device an artifact's manifest names. Only the CPU is wired up; another device (a GPU, or
// an NPU driver behind the Relax VM) would add its DLDevice here and its allocator in Vm.
DLDevice device_for(const Manifest& m) {
  if (m.device == "cpu" || m.device == "llvm") return DLDevice{kDLCPU, 0};
  fail(BSM_ERROR_UNSUPPORTED, "artifact " + m.root + " targets device '" + m.device +
                                  "', but this runtime build runs on the CPU only");
}

ffi::Tensor empty_tensor(const TensorSpec& spec, DLDevice device) {
  return ffi::Tensor::FromNDAlloc(AlignedCpuAlloc(), ffi::Shape(spec.shape), spec.dtype->dl, device);
}

// Run `body`, turning a TVM error into a bsm::Error that says what was being done.
template <typename Body>
auto tvm_call(const std::string& doing, Body&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const ffi::Error& e) {
    fail(BSM_ERROR_RUNTIME, doing + ": " + e.kind() + ": " + e.message());
  }
}

void flatten(const ffi::Any& value, std::vector<ffi::Tensor>* out) {
  if (auto tensor = value.as<ffi::Tensor>()) {
    out->push_back(*tensor);
  } else if (auto items = value.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *items) flatten(item, out);
  } else {
    fail(BSM_ERROR_RUNTIME, "the model returned a " + value.GetTypeKey() + ", expected tensors");
  }
}

std::vector<int64_t> shape_of(const ffi::Tensor& t) {
  ffi::ShapeView shape = t.shape();
  return std::vector<int64_t>(shape.begin(), shape.end());
}

bool matches(const TensorSpec& spec, const ffi::Tensor& t) {
  DLDataType dt = t.dtype();
  ffi::ShapeView shape = t.shape();
  return dt.code == spec.dtype->dl.code && dt.bits == spec.dtype->dl.bits && dt.lanes == spec.dtype->dl.lanes &&
         std::equal(shape.begin(), shape.end(), spec.shape.begin(), spec.shape.end());
}

// An output must be what the manifest promises, in host memory, C-contiguous. Runs after every
// run, so the happy path only compares numbers; messages are built on failure alone.
void check_output(const TensorSpec& spec, const ffi::Tensor& t) {
  if (!matches(spec, t)) {
    const DType* got = dtype_by_dl(t.dtype());
    fail(BSM_ERROR_RUNTIME, "output '" + spec.name + "' came back as " + describe(got ? got->name : "unknown", shape_of(t)) +
                                ", the manifest says " + spec.describe());
  }
  if (!t.IsContiguous() || t.device().device_type != kDLCPU) {
    fail(BSM_ERROR_UNSUPPORTED, "output '" + spec.name + "' is not a contiguous CPU tensor");
  }
}

}  // namespace

struct Model::Vm {
  DLDevice device{kDLCPU, 0};
  std::optional<ffi::Module> library;  // the loaded model.so; outlives the VM, whose code it holds
  std::optional<ffi::Module> machine;  // the Relax VM
  std::optional<ffi::Function> main;
  std::vector<ffi::Tensor> inputs;
  std::vector<bool> input_set;
  std::vector<ffi::Tensor> params;  // as main receives them (after main_transform_params, if any)
  std::vector<ffi::AnyView> args;   // inputs then params: the views stay valid as both vectors are fixed
  std::vector<ffi::Tensor> outputs;

  // What relax.VirtualMachine does in Python: load, vm_load_executable, vm_initialization.
  void start(const std::string& library_path) {
    tvm_call("cannot load compiled library " + library_path, [&] {
      library = ffi::Module::LoadFromFile(library_path);
      auto load = (*library)->GetFunction("vm_load_executable");
      if (!load) fail(BSM_ERROR_ARTIFACT, library_path + " is not a Relax VM executable (no vm_load_executable)");
      machine = (*load)().cast<ffi::Module>();
      (*machine)->GetFunction("vm_initialization").value()(int(device.device_type), device.device_id, kPooledAllocator);
      auto found = (*machine)->GetFunction(kMain);
      if (!found) fail(BSM_ERROR_ARTIFACT, library_path + " has no function '" + kMain + "'");
      main = *found;
    });
  }

  // The weights in `names` order, each in its own aligned tensor.
  std::vector<ffi::Tensor> read_weights(const std::string& path, const std::vector<std::string>& names) {
    SafetensorsFile weights(path);
    std::vector<ffi::Tensor> tensors;
    for (const std::string& name : names) {
      const SafetensorsEntry& entry = weights.entry(name);
      TensorSpec spec{name, entry.dtype, entry.shape, size_t(entry.num_bytes())};
      tensors.push_back(empty_tensor(spec, device));
      weights.read(entry, tensors.back().data_ptr());
    }
    return tensors;
  }

  // main's parameters: the weights, or what main_transform_params (run once, here) makes of them.
  void set_params(std::vector<ffi::Tensor> weights, const std::string& weights_path) {
    auto transform = (*machine)->GetFunction(kTransformParams);
    if (!transform) {
      params = std::move(weights);
      return;
    }
    tvm_call("main_transform_params rejected the weights of " + weights_path, [&] {
      flatten((*transform)(ffi::Array<ffi::Tensor>(weights.begin(), weights.end())), &params);
    });
  }

  void check_arity(const Manifest& m) {
    int64_t arity = tvm_call("cannot inspect main", [&] {
      return (*machine)->GetFunction("get_function_arity").value()(kMain).cast<int64_t>();
    });
    if (arity != int64_t(m.inputs.size() + params.size())) {
      fail(BSM_ERROR_ARTIFACT, m.path(m.library) + ": main takes " + std::to_string(arity) +
                                   " arguments, but the manifest lists " + std::to_string(m.inputs.size()) +
                                   " inputs and " + std::to_string(params.size()) + " parameters");
    }
  }

  void allocate_inputs(const std::vector<TensorSpec>& specs) {
    for (const TensorSpec& spec : specs) inputs.push_back(empty_tensor(spec, device));
    input_set.assign(specs.size(), false);
    for (const ffi::Tensor& t : inputs) args.emplace_back(t);
    for (const ffi::Tensor& t : params) args.emplace_back(t);
  }
};

Model::Model(const std::string& artifact_dir)
    : manifest_(read_verified_manifest(artifact_dir)), vm_(std::make_unique<Vm>()) {
  // Only now, with every file verified, is any code or data of the artifact loaded.
  vm_->device = device_for(manifest_);
  vm_->start(manifest_.path(manifest_.library));
  const std::string weights = manifest_.path(manifest_.weights);
  vm_->set_params(vm_->read_weights(weights, manifest_.params), weights);
  vm_->check_arity(manifest_);
  vm_->allocate_inputs(manifest_.inputs);
}

Model::~Model() = default;

const TensorSpec& Model::input_spec(size_t index) const {
  if (index >= manifest_.inputs.size()) {
    fail(BSM_ERROR_INVALID_ARGUMENT, "input index " + std::to_string(index) + " is out of range: the model has " +
                                         std::to_string(manifest_.inputs.size()) + " inputs");
  }
  return manifest_.inputs[index];
}

const TensorSpec& Model::output_spec(size_t index) const {
  if (index >= manifest_.outputs.size()) {
    fail(BSM_ERROR_INVALID_ARGUMENT, "output index " + std::to_string(index) + " is out of range: the model has " +
                                         std::to_string(manifest_.outputs.size()) + " outputs");
  }
  return manifest_.outputs[index];
}

void Model::set_input(size_t index, const void* data, const std::string& dtype, const std::vector<int64_t>& shape,
                      const std::string& origin) {
  const TensorSpec& spec = input_spec(index);
  if (dtype != spec.dtype->name || shape != spec.shape) {
    fail(BSM_ERROR_MISMATCH, "input '" + spec.name + "' must be " + spec.describe() + ", got " + describe(dtype, shape) +
                                 (origin.empty() ? "" : " (from " + origin + ")"));
  }
  if (data == nullptr && spec.num_bytes > 0) fail(BSM_ERROR_INVALID_ARGUMENT, "input '" + spec.name + "': data is NULL");
  if (spec.num_bytes > 0) std::memcpy(vm_->inputs[index].data_ptr(), data, spec.num_bytes);
  vm_->input_set[index] = true;
}

void Model::set_input_npy(size_t index, const std::string& path) {
  input_spec(index);  // a bad index is reported before the file is read
  NpyArray array = read_npy(path);
  set_input(index, array.data.data(), array.dtype, array.shape, path);
}

void Model::run() {
  for (size_t i = 0; i < vm_->inputs.size(); ++i) {
    if (!vm_->input_set[i]) fail(BSM_ERROR_STATE, "input '" + manifest_.inputs[i].name + "' was never set");
  }
  vm_->outputs.clear();  // the last run's buffers may be reused by the VM's pool
  ffi::Any result;
  try {  // not tvm_call: this is the timed path, so the message is built only on failure
    vm_->main->CallPacked(vm_->args.data(), int32_t(vm_->args.size()), &result);
  } catch (const ffi::Error& e) {
    fail(BSM_ERROR_RUNTIME, "running " + manifest_.path(manifest_.library) + " failed: " + e.kind() + ": " + e.message());
  }
  std::vector<ffi::Tensor> outputs;
  flatten(result, &outputs);
  if (outputs.size() != manifest_.outputs.size()) {
    fail(BSM_ERROR_RUNTIME, "the model returned " + std::to_string(outputs.size()) + " outputs, the manifest lists " +
                                std::to_string(manifest_.outputs.size()));
  }
  for (size_t i = 0; i < outputs.size(); ++i) check_output(manifest_.outputs[i], outputs[i]);
  vm_->outputs = std::move(outputs);
}

const void* Model::output_data(size_t index) const {
  const TensorSpec& spec = output_spec(index);
  if (vm_->outputs.empty()) fail(BSM_ERROR_STATE, "output '" + spec.name + "' is not available: run the model first");
  const ffi::Tensor& t = vm_->outputs[index];
  return static_cast<const char*>(t.data_ptr()) + t.byte_offset();
}

void Model::save_output_npy(size_t index, const std::string& path) const {
  const TensorSpec& spec = output_spec(index);
  write_npy(path, spec.dtype->name, spec.shape, output_data(index), spec.num_bytes);
}

void Model::time(int warmup, int repeat, double* ms) {
  if (warmup < 0 || repeat < 1) fail(BSM_ERROR_INVALID_ARGUMENT, "time: warmup must be >= 0 and repeat >= 1");
  if (ms == nullptr) fail(BSM_ERROR_INVALID_ARGUMENT, "time: the ms array is NULL");
  for (int i = 0; i < warmup; ++i) run();
  for (int i = 0; i < repeat; ++i) {
    auto start = std::chrono::steady_clock::now();
    run();
    ms[i] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  }
}

}  // namespace bsm
