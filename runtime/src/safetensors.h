// Reading safetensors files: an 8-byte little-endian header length, a JSON header
// {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the raw data.
// The header is validated as a whole on open (known dtypes, sizes that match the shapes, offsets
// inside the file); tensors are then read one at a time straight into the caller's buffer.
#ifndef BITSMITH_RUNTIME_SRC_SAFETENSORS_H_
#define BITSMITH_RUNTIME_SRC_SAFETENSORS_H_

#include <cstdint>
#include <cstdio>
#include <memory>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "dtype.h"

namespace bsm {

struct SafetensorsEntry {
  const DType* dtype = nullptr;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // offsets relative to the start of the data section
  uint64_t end = 0;
  uint64_t num_bytes() const { return end - begin; }
};

// Validate a header (the JSON text) for a data section of `data_size` bytes.
std::map<std::string, SafetensorsEntry> parse_safetensors_header(std::string_view header, uint64_t data_size,
                                                                 const std::string& source);

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);

  const std::map<std::string, SafetensorsEntry>& entries() const { return entries_; }
  // The entry called `name`; throws BSM_ERROR_ARTIFACT naming the file when absent.
  const SafetensorsEntry& entry(const std::string& name) const;
  // Copy the entry's bytes into dst (entry.num_bytes() long).
  void read(const SafetensorsEntry& entry, void* dst);

 private:
  std::string path_;
  std::unique_ptr<FILE, int (*)(FILE*)> file_{nullptr, &std::fclose};
  uint64_t data_start_ = 0;
  std::map<std::string, SafetensorsEntry> entries_;
};

}  // namespace bsm

#endif  // BITSMITH_RUNTIME_SRC_SAFETENSORS_H_
