// Element types, named as the manifest names them (numpy names), with their DLPack codes and their
// spellings in .npy headers and safetensors headers. One table serves every reader and writer.
#ifndef BITSMITH_RUNTIME_SRC_DTYPE_H_
#define BITSMITH_RUNTIME_SRC_DTYPE_H_

#include <dlpack/dlpack.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace bsm {

struct DType {
  const char* name;         // "float32": the manifest's and numpy's name
  DLDataType dl;            // code, bits, lanes
  const char* npy;          // .npy descr ("<f4"), or nullptr when numpy has no standard code
  const char* safetensors;  // safetensors dtype ("F32")
  size_t bytes() const { return dl.bits / 8; }
};

// Lookups return nullptr when the type is unknown.
const DType* dtype_by_name(const std::string& name);
const DType* dtype_by_npy(const std::string& descr);  // accepts '<', '|' and '=' byte orders
const DType* dtype_by_safetensors(const std::string& code);
const DType* dtype_by_dl(DLDataType dl);

// The names of every known type, for "expected one of ..." messages.
std::string known_dtype_names();

// Product of the dimensions; throws bsm::Error on a negative dimension or on overflow.
uint64_t element_count(const std::vector<int64_t>& shape, const std::string& what);

// "float32[1,3,24,24]"
std::string describe(const std::string& dtype, const std::vector<int64_t>& shape);

}  // namespace bsm

#endif  // BITSMITH_RUNTIME_SRC_DTYPE_H_
