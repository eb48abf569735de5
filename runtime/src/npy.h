// Reading and writing NumPy .npy files (format versions 1.0-3.0; little-endian, C order), enough
// for the runtime's inputs and outputs. Fortran-ordered and big-endian files are refused.
#ifndef BITSMITH_RUNTIME_SRC_NPY_H_
#define BITSMITH_RUNTIME_SRC_NPY_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace bsm {

struct NpyArray {
  std::string dtype;            // manifest-style name, e.g. "float32"
  std::vector<int64_t> shape;
  std::vector<char> data;       // C-order element bytes
};

// Parse the bytes of a .npy file; `source` names it in error messages (BSM_ERROR_ARTIFACT for a
// malformed file, BSM_ERROR_UNSUPPORTED for a valid one this reader does not handle).
NpyArray parse_npy(std::string_view bytes, const std::string& source);
NpyArray read_npy(const std::string& path);

// The bytes of a version 1.0 .npy file holding `data` (exactly product(shape) * itemsize bytes).
std::string format_npy(const std::string& dtype, const std::vector<int64_t>& shape, const void* data,
                       size_t num_bytes);
void write_npy(const std::string& path, const std::string& dtype, const std::vector<int64_t>& shape,
               const void* data, size_t num_bytes);

// Whole-file helpers shared with the other readers (BSM_ERROR_IO on failure).
std::string read_file(const std::string& path);
void write_file(const std::string& path, std::string_view bytes);

}  // namespace bsm

#endif  // BITSMITH_RUNTIME_SRC_NPY_H_
