// Model: one verified artifact loaded into the TVM Relax VM, with its weights and I/O buffers.
//
// Construction verifies the artifact (artifact.h) before anything is loaded, then loads the
// library, starts the VM on the CPU, reads the weights and, if the library has one, runs
// main_transform_params once. TVM types stay behind the pointer to the implementation, so this
// header (and everything that includes it) builds without the TVM headers.
#ifndef BITSMITH_RUNTIME_SRC_MODEL_H_
#define BITSMITH_RUNTIME_SRC_MODEL_H_

#include <memory>
#include <string>
#include <vector>

#include "artifact.h"

namespace bsm {

class Model {
 public:
  explicit Model(const std::string& artifact_dir);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const Manifest& manifest() const { return manifest_; }

  // Copy a C-contiguous buffer described by dtype and shape into input `index` (checked against
  // the manifest). `origin`, if given, names where the data came from in error messages.
  void set_input(size_t index, const void* data, const std::string& dtype, const std::vector<int64_t>& shape,
                 const std::string& origin = "");
  void set_input_npy(size_t index, const std::string& path);

  void run();
  // Output `index` of the last run: manifest().outputs[index].num_bytes bytes, C order.
  const void* output_data(size_t index) const;
  void save_output_npy(size_t index, const std::string& path) const;
  // `warmup` untimed runs then `repeat` timed ones; milliseconds of each into ms[0..repeat).
  void time(int warmup, int repeat, double* ms);

 private:
  struct Vm;  // the TVM side
  const TensorSpec& input_spec(size_t index) const;
  const TensorSpec& output_spec(size_t index) const;

  Manifest manifest_;
  std::unique_ptr<Vm> vm_;
};

}  // namespace bsm

#endif  // BITSMITH_RUNTIME_SRC_MODEL_H_
